"""Meaningful-perturbation masks (Fong & Vedaldi 2017, deletion form; SPEC.md section 2).

A mask ``m in [0, 1]^{g x g}`` (g = 8), initialised to 1 and upsampled bilinearly to ``H x W``,
blends the query with its median-blurred copy (11 x 11): ``q~ = q * M + blur(q) * (1 - M) + eps``
with ``eps ~ N(0, 0.2^2)`` redrawn every step. Adam (lr 0.1) minimises
``0.01 * mean|1 - m| + 0.2 * TV_3(m) + s(q~)`` for 500 steps, clipping m to [0, 1] after each
step; the saliency is ``1 - M``. The whole optimisation is one ``lax.scan``; ``perturbation_batch``
vmaps it over pairs so many pairs optimise in one compiled call.

Variable reference: one ``g x 2g`` mask over the query and the reference side by side, both
perturbed, objective ``sim(f(q~), f(r~))``; the query's half gives its map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simexplain_jax.saliency import _common
from simexplain_jax.similarity import SimilarityFn, cosine


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


def _optimise(embed_fn, images, reference, key, *, grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std,
              blur_size, similarity):
    """images: [n, H, W, C] side by side in one mask (n = 1: fixed; n = 2: variable). Returns M [H, n*W]."""
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


_STATIC = ("grid", "num_steps", "learning_rate", "l1_weight", "tv_weight", "noise_std", "blur_size", "similarity")


@jax.jit(static_argnames=_STATIC)
def _fixed_batch_jit(embed_fn, queries, references, keys, **static):
    def one(query, reference, key):
        return 1.0 - _optimise(embed_fn, query[None], reference, key, **static)

    return jax.vmap(one)(queries, references, keys)


@jax.jit(static_argnames=_STATIC)
def _variable_batch_jit(embed_fn, queries, references, keys, **static):
    def one(query, reference, key):
        mask = _optimise(embed_fn, jnp.stack([query, reference]), None, key, **static)
        return 1.0 - mask[:, : query.shape[1]]

    return jax.vmap(one)(queries, references, keys)


def _options(grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity):
    for name, value in (("grid", grid), ("num_steps", num_steps), ("blur_size", blur_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if blur_size % 2 == 0:
        raise ValueError(f"blur_size must be odd, got {blur_size}")
    if learning_rate <= 0 or l1_weight < 0 or tv_weight < 0 or noise_std < 0:
        raise ValueError("learning_rate must be > 0 and l1_weight, tv_weight, noise_std >= 0")
    _common.check_similarity(similarity)
    return dict(grid=int(grid), num_steps=int(num_steps), learning_rate=float(learning_rate),
                l1_weight=float(l1_weight), tv_weight=float(tv_weight), noise_std=float(noise_std),
                blur_size=int(blur_size), similarity=similarity)


def _pair_keys(key, num_pairs):
    """One key per pair: ``key`` folded with the pair index, or ``key`` itself if it holds P keys."""
    key = jnp.asarray(key)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (1 if typed else 2):
        if key.shape[0] != num_pairs:
            raise ValueError(f"key holds {key.shape[0]} keys for {num_pairs} pairs")
        return key
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_pairs))


def _check_batch(queries, name):
    if not hasattr(queries, "shape"):
        queries = np.asarray(queries)
    if queries.ndim != 4:
        raise ValueError(f"{name} must be a batch of images [P, H, W, C], got shape {tuple(queries.shape)}")
    return jnp.asarray(queries, jnp.float32)


def perturbation_batch(embed_fn, queries, reference_embeddings, *, key, grid: int = 8, num_steps: int = 500,
                       learning_rate: float = 0.1, l1_weight: float = 0.01, tv_weight: float = 0.2,
                       noise_std: float = 0.2, blur_size: int = 11, similarity: SimilarityFn = cosine) -> jax.Array:
    """Fixed-reference masks for P pairs at once: ``queries [P, H, W, C]``, ``reference_embeddings
    [P, D]`` -> ``[P, H, W]``. ``key`` is one key (pair i uses ``fold_in(key, i)``) or P keys; a
    pair's map does not depend on the other pairs of the batch."""
    embed_fn = _common.as_pytree_fn(embed_fn)
    queries = _check_batch(queries, "queries")
    refs = jnp.asarray(reference_embeddings, jnp.float32)
    if refs.ndim != 2 or refs.shape[0] != queries.shape[0]:
        raise ValueError(f"reference_embeddings must be [P, D] with P = {queries.shape[0]}, got {refs.shape}")
    _common.check_embedding_dims(_common.embedding_dim(embed_fn, queries.shape[1:]), refs)
    keys = _pair_keys(key, queries.shape[0])
    return _fixed_batch_jit(embed_fn, queries, refs, keys, **_options(grid, num_steps, learning_rate, l1_weight,
                                                                      tv_weight, noise_std, blur_size, similarity))


def perturbation_variable_batch(embed_fn, queries, references, *, key, grid: int = 8, num_steps: int = 500,
                                learning_rate: float = 0.1, l1_weight: float = 0.01, tv_weight: float = 0.2,
                                noise_std: float = 0.2, blur_size: int = 11,
                                similarity: SimilarityFn = cosine) -> jax.Array:
    """Variable-reference masks for P pairs: ``queries, references [P, H, W, C]`` -> ``[P, H, W]``."""
    embed_fn = _common.as_pytree_fn(embed_fn)
    queries, references = _check_batch(queries, "queries"), _check_batch(references, "references")
    if queries.shape != references.shape:
        raise ValueError(f"queries {queries.shape} and references {references.shape} must have the same shape "
                         "(they share one mask side by side)")
    _common.embedding_dim(embed_fn, queries.shape[1:])
    keys = _pair_keys(key, queries.shape[0])
    return _variable_batch_jit(embed_fn, queries, references, keys, **_options(
        grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity))


def perturbation(embed_fn, query, reference_embedding, *, key, **options) -> jax.Array:
    """The fixed-reference mask saliency ``[H, W]`` of one pair (options as ``perturbation_batch``)."""
    query = _common.check_image(query, "query")
    reference_embedding = jnp.asarray(reference_embedding, jnp.float32)
    if reference_embedding.ndim != 1:
        raise ValueError(f"reference_embedding must be [D], got {reference_embedding.shape}")
    return perturbation_batch(embed_fn, query[None], reference_embedding[None], key=key, **options)[0]


def perturbation_variable(embed_fn, query, reference, *, key, **options) -> jax.Array:
    """The variable-reference mask saliency ``[H, W]`` of one pair."""
    query, reference = _common.check_image(query, "query"), _common.check_image(reference, "reference")
    return perturbation_variable_batch(embed_fn, query[None], reference[None], key=key, **options)[0]
