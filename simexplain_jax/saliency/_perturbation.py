"""Meaningful-perturbation masks (Fong & Vedaldi 2017, deletion form; docs/method.md, "Mask").

A mask ``m in [0, 1]^{g x g}`` (g = 8), initialised to 1 and upsampled bilinearly to ``H x W``,
blends the query with its median-blurred copy (11 x 11): ``q~ = q * M + blur(q) * (1 - M) + eps``
with ``eps ~ N(0, 0.2^2)`` redrawn every step. Adam (lr 0.1) minimises
``0.01 * mean|1 - m| + 0.2 * TV_3(m) + s(q~)`` for 500 steps, clipping m to [0, 1] after each
step; the saliency is ``1 - M``. The whole optimisation is one ``lax.scan``; the core vmaps it over
a query's K references, ``perturbation_batch`` and ``explain_pairs`` over pairs, so many masks
optimise in one compiled call. Every mask of one call to the core uses the same key (the same noise
sequence); pair i of ``perturbation_batch`` with one key uses ``fold_in(key, i)``.

Variable reference: one ``g x 2g`` mask over the query and the reference side by side, both
perturbed, objective ``sim(f(q~), f(r~))``; the query's half gives its map.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import (MethodOptions, SaliencyResult, options_class, resolve, result, set_field,
                                              squeeze)
from simexplain_jax.similarity import SimilarityFn, cosine

_TRACED = ("learning_rate", "l1_weight", "tv_weight", "noise_std")


@options_class("perturbation", references="embeddings", traced=_TRACED, queries_per_device=16)
class Perturbation(MethodOptions):
    """Options of the meaningful-perturbation mask with fixed references (:func:`perturbation`).

    Attributes:
      grid: g, the mask's side before upsampling (``g x g``; ``g x 2g`` for a variable reference).
      num_steps: Adam steps.
      learning_rate: Adam's learning rate (traced: a sweep over it compiles once).
      l1_weight: the weight of ``mean |1 - m|`` (traced).
      tv_weight: the weight of the total-variation term (traced).
      noise_std: the standard deviation of the noise added each step (traced).
      blur_size: the odd side of the median filter giving the blurred image.
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      compute_dtype: the dtype of the model's forward and backward pass, as in :class:`Rise`;
        the mask, its gradient and Adam's state stay float32.
    """

    grid: int = 8
    num_steps: int = 500
    learning_rate: float = 0.1
    l1_weight: float = 0.01
    tv_weight: float = 0.2
    noise_std: float = 0.2
    blur_size: int = 11
    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        grid, num_steps = checks.check_positive_int(self.grid, "grid"), checks.check_positive_int(self.num_steps,
                                                                                               "num_steps")
        blur_size = checks.check_positive_int(self.blur_size, "blur_size")
        if blur_size % 2 == 0:
            raise ValueError(f"blur_size must be odd, got {blur_size}")
        if not float(self.learning_rate) > 0 or float(self.l1_weight) < 0 or float(self.tv_weight) < 0 or \
                float(self.noise_std) < 0:
            raise ValueError("learning_rate must be > 0 and l1_weight, tv_weight, noise_std >= 0")
        checks.check_similarity(self.similarity)
        for name, value in dict(grid=grid, num_steps=num_steps, learning_rate=float(self.learning_rate),
                                l1_weight=float(self.l1_weight), tv_weight=float(self.tv_weight),
                                noise_std=float(self.noise_std), blur_size=blur_size,
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key) -> SaliencyResult:
        return perturbation_core(embed_fn, query, references, key, self)


@options_class("perturbation_variable", references="images", traced=_TRACED, queries_per_device=16)
class PerturbationVariable(Perturbation):
    """Options of the mask with a variable reference (:func:`perturbation_variable`): those of
    :class:`Perturbation`."""

    def core(self, embed_fn, query, references, key) -> SaliencyResult:
        return perturbation_variable_core(embed_fn, query, references, key, self)


def median_blur(image: jax.Array, size: int = 11) -> jax.Array:
    """Per-channel median filter of ``image [H, W, C]`` over ``size x size`` windows (edge padding)."""
    pad = size // 2
    padded = jnp.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode="edge")
    h, w = image.shape[:2]
    windows = jnp.stack([padded[dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)])
    return jnp.median(windows, axis=0)


def tv_norm(mask: jax.Array, beta: float = 3.0) -> jax.Array:
    """``mean |dm/dy|^beta + mean |dm/dx|^beta`` of a 2-D mask (Fong's TV term)."""
    rows = jnp.mean(jnp.abs(mask[1:, :] - mask[:-1, :]) ** beta)
    cols = jnp.mean(jnp.abs(mask[:, 1:] - mask[:, :-1]) ** beta)
    return rows + cols


def _upsample(mask, height, width):
    return jax.image.resize(mask, (height, width), "bilinear")


def _optimise(embed_fn, images, reference, key, options: Perturbation):
    """images: [n, H, W, C] side by side in one mask (n = 1: fixed; n = 2: variable). Returns M [H, n*W].
    The forward (and backward) pass of ``embed_fn`` runs in ``compute_dtype``; the mask and Adam in float32."""
    grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity, compute_dtype = (
        options.grid, options.num_steps, options.learning_rate, options.l1_weight, options.tv_weight,
        options.noise_std, options.blur_size, options.similarity, options.compute_dtype)
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    n, height, width = images.shape[:3]
    blurred = jax.vmap(lambda x: median_blur(x, blur_size))(images)
    optimizer = optax.adam(learning_rate)

    def perturbed(mask, noise_key):
        big = _upsample(mask, height, n * width).reshape(height, n, width).transpose(1, 0, 2)[..., None]
        noise = noise_std * jax.random.normal(noise_key, images.shape)
        return images * big + blurred * (1.0 - big) + noise

    def objective(mask, noise_key):
        x = perturbed(mask, noise_key)
        embeddings = embed_fn(x)
        target = embeddings[1] if n == 2 else reference
        score = similarity(embeddings[0], target)
        return l1_weight * jnp.mean(jnp.abs(1.0 - mask)) + tv_weight * tv_norm(mask) + score

    def step(carry, index):
        mask, opt_state = carry
        grads = jax.grad(objective)(mask, jax.random.fold_in(key, index))
        updates, opt_state = optimizer.update(grads, opt_state, mask)
        return (jnp.clip(optax.apply_updates(mask, updates), 0.0, 1.0), opt_state), None

    mask = jnp.ones((grid, n * grid), jnp.float32)
    (mask, _), _ = jax.lax.scan(step, (mask, optimizer.init(mask)), jnp.arange(num_steps))
    return _upsample(mask, height, n * width)


def _check_blur(blur_size, shape):
    if blur_size > 2 * min(shape[:2]) - 1:
        raise ValueError(f"blur_size={blur_size} is larger than the image ({shape[0]} x {shape[1]}) allows "
                         f"(at most {2 * min(shape[:2]) - 1})")


def perturbation_core(embed_fn, query, references, key, options: Perturbation) -> SaliencyResult:
    """``[K, H, W]`` fixed-reference mask saliency for ``references [K, D]`` (one key for all K); traceable."""
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)
    maps = jax.vmap(lambda ref: 1.0 - _optimise(embed_fn, query[None], ref, key, options))(references)
    return result(maps, options.num_steps)


