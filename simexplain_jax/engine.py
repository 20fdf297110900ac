"""The shared perturb -> embed -> score -> accumulate loop behind every perturbation method.

One compiled ``lax.scan`` walks over chunks of ``batch_size`` perturbations. Each step builds
its chunk of perturbed queries from the chunk's indices (masks are generated or gathered on
device), embeds the chunk with ``embed_fn``, scores it against all K reference embeddings at
once, and accumulates

- ``weighted [K, H, W] = sum_i s_ik M_i`` and ``mask_sum [H, W] = sum_i M_i`` (RISE-style maps:
  one ``[K, B] @ [B, H*W]`` product per chunk), and/or
- ``scores [N, K]`` (occlusion, insertion/deletion, LIME: the per-perturbation scores).

Peak memory depends on ``batch_size`` and K, never on the number of perturbations N when the
masks come from a key. The last chunk is padded (padded entries get weight 0), so any N runs
with one compiled program per shape. Nothing leaves the device inside the loop.

The same module holds chunked embedding, written once: ``embed_in_chunks`` inside compiled code
(``lax.map`` over padded chunks) and ``apply_in_chunks`` for host arrays of any length (one
module-level compiled program per chunk shape, reused across calls).

It also holds :func:`in_compute_dtype`, which turns an ``embed_fn`` into one whose forward pass
runs in bfloat16 (parameters cast once, activations in bfloat16, embeddings returned as float32),
the ``compute_dtype`` option of every method and of insertion/deletion.

This module sits below ``saliency`` and ``metrics``: the public methods validate inputs and call
:func:`run` inside their own ``jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from simexplain_jax.checks import as_pytree_fn
from simexplain_jax.similarity import SimilarityFn, pairwise

# indices [B] int32 -> (perturbed images [B, H, W, C], masks [B, H, W] or None)
PerturbFn = Callable[[jax.Array], tuple[jax.Array, Optional[jax.Array]]]
EmbedFn = Callable[[jax.Array], jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST


class EngineResult(NamedTuple):
    weighted: Optional[jax.Array]  # [K, H, W]: sum_i s_ik M_i
    mask_sum: Optional[jax.Array]  # [H, W]: sum_i M_i
    scores: Optional[jax.Array]  # [N, K]: s_ik


def masked_perturbation(query: jax.Array, masks_for: Callable[[jax.Array], jax.Array],
                        substrate: jax.Array | float = 0.0) -> PerturbFn:
    """``q * M + substrate * (1 - M)`` for each mask of the chunk (substrate 0: RISE/occlusion)."""

    def perturb(indices):
        masks = masks_for(indices)
        m = masks[..., None]
        images = query[None] * m
        if not (isinstance(substrate, float) and substrate == 0.0):
            images = images + jnp.asarray(substrate, query.dtype) * (1.0 - m)
        return images, masks

    return perturb


@dataclasses.dataclass(frozen=True)
class _InDtype:
    """``fn(*params, images)`` with the images cast to ``dtype`` and floating outputs cast to float32;
    hashable and compared by value, so equal wrappers share compiled programs."""

    fn: Callable
    dtype: str

    def __call__(self, *args, **kwargs):
        *params, images = args
        out = self.fn(*params, jnp.asarray(images).astype(self.dtype), **kwargs)
        return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, out)


def _cast_floating(tree, dtype):
    def cast(x):
        return x.astype(dtype) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def in_compute_dtype(embed_fn: Partial, compute_dtype: str) -> Partial:
    """``embed_fn`` (a ``jax.tree_util.Partial``, see ``checks.as_pytree_fn``) computing in ``compute_dtype``.

    ``"float32"`` returns ``embed_fn`` itself. ``"bfloat16"``: the floating-point leaves of the
    Partial's arguments (the model's parameters and batch statistics) are cast once, here (call it
    outside the chunk loop: inside ``jit`` the cast is one op before the loop); each chunk's images
    are cast on the way in, so convolutions and activations run in bfloat16; the embeddings come
    back as float32, so similarities, scores and map accumulation stay float32. Integer leaves (a
    condition index) are kept. Constants that a plain function closes over are not arguments and
    are not cast (JAX's type promotion then computes in float32 where they meet the images).
    Applying it twice with the same dtype is the same as once.
    """
    if compute_dtype == "float32":
        return embed_fn
    if isinstance(embed_fn.func, _InDtype):
        if embed_fn.func.dtype == compute_dtype:
            return embed_fn
        raise ValueError(f"embed_fn already computes in {embed_fn.func.dtype}, cannot change it to {compute_dtype}")
    return Partial(_InDtype(embed_fn.func, compute_dtype), *_cast_floating(embed_fn.args, compute_dtype),
                   **_cast_floating(embed_fn.keywords, compute_dtype))


def num_chunks(num_items: int, batch_size: int) -> int:
    return -(-num_items // batch_size)


def run(
    embed_fn: EmbedFn,
    reference_embeddings: jax.Array,
    perturb: PerturbFn,
    num_items: int,
    batch_size: int,
    similarity: SimilarityFn,
    *,
    accumulate_maps: bool = True,
    return_scores: bool = False,
    index_offset=0,
    num_local: Optional[int] = None,
) -> EngineResult:
    """Runs the chunked loop; call inside ``jit``.

    Args:
      embed_fn: images ``[B, H, W, C]`` -> embeddings ``[B, D]``.
      reference_embeddings: ``[K, D]``.
      perturb: chunk indices ``[B]`` (values >= ``num_items`` are padding) -> images, masks.
      num_items: N, the number of perturbations (static).
      batch_size: the chunk size B (static); clipped to N.
      similarity: broadcasting similarity, see ``simexplain_jax.similarity``.
      accumulate_maps: accumulate ``weighted`` and ``mask_sum`` (needs ``perturb`` to return masks).
      return_scores: also return the ``[N, K]`` scores.
      index_offset, num_local: process only perturbations ``index_offset .. index_offset +
        num_local - 1`` (one device's share when the masks of one pair are split over a mesh;
        ``index_offset`` may be traced). Default: all N.
    """
    num_local = int(num_items if num_local is None else num_local)
    batch_size = max(1, min(int(batch_size), num_local))
    chunks = num_chunks(num_local, batch_size)
    num_refs = reference_embeddings.shape[0]

    def step(carry, chunk):
        weighted, mask_sum = carry
        local = chunk * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
        indices = index_offset + local
        valid = ((local < num_local) & (indices < num_items)).astype(jnp.float32)  # [B]
        images, masks = perturb(indices)
        embeddings = embed_fn(images)
        scores = pairwise(similarity, embeddings, reference_embeddings)  # [B, K]
        scores = scores.astype(jnp.float32) * valid[:, None]
        if accumulate_maps:
            flat = masks.reshape(batch_size, -1)
            weighted = weighted + jnp.matmul(scores.T, flat, precision=_HIGHEST)
            mask_sum = mask_sum + jnp.matmul(valid, flat, precision=_HIGHEST)
        return (weighted, mask_sum), (scores if return_scores else None)

    if accumulate_maps:
        probe_images, probe_masks = jax.eval_shape(perturb, jnp.zeros((batch_size,), jnp.int32))
        if probe_masks is None:
            raise ValueError("accumulate_maps needs a perturbation that returns masks")
        height, width = probe_masks.shape[1:]
        init = (jnp.zeros((num_refs, height * width), jnp.float32), jnp.zeros((height * width,), jnp.float32))
    else:
        height = width = None
        init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    (weighted, mask_sum), scores = jax.lax.scan(step, init, jnp.arange(chunks, dtype=jnp.int32))
    if return_scores:
        scores = scores.reshape(chunks * batch_size, num_refs)[:num_local]
    if accumulate_maps:
        return EngineResult(weighted.reshape(num_refs, height, width), mask_sum.reshape(height, width), scores)
    return EngineResult(None, None, scores)


def embed_in_chunks(embed_fn: EmbedFn, images: jax.Array, batch_size: int) -> jax.Array:
    """``images [N, H, W, C]`` -> ``[N, D]`` inside compiled code, ``batch_size`` at a time (the
    last chunk padded with zeros and dropped)."""
    n = images.shape[0]
    batch_size = max(1, min(batch_size, n))
    chunks = num_chunks(n, batch_size)
    padded = jnp.pad(images, [(0, chunks * batch_size - n)] + [(0, 0)] * (images.ndim - 1))
    out = jax.lax.map(embed_fn, padded.reshape(chunks, batch_size, *images.shape[1:]))
    return out.reshape(chunks * batch_size, *out.shape[2:])[:n]


@jax.jit
def _apply_chunk(fn, images):
    return fn(images)


def apply_in_chunks(fn, images, batch_size: int = 256):
    """``fn(images [N, ...])`` on host arrays, ``batch_size`` images at a time; the last chunk is
    padded so one compiled program serves every chunk. Returns ``fn``'s output pytree (numpy) with
    the N rows concatenated. ``fn`` is a pure function such as an ``embed_fn`` (a
    ``jax.tree_util.Partial`` passes its parameters as arguments, so new weights do not recompile;
    a plain function is wrapped by ``checks.as_pytree_fn`` and compiled once per function object).
    """
    fn = as_pytree_fn(fn)
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("apply_in_chunks needs at least one image")
    batch_size = max(1, min(int(batch_size), n))
    outputs = []
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(jax.tree.map(lambda x: np.asarray(x)[: batch_size - pad], _apply_chunk(fn, jnp.asarray(chunk))))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
