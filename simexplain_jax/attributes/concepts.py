"""Concept relevance: which attributes the similarity model's embedding uses for a match.

The paper's selector scores *where* an attribute is (its activation map against the saliency
map). Every attribute of the object that makes two images match sits in the same place, so
location cannot tell "red" from "square". What the similarity model *encodes* can: this module
measures how much of ``s(q, r)`` each attribute's direction in the embedding accounts for.

1. Directions, one per attribute, in the L2-normalised embedding space, fitted on training or
   validation images (never test). Attributes without both positive and negative examples (or
   without edits) get none.

   - ``fit_concepts(embeddings, labels, split=..., method="ridge")``: a linear probe, ridge
     regression of the centred labels on the centred embeddings,
     ``W = (X^T X + l n I)^{-1} X^T Y``, ``u_a = W_a / |W_a|``. Unlike a difference of means, it
     separates attributes that occur together, so a filler that merely co-occurs with an encoded
     attribute gets its own, weak, direction.
   - ``method="fastcav"``: the mean of the positives minus the mean of all images, normalised
     (FastCAV); it equals the normalised cross-covariance ``c_a = X_c^T y_a``.
   - ``method="pattern"``: the other regression, of the centred embeddings on all the centred
     labels at once, ``B = (Y^T Y + l n I)^{-1} Y^T X`` (``[A, D]``, the labels standardised for
     the penalty and the result rescaled), ``u_a = B_a / |B_a|``:
     ``B_a`` is how the embedding changes with attribute a *with the other attributes held
     fixed* (the activation pattern of Haufe et al. rather than a decoding filter). A probe of one
     label on the embedding (``ridge``, ``fastcav``) cannot tell an encoded attribute from one
     that is merely correlated with it in the labels: both are decoded from the same axis, so
     both get that axis. The pattern of the unencoded one is near zero, but what is left of it
     (the penalty's leak) may still point along the encoded axis: score pattern fits with
     ``"shift"``, which keeps ``B_a``'s magnitude, rather than with a unit-direction scorer.
   - ``method="mlp"``: a non-linear probe, a one-hidden-layer network of all the labels on the
     embedding (``simexplain_jax.attributes.probe_network``), for attributes the embedding does
     not encode along one direction. Its directions are the unit mean gradient of each logit
     over the attribute's positive images; the ``"gradient"`` scorer uses the gradient at each
     embedding instead.
   - ``fit_edit_concepts(original, edited, attributes, ...)``: directions fitted to what the model
     is *sensitive* to rather than to what co-occurs in the labels: the mean effect on the
     embedding of removing attribute a, ``d_a = mean (e(x) - e(x without a))``, from pairs of
     images that differ in that one attribute (counterfactual re-renders of training scenes on
     the shapes benchmark, or pairs of images that differ in one labelled attribute).

   The label fits also keep what concept erasure needs: the embeddings' mean ``mu``, the unit
   cross-covariances ``c_a`` and the unit probe directions ``w_a``.
2. ``concept_relevance(concepts, query_embeddings, reference_embeddings, scorer=...)``, batched
   over pairs, ``[P, A]``. With ``q``, ``r`` the normalised embeddings, ``s = q . r`` (cosine),
   ``p_q = q . u_a`` and ``p_r = r . u_a``:

   - ``"product"`` (default): ``p_q p_r``, the part of ``q . r`` along ``u_a`` (an exact
     decomposition of ``s`` if the directions were orthonormal).
   - ``"removal"``: the similarity lost when the concept's component is removed from both
     embeddings, ``s - cos(P_a q, P_a r)`` with ``P_a = I - u_a u_a^T``; in closed form
     ``cos(P_a q, P_a r) = (s - p_q p_r) / sqrt((1 - p_q^2) (1 - p_r^2))``.
   - ``"leace"``: the same loss under LEACE, the least-squares-optimal linear erasure of the
     attribute's labels (rank one: ``E_a x = x - c_a (w_a . (x - mu)) / (w_a . c_a)``, with the
     probe's ridge penalty), ``s - cos(E_a q, E_a r)``. Needs a label fit.
   - ``"shift"``: the similarity lost when the query moves by the attribute's effect on the
     embedding, ``s - cos(q - d_a, r)``, a prediction of the counterfactual oracle. Needs a fit
     that keeps shifts (``pattern``: ``d_a = B_a``; edits: the mean edit effect).
   - ``"gradient"``: ``"removal"`` with a direction for each embedding, the unit gradient of the
     ``mlp`` probe's logit at that embedding, ``u_a(x) = g_a(x) / |g_a(x)|``:
     ``s - cos(q - (q . u_a(q)) u_a(q), r - (r . u_a(r)) u_a(r))``. Needs the ``mlp`` fit.

   ``cell_concept_relevance`` resolves ``"product"`` in space for pooled models: each pair of
   cells' share of the similarity (the exact pooled decomposition) projected onto ``u_a``,
   summed over the most corresponding cell pairs only, so an attribute earns credit only where
   the two images match; with every cell pair kept it equals ``"product"``.

   The function defaults (``method="ridge"``, ``scorer="product"``, ``ridge = 0.01``) are the
   first selector's. On validation pairs of the 64 px shapes benchmark ``pattern`` directions did
   better, and ``train_attributes`` / ``explain`` use them with ``removal``
   (``docs/attributes_shapes64.md`` has the numbers and the commands).
3. ``query_removal_drop``: a faithfulness check that needs no re-rendering, so it runs on any
   dataset: the similarity drop when ``u_a``'s component is removed from the query's embedding
   alone, ``s - cos(P_a q, r) = s - (s - p_q p_r) / sqrt(1 - p_q^2)``.

References:
  Haufe et al., "On the interpretation of weight vectors of linear models in multivariate
  neuroimaging", NeuroImage 2014.
  Belrose et al., "LEACE: Perfect linear concept erasure in closed form", NeurIPS 2023.
  Schmalwasser et al., "FastCAV: Efficient Computation of Concept Activation Vectors for
  Explaining Deep Neural Networks", ICML 2025.

Everything works for any ``embed_fn`` (fit the concepts with the embeddings of the space the pair
is compared in: a type-aware model's condition space, say) and any dataset with attribute labels.
No per-pair training: a linear fit is one ``[D, D]`` solve and the ``mlp`` fit a few hundred full-batch
steps; relevance is a few ``[P, D] @ [D, A]`` products (``[P, A, D]`` for ``"gradient"``).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

import numpy as np

from simexplain_jax.attributes.calibration import CALIBRATION_SPLITS
from simexplain_jax.attributes.probe_network import check_network, fit_network, logits_and_gradients
from simexplain_jax.io import write_json_atomic

SCORERS = ("product", "removal", "leace", "shift", "gradient")
METHODS = ("ridge", "fastcav", "pattern", "mlp")  # the fits from labels; fit_edit_concepts fits from edits
_TINY = 1e-12
_CHUNK = 256  # rows per [rows, A, D] block of network gradients
_ARRAYS = ("mean", "cross", "probe", "shifts")
# the mlp probe: hidden width, full-batch Adam steps and step size, L2 penalty on the weights
NETWORK_HIDDEN, NETWORK_STEPS, NETWORK_LEARNING_RATE, NETWORK_WEIGHT_DECAY = 64, 500, 1e-2, 1e-4


class Concepts(NamedTuple):
    directions: np.ndarray  # [A, D] unit vectors (zero where valid is False)
    valid: np.ndarray  # [A] bool: the attribute had positive and negative examples (or edits)
    split: str  # the split the probe was fitted on ("train" or "validation")
    mean: Optional[np.ndarray] = None  # [D] label fits: the normalised embeddings' mean (LEACE)
    cross: Optional[np.ndarray] = None  # [A, D] label fits: unit cross-covariances c_a (LEACE)
    probe: Optional[np.ndarray] = None  # [A, D] label fits: unit ridge-probe directions w_a (LEACE)
    shifts: Optional[np.ndarray] = None  # [A, D] pattern and edit fits: the effect of a on e(x) ("shift")
    network: Optional[dict] = None  # mlp fits: the probe network's {"w1", "b1", "w2", "b2"} ("gradient")


def save_concepts(path: str | os.PathLike, concepts: Concepts, *, model: str, ridge: float) -> None:
    """Writes ``concepts`` to ``path`` (JSON, atomically) with the similarity model they were fitted for.

    Args:
      path: the file to write (``train_attributes`` writes ``concepts.json`` beside the predictor).
      concepts: what ``fit_concepts`` or ``fit_edit_concepts`` returned.
      model: the similarity model's fingerprint (``saliency.cache.fingerprint`` of its ``embed_fn``).
      ridge: the probe's ridge penalty, recorded.
    """
    record = {"model": model, "split": concepts.split, "ridge": float(ridge),
              "valid": np.asarray(concepts.valid, bool).tolist(),
              "directions": np.asarray(concepts.directions, np.float32).tolist()}
    for name in _ARRAYS:
        if getattr(concepts, name) is not None:
            record[name] = np.asarray(getattr(concepts, name), np.float32).tolist()
    if concepts.network is not None:
        record["network"] = {k: np.asarray(v, np.float32).tolist() for k, v in concepts.network.items()}
    write_json_atomic(path, record)


def load_concepts(path: str | os.PathLike, *, model: str, num_attributes: Optional[int] = None) -> Concepts:
    """Reads what ``save_concepts`` wrote, for the similarity model ``model``.

    Args:
      path: the concepts file.
      model: the fingerprint of the similarity model that will use them.
      num_attributes: the number of attributes expected, or None.

    Returns:
      The ``Concepts``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a malformed file, another number of attributes, or directions fitted for another
        similarity model (both fingerprints named).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"concepts file {path} not found")
    try:
        with open(path) as f:
            data = json.load(f)
        directions = np.asarray(data["directions"], np.float32)
        valid = np.asarray(data["valid"], bool)
        saved, split = str(data["model"]), data["split"]
        extra = {name: np.asarray(data[name], np.float32) for name in _ARRAYS if name in data}
        network = data.get("network")
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"concepts file {path} is not a concepts JSON: {type(err).__name__}: {err}") from None
    if directions.ndim != 2 or valid.shape != directions.shape[:1] or not np.isfinite(directions).all():
        raise ValueError(f"concepts file {path}: directions must be a finite [A, D] matrix with one valid flag each")
    for name, value in extra.items():
        expected = directions.shape[1:] if name == "mean" else directions.shape
        if value.shape != expected or not np.isfinite(value).all():
            raise ValueError(f"concepts file {path}: {name} must be a finite array of shape {expected}")
    if network is not None:
        network = {k: v.astype(np.float32) for k, v in
                   check_network(network, directions.shape[1], len(valid), f"concepts file {path}: network").items()}
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"concepts file {path}: split must be one of {CALIBRATION_SPLITS}, got {split!r}")
    if num_attributes is not None and len(valid) != num_attributes:
        raise ValueError(f"concepts file {path} holds {len(valid)} attributes, expected {num_attributes}")
    if saved != model:
        raise ValueError(f"concepts file {path} was fitted for the similarity model with fingerprint {saved}, "
                         f"not for this one ({model}); refit them for this model (train_attributes)")
    return Concepts(directions, valid, split, **extra, network=network)