def perturbation_variable_core(embed_fn, query, references, key, options: Perturbation) -> SaliencyResult:
    """``[K, H, W]`` variable-reference mask saliency for ``references [K, H, W, C]`` (one key for all K); traceable."""
    checks.embedding_dim(embed_fn, query.shape)

    def one(reference):
        mask = _optimise(embed_fn, jnp.stack([query, reference]), None, key, options)
        return 1.0 - mask[:, : query.shape[1]]

    return result(jax.vmap(one)(references), options.num_steps)


_perturbation_jit = jax.jit(perturbation_core)
_perturbation_variable_jit = jax.jit(perturbation_variable_core)


@jax.jit
def _batch_jit(embed_fn, queries, references, keys, options):
    core = perturbation_variable_core if isinstance(options, PerturbationVariable) else perturbation_core
    return jax.vmap(lambda q, r, k: core(embed_fn, q, r[None], k, options).maps[0])(queries, references, keys)


def _pair_keys(key, num_pairs):
    """One key per pair: ``key`` folded with the pair index, or ``key`` itself if it holds P keys."""
    if key is None:
        raise ValueError("the mask method needs key= (the noise of every step is drawn from it)")
    checks.check_key(key, batch=True)
    key = jnp.asarray(key)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (1 if typed else 2):
        if key.shape[0] != num_pairs:
            raise ValueError(f"key holds {key.shape[0]} keys for {num_pairs} pairs")
        return key
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_pairs))


