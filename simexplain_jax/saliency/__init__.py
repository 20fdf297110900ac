"""Saliency maps for image pairs: which regions of the query make it similar to the reference.

Every method takes ``(embed_fn, query, references, *, key=None, options=None, **overrides)`` and
returns a ``SaliencyResult(maps, passes, error)``. ``options`` is the method's frozen options
dataclass (``Rise``, ``RiseVariable``, ``SlidingWindow``, ``SlidingWindowVariable``, ``Lime``,
``LimeVariable``, ``Perturbation``, ``PerturbationVariable``, ``Gradient``,
``IntegratedGradients``, ``Random``); keyword ``overrides`` replace some of its options
(``rise(f, q, r, key=k, num_masks=500)`` is ``rise(f, q, r, key=k, options=Rise(num_masks=500))``).

- fixed-reference methods (``rise``, ``sliding_window``, ``lime``, ``perturbation``, ``gradient``,
  ``integrated_gradients``, ``random``) take reference embeddings: ``[D]`` gives one ``[H, W]`` map,
  ``[K, D]`` gives ``[K, H, W]`` (K references explained together, sharing the query's work);
- variable-reference methods (``rise_variable``, ``sliding_window_variable``, ``lime_variable``,
  ``perturbation_variable``) take reference images: ``[H, W, C]`` gives ``[H, W]``,
  ``[K, H, W, C]`` gives ``[K, H, W]``;
- the batch forms (``perturbation_batch``, ``perturbation_variable_batch``) take one reference per
  pair (``queries [P, H, W, C]`` with ``[P, D]`` embeddings or ``[P, H, W, C]`` images) and return
  the ``[P, H, W]`` maps, as ``explain_pairs`` does for a pair list.

Pair methods (second order: which cells of the query match which cells of the reference) return
a ``PairResult(correspondence, query_map, reference_map, similarity, passes)``, take the same
``options=`` / keyword style and accept one pair or a batch of P pairs: ``pooled_pair`` (exact,
one forward pass per image, for pooled-embedding models), ``rise_pair`` (black box) and
``integrated_cross_jacobian`` (white box). They are registered like every method (``SECOND_ORDER``
names them): ``explain_pairs`` runs them over a pair list, cached and on any mesh, giving the
query maps, or with ``correspondences=True`` a ``PairResult`` of the whole list. ``pooled_pair``
there takes ``embed_fn=pooled_model(model, variables)`` (a ``PooledModel`` is an embed_fn).

``key`` is keyword-only everywhere: the stochastic methods need it (or explicit ``masks`` /
``samples``), the deterministic ones (sliding window, gradients) accept and ignore it. Images
are floats in the model's input space; integer images are refused.

The implementations live in private modules (``_rise``, ``_lime``, ...); each exposes one pure
core that the single-pair function, ``explain_pairs`` and the mesh path all run.
``explain_pairs_distributed`` (multi-process, each process reading its share of the images
through grain) is imported on first use, since it needs the data stack.
"""

import importlib

from simexplain_jax.saliency._cross_jacobian import IntegratedCrossJacobian, integrated_cross_jacobian
from simexplain_jax.saliency._gradients import Gradient, IntegratedGradients, gradient, integrated_gradients
from simexplain_jax.saliency._lime import Lime, LimeVariable, denormalize, lime, lime_variable, superpixels
from simexplain_jax.saliency._occlusion import (SlidingWindow, SlidingWindowVariable, sliding_window,
                                                sliding_window_variable)
from simexplain_jax.saliency._options import MethodOptions, SaliencyResult
from simexplain_jax.saliency._perturbation import (Perturbation, PerturbationVariable, perturbation, perturbation_batch,
                                                   perturbation_variable, perturbation_variable_batch)
from simexplain_jax.saliency._pooled import PooledModel, PooledPair, cell_embeddings, pooled_model, pooled_pair
from simexplain_jax.saliency._random import Random, random
from simexplain_jax.saliency._rise import Rise, RiseVariable, rise, rise_split_masks, rise_variable
from simexplain_jax.saliency._rise_pair import RisePair, rise_pair
from simexplain_jax.saliency._second_order import (CellPair, PairResult, cell_box, first_order_maps, strongest_pairs,
                                                   top_correspondences)
from simexplain_jax.saliency.pairs import explain_pairs
from simexplain_jax.saliency.registry import METHODS, OPTIONS, SECOND_ORDER, options_for

__all__ = ["rise", "rise_variable", "rise_split_masks", "sliding_window", "sliding_window_variable", "lime",
           "lime_variable", "superpixels", "denormalize", "perturbation", "perturbation_variable",
           "perturbation_batch", "perturbation_variable_batch", "gradient", "integrated_gradients", "random",
           "Rise", "RiseVariable", "SlidingWindow", "SlidingWindowVariable", "Lime", "LimeVariable", "Perturbation",
           "PerturbationVariable", "Gradient", "IntegratedGradients", "Random", "MethodOptions", "SaliencyResult",
           "explain_pairs", "explain_pairs_distributed", "options_for", "METHODS", "OPTIONS", "SECOND_ORDER",
           "pooled_pair", "PooledPair", "PooledModel", "pooled_model", "cell_embeddings", "rise_pair", "RisePair",
           "integrated_cross_jacobian", "IntegratedCrossJacobian", "PairResult", "first_order_maps",
           "top_correspondences", "strongest_pairs", "CellPair", "cell_box"]


def __getattr__(name):
    if name == "explain_pairs_distributed":
        return importlib.import_module("simexplain_jax.saliency.distributed").explain_pairs_distributed
    raise AttributeError(f"module 'simexplain_jax.saliency' has no attribute {name!r}")