def _float64(array) -> np.ndarray:
    """``array`` as a C-ordered float64 array: BLAS takes another kernel, and may round differently, for
    a transposed layout, and a score must depend on the values only (a fit's directions come out
    transposed; the same directions read back from a file do not)."""
    return np.ascontiguousarray(array, np.float64)


def _normalise(embeddings: np.ndarray, name: str) -> np.ndarray:
    embeddings = _float64(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] < 1:
        raise ValueError(f"{name} must be [N, D], got shape {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.where(norms > _TINY, embeddings / np.maximum(norms, _TINY), 0.0)


def _unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.linalg.norm(matrix, axis=1)
    return matrix / np.maximum(norms, _TINY)[:, None], norms > _TINY


def _masked(valid: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows [A, ...]`` as float32, zero where ``valid`` is False."""
    return np.where(valid[:, None], rows, 0.0).astype(np.float32)


def _check_split(split: str) -> None:
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"concepts are fitted on {CALIBRATION_SPLITS} data only, not {split!r}")


def fit_concepts(embeddings, labels, *, split: str, ridge: float = 1e-2, method: str = "ridge",
                 seed: int = 0) -> Concepts:
    """Concept directions from attribute labels (see the module docstring).

    Args:
      embeddings: ``[N, D]`` embeddings of training or validation images, any scale (they are
        L2-normalised here, as cosine similarity sees them).
      labels: ``[N, A]`` multi-hot attribute labels of the same images.
      split: the split they come from (``"train"`` or ``"validation"``; never test).
      ridge: the probe's penalty per example (``l`` in the module docstring), also used by the
        ``"leace"`` scorer's erasure.
      method: ``"ridge"`` (the probe's directions), ``"fastcav"`` (positive mean minus mean),
        ``"pattern"`` (the embedding regressed on all labels) or ``"mlp"`` (a probe network).
      seed: the ``mlp`` network's initialisation (the other fits are closed-form).

    Returns:
      ``Concepts`` with ``mean``, ``cross`` and ``probe`` filled in, ``shifts`` for ``pattern`` and
      ``network`` for ``mlp``.
    """
    _check_split(split)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = _normalise(embeddings, "embeddings")
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [N, A] with N = {x.shape[0]}, got shape {y.shape}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    y = y.astype(np.float64)
    positives = y.sum(0)
    valid = (positives > 0) & (positives < len(y))
    mean = x.mean(0)
    xc, yc = x - mean, y - y.mean(0)
    cross, cross_ok = _unit_rows((xc.T @ yc).T)  # [A, D]
    weights = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ yc)  # [D, A]
    probe, probe_ok = _unit_rows(weights.T)
    valid &= cross_ok & probe_ok
    directions, shifts = (probe if method == "ridge" else cross), None
    if method == "pattern":
        # on standardised labels, so the penalty is relative to each label's variance
        std = np.where(valid, y.std(0), 1.0)
        ys = np.where(valid, yc / std, 0.0)
        shifts = np.linalg.solve(ys.T @ ys + ridge * len(x) * np.eye(y.shape[1]), ys.T @ xc) / std[:, None]  # [A, D]
        directions, pattern_ok = _unit_rows(shifts)
        valid &= pattern_ok
    network = None
    if method == "mlp":
        network = {k: v.astype(np.float32) for k, v in fit_network(
            x, y, valid, hidden=NETWORK_HIDDEN, steps=NETWORK_STEPS, learning_rate=NETWORK_LEARNING_RATE,
            weight_decay=NETWORK_WEIGHT_DECAY, seed=seed).items()}
        summed = np.zeros((y.shape[1], x.shape[1]))
        for start in range(0, len(x), _CHUNK):  # [chunk, A, D] at a time
            summed += np.einsum("na,nad->ad", y[start:start + _CHUNK],
                                _unit_gradients(network, x[start:start + _CHUNK]))
        directions, mlp_ok = _unit_rows(summed / np.maximum(positives, 1)[:, None])
        valid &= mlp_ok
    return Concepts(_masked(valid, directions), valid, split, mean.astype(np.float32), _masked(valid, cross),
                    _masked(valid, probe), None if shifts is None else _masked(valid, shifts), network)


def fit_edit_concepts(original, edited, attributes, num_attributes: int, *, split: str) -> Concepts:
    """Concept directions from what the model is sensitive to: the mean effect on the
    (normalised) embedding of removing each attribute.

    Args:
      original: ``[E, D]`` embeddings of images that carry the attribute of their row.
      edited: ``[E, D]`` embeddings of the same images without it (a counterfactual re-render,
        or an image that differs in that one labelled attribute).
      attributes: ``[E]`` the index of the attribute each row removes.
      num_attributes: ``A``.
      split: where the images come from (``"train"`` or ``"validation"``; never test).

    Returns:
      ``Concepts`` whose directions are the normalised mean effects and whose ``shifts`` are the
      mean effects ``d_a = mean (e(x) - e(x without a))`` themselves; attributes without edits
      are not valid.
    """
    _check_split(split)
    x, x_edit = _normalise(original, "original embeddings"), _normalise(edited, "edited embeddings")
    if x.shape != x_edit.shape:
        raise ValueError(f"original {x.shape} and edited {x_edit.shape} embeddings must match (one row per edit)")
    attributes = np.asarray(attributes)
    if attributes.shape != (len(x),) or not np.issubdtype(attributes.dtype, np.integer):
        raise ValueError(f"attributes must be [E] integer indices with E = {len(x)}, got {attributes.shape} "
                         f"{attributes.dtype}")
    if len(attributes) and (attributes.min() < 0 or attributes.max() >= num_attributes):
        raise ValueError(f"attributes must index 0..{num_attributes - 1}, got {attributes.min()}..{attributes.max()}")
    counts = np.bincount(attributes, minlength=num_attributes)
    sums = np.zeros((num_attributes, x.shape[1]))
    np.add.at(sums, attributes, x - x_edit)
    shifts = sums / np.maximum(counts, 1)[:, None]
    directions, valid = _unit_rows(shifts)
    valid &= counts > 0
    return Concepts(_masked(valid, directions), valid, split, shifts=_masked(valid, shifts))


def _projections(concepts: Concepts, query_embeddings, reference_embeddings):
    q = _normalise(query_embeddings, "query_embeddings")
    r = _normalise(reference_embeddings, "reference_embeddings")
    if q.shape != r.shape:
        raise ValueError(f"query_embeddings {q.shape} and reference_embeddings {r.shape} must match (one row per pair)")
    if q.shape[1] != concepts.directions.shape[1]:
        raise ValueError(f"embeddings have D={q.shape[1]} but the concepts were fitted with "
                         f"D={concepts.directions.shape[1]}")
    u = _float64(concepts.directions)
    s = np.sum(q * r, axis=1, keepdims=True)  # [P, 1]
    return q, r, s, q @ u.T, r @ u.T  # [P, D], [P, D], [P, 1], [P, A], [P, A]


def _unit_gradients(network: dict, x: np.ndarray) -> np.ndarray:
    """``[N, A, D]``: the probe network's unit logit gradients at the rows of ``x``."""
    gradients = logits_and_gradients(network, x)[1]
    return gradients / np.maximum(np.linalg.norm(gradients, axis=2, keepdims=True), _TINY)


def _gradient_removal(network: dict, q: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``[P, A]``: the ``"gradient"`` scorer, in blocks of ``_CHUNK`` pairs."""
    out = []
    for start in range(0, len(q), _CHUNK):
        qc, rc, sc = q[start:start + _CHUNK], r[start:start + _CHUNK], s[start:start + _CHUNK]
        u, v = _unit_gradients(network, qc), _unit_gradients(network, rc)  # [p, A, D]
        qu, rv = np.einsum("pd,pad->pa", qc, u), np.einsum("pd,pad->pa", rc, v)
        ru, qv, uv = np.einsum("pd,pad->pa", rc, u), np.einsum("pd,pad->pa", qc, v), np.einsum("pad,pad->pa", u, v)
        out.append(_cos_lost(sc, sc - qu * ru - rv * qv + qu * rv * uv, (1.0 - qu**2) * (1.0 - rv**2)))
    return np.concatenate(out) if out else np.zeros((0, len(network["b2"])))


def _cos_lost(s, numerator, squared_norms):
    norms = np.sqrt(np.maximum(squared_norms, 0.0))
    return s - np.where(norms > _TINY, numerator / np.maximum(norms, _TINY), 0.0)


def concept_relevance(concepts: Concepts, query_embeddings, reference_embeddings, *,
                      scorer: str = "product") -> np.ndarray:
    """Each attribute's share of the similarity of each pair (see the module docstring).

    Args:
      concepts: what ``fit_concepts`` or ``fit_edit_concepts`` returned.
      query_embeddings: ``[P, D]``, any scale.
      reference_embeddings: ``[P, D]``, one per query.
      scorer: one of ``SCORERS``.

    Returns:
      ``[P, A]``; ``-inf`` for attributes without a direction.
    """
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    if scorer == "leace" and concepts.probe is None:
        raise ValueError("the leace scorer needs concepts fitted on labels (fit_concepts), which keep the probe")
    if scorer == "shift" and concepts.shifts is None:
        raise ValueError("the shift scorer needs concepts that keep shifts (fit_concepts(method='pattern') or "
                         "fit_edit_concepts)")
    if scorer == "gradient" and concepts.network is None:
        raise ValueError("the gradient scorer needs the probe network of fit_concepts(method='mlp')")
    q, r, s, pq, pr = _projections(concepts, query_embeddings, reference_embeddings)
    if scorer == "product":
        relevance = pq * pr
    elif scorer == "removal":
        relevance = _cos_lost(s, s - pq * pr, (1.0 - pq**2) * (1.0 - pr**2))
    elif scorer == "leace":  # E x = x - c t(x), t(x) = w . (x - mu) / (w . c)
        c, w, mean = _float64(concepts.cross), _float64(concepts.probe), _float64(concepts.mean)
        wc = np.sum(w * c, axis=1)  # > 0: w = (S + l I)^-1 c up to scale
        safe = np.where(np.abs(wc) > _TINY, wc, 1.0)
        tq, tr = (q - mean) @ w.T / safe, (r - mean) @ w.T / safe  # [P, A]
        cq, cr = q @ c.T, r @ c.T
        relevance = _cos_lost(s, s - tr * cq - tq * cr + tq * tr,
                              (1.0 - 2.0 * tq * cq + tq**2) * (1.0 - 2.0 * tr * cr + tr**2))
    elif scorer == "shift":  # s - cos(q - d, r)
        d = _float64(concepts.shifts)
        qd = q @ d.T
        relevance = _cos_lost(s, s - r @ d.T, 1.0 - 2.0 * qd + np.sum(d**2, axis=1)[None])
    else:  # gradient: removal along each embedding's own unit gradient u (q), v (r)
        relevance = _gradient_removal(concepts.network, q, r, s)
    return np.where(concepts.valid[None], relevance, -np.inf)


def cell_concept_relevance(concepts: Concepts, query_cells, reference_cells, *, fraction: float = 1.0) -> np.ndarray:
    """``"product"`` relevance resolved over the cells of a pooled model (module docstring).

    With ``v_i`` the query's cell embeddings (``sx.saliency.cell_embeddings``), ``w_j`` the
    reference's, ``n``, ``m`` their numbers and ``u_q = mean_i v_i``, ``u_r = mean_j w_j``, the
    pair's similarity is ``sum_ij C_ij`` with ``C_ij = v_i . w_j / (n m |u_q| |u_r|)``; keeping
    the set ``K`` of the ``fraction`` of cell pairs with the largest ``C_ij``,

        relevance_a = sum_{(i, j) in K} (v_i . u_a) (w_j . u_a) / (n m |u_q| |u_r|),

    which equals the ``"product"`` scorer when every cell pair is kept.

    Args:
      concepts: directions fitted in the model's normalised embedding space.
      query_cells: ``[P, n, D]`` cell embeddings of the queries (any grid, flattened).
      reference_cells: ``[P, m, D]`` cell embeddings of the references.
      fraction: the share of cell pairs kept, in (0, 1] (at least one pair is kept).

    Returns:
      ``[P, A]``; ``-inf`` for attributes without a direction.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    v, w = _float64(query_cells), _float64(reference_cells)
    if v.ndim != 3 or w.ndim != 3 or len(v) != len(w) or v.shape[2] != w.shape[2]:
        raise ValueError(f"query_cells and reference_cells must be [P, n, D] and [P, m, D], got {v.shape} and {w.shape}")
    if v.shape[2] != concepts.directions.shape[1]:
        raise ValueError(f"cells have D={v.shape[2]} but the concepts were fitted with D={concepts.directions.shape[1]}")
    if not (np.isfinite(v).all() and np.isfinite(w).all()):
        raise ValueError("cell embeddings contain NaN or infinite values")
    n, m = v.shape[1], w.shape[1]
    scale = n * m * np.linalg.norm(v.mean(1), axis=1) * np.linalg.norm(w.mean(1), axis=1)  # [P]
    scale = np.where(scale > _TINY, scale, np.inf)  # a zero embedding: no credit
    corr = np.einsum("pid,pjd->pij", v, w).reshape(len(v), -1)  # [P, n m], C up to the positive scale
    keep = max(1, int(round(fraction * n * m)))
    kept = np.zeros_like(corr, bool)
    np.put_along_axis(kept, np.argsort(-corr, axis=1, kind="stable")[:, :keep], True, axis=1)
    u = _float64(concepts.directions)
    relevance = np.einsum("pia,pij,pja->pa", v @ u.T, kept.reshape(len(v), n, m).astype(np.float64), w @ u.T)
    return np.where(concepts.valid[None], relevance / scale[:, None], -np.inf)


def query_removal_drop(concepts: Concepts, query_embeddings, reference_embeddings) -> np.ndarray:
    """``[P, A]``: ``s(q, r) - cos(P_a q, r)``, the similarity lost when attribute a's direction is
    removed from the query's embedding only (a faithfulness check without re-rendering);
    ``-inf`` for attributes without a direction."""
    _, _, s, pq, pr = _projections(concepts, query_embeddings, reference_embeddings)
    drop = _cos_lost(s, s - pq * pr, 1.0 - pq**2)
    return np.where(concepts.valid[None], drop, -np.inf)