def perturbation_batch(embed_fn: EmbedFn, queries: ArrayLike, reference_embeddings: ArrayLike, *, key: jax.Array,
                       options: Optional[Perturbation] = None, **overrides) -> jax.Array:
    """Fixed-reference masks for P pairs at once.

    Args:
      embed_fn: as in ``sx.saliency.rise``.
      queries: ``[P, H, W, C]``.
      reference_embeddings: ``[P, D]``, one per pair.
      key: one key (pair i uses ``fold_in(key, i)``) or P keys; a pair's map does not depend on
        the other pairs of the batch.
      options: a :class:`Perturbation` (default ``Perturbation()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``[P, H, W]`` maps.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = jnp.asarray(checks.check_images(queries, "queries"))
    refs = jnp.asarray(reference_embeddings, jnp.float32)
    if refs.ndim != 2 or refs.shape[0] != queries.shape[0]:
        raise ValueError(f"reference_embeddings must be [P, D] with P = {queries.shape[0]}, got {refs.shape}")
    options = resolve(Perturbation, options, overrides)
    _check_blur(options.blur_size, queries.shape[1:])
    return _batch_jit(embed_fn, queries, refs, _pair_keys(key, queries.shape[0]), options)


def perturbation_variable_batch(embed_fn: EmbedFn, queries: ArrayLike, references: ArrayLike, *, key: jax.Array,
                                options: Optional[PerturbationVariable] = None, **overrides) -> jax.Array:
    """Variable-reference masks for P pairs at once.

    Args:
      embed_fn: as in ``sx.saliency.rise``.
      queries, references: ``[P, H, W, C]`` each, pair i being ``(queries[i], references[i])``.
      key: one key (pair i uses ``fold_in(key, i)``) or P keys.
      options: a :class:`PerturbationVariable` (default ``PerturbationVariable()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``[P, H, W]`` maps.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = jnp.asarray(checks.check_images(queries, "queries"))
    references = jnp.asarray(checks.check_images(references, "references"))
    if queries.shape != references.shape:
        raise ValueError(f"queries {queries.shape} and references {references.shape} must have the same shape "
                         "(they share one mask side by side)")
    options = resolve(PerturbationVariable, options, overrides)
    _check_blur(options.blur_size, queries.shape[1:])
    return _batch_jit(embed_fn, queries, references, _pair_keys(key, queries.shape[0]), options)


def perturbation(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: jax.Array,
                 options: Optional[Perturbation] = None, **overrides) -> SaliencyResult:
    """Fixed-reference mask saliency (every reference's mask optimised with the noise drawn from ``key``).

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference_embeddings: ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: PRNG key for the noise of every step.
      options: a :class:`Perturbation` (default ``Perturbation()``).
      **overrides: options replacing those of ``options``, e.g. ``num_steps=100``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the optimisation steps, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    if key is None:
        raise ValueError("the mask method needs key= (the noise of every step is drawn from it)")
    checks.check_key(key)
    options = resolve(Perturbation, options, overrides)
    _check_blur(options.blur_size, query.shape)
    return squeeze(_perturbation_jit(embed_fn, query, refs, key, options), single)


def perturbation_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *, key: jax.Array,
                          options: Optional[PerturbationVariable] = None, **overrides) -> SaliencyResult:
    """Variable-reference mask saliency: one mask over the query and the reference side by side.

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference: an image ``[H, W, C]`` (gives ``[H, W]``) or images ``[K, H, W, C]`` (gives
        ``[K, H, W]``), each of the query's shape.
      key: PRNG key for the noise of every step.
      options: a :class:`PerturbationVariable` (default ``PerturbationVariable()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the optimisation steps, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if refs.shape[1:] != query.shape:
        raise ValueError(f"reference {tuple(refs.shape[1:])} must have the query's shape {tuple(query.shape)} "
                         "(they share one mask side by side)")
    if key is None:
        raise ValueError("the mask method needs key= (the noise of every step is drawn from it)")
    checks.check_key(key)
    options = resolve(PerturbationVariable, options, overrides)
    _check_blur(options.blur_size, query.shape)
    return squeeze(_perturbation_variable_jit(embed_fn, query, refs, key, options), single)
