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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax.engine import EmbedFn
from simexplain_jax.similarity import SimilarityFn, cosine

DEFAULTS = dict(grid=8, num_steps=500, learning_rate=0.1, l1_weight=0.01, tv_weight=0.2, noise_std=0.2, blur_size=11,
                similarity=cosine, compute_dtype="float32")


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
              blur_size, similarity, compute_dtype):
    """images: [n, H, W, C] side by side in one mask (n = 1: fixed; n = 2: variable). Returns M [H, n*W].
    The forward (and backward) pass of ``embed_fn`` runs in ``compute_dtype``; the mask and Adam in float32."""
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


def options(grid=8, num_steps=500, learning_rate=0.1, l1_weight=0.01, tv_weight=0.2, noise_std=0.2, blur_size=11,
            similarity=cosine, compute_dtype="float32") -> dict:
    grid, num_steps = checks.check_positive_int(grid, "grid"), checks.check_positive_int(num_steps, "num_steps")
    blur_size = checks.check_positive_int(blur_size, "blur_size")
    if blur_size % 2 == 0:
        raise ValueError(f"blur_size must be odd, got {blur_size}")
    if not float(learning_rate) > 0 or float(l1_weight) < 0 or float(tv_weight) < 0 or float(noise_std) < 0:
        raise ValueError("learning_rate must be > 0 and l1_weight, tv_weight, noise_std >= 0")
    checks.check_similarity(similarity)
    return dict(grid=grid, num_steps=num_steps, learning_rate=float(learning_rate), l1_weight=float(l1_weight),
                tv_weight=float(tv_weight), noise_std=float(noise_std), blur_size=blur_size, similarity=similarity,
                compute_dtype=checks.check_compute_dtype(compute_dtype))


def _check_blur(blur_size, shape):
    if blur_size > 2 * min(shape[:2]) - 1:
        raise ValueError(f"blur_size={blur_size} is larger than the image ({shape[0]} x {shape[1]}) allows "
                         f"(at most {2 * min(shape[:2]) - 1})")


def perturbation_core(embed_fn, query, references, key, **static):
    """``[K, H, W]`` fixed-reference mask saliency for ``references [K, D]`` (one key for all K)."""
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)
    return jax.vmap(lambda ref: 1.0 - _optimise(embed_fn, query[None], ref, key, **static))(references)


def perturbation_variable_core(embed_fn, query, references, key, **static):
    """``[K, H, W]`` variable-reference mask saliency for ``references [K, H, W, C]`` (one key for all K)."""
    checks.embedding_dim(embed_fn, query.shape)

    def one(reference):
        mask = _optimise(embed_fn, jnp.stack([query, reference]), None, key, **static)
        return 1.0 - mask[:, : query.shape[1]]

    return jax.vmap(one)(references)


_perturbation_jit = jax.jit(perturbation_core, static_argnames=tuple(DEFAULTS))
_perturbation_variable_jit = jax.jit(perturbation_variable_core, static_argnames=tuple(DEFAULTS))


@jax.jit(static_argnames=tuple(DEFAULTS) + ("variable",))
def _batch_jit(embed_fn, queries, references, keys, *, variable, **static):
    core = perturbation_variable_core if variable else perturbation_core
    return jax.vmap(lambda q, r, k: core(embed_fn, q, r[None], k, **static)[0])(queries, references, keys)


def _pair_keys(key, num_pairs):
    """One key per pair: ``key`` folded with the pair index, or ``key`` itself if it holds P keys."""
    if key is None:
        raise ValueError("the mask method needs key= (the noise of every step is drawn from it)")
    key = jnp.asarray(key)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (1 if typed else 2):
        if key.shape[0] != num_pairs:
            raise ValueError(f"key holds {key.shape[0]} keys for {num_pairs} pairs")
        return key
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_pairs))


def perturbation_batch(embed_fn: EmbedFn, queries: ArrayLike, reference_embeddings: ArrayLike, *, key: jax.Array,
                       grid: int = 8,
                       num_steps: int = 500, learning_rate: float = 0.1, l1_weight: float = 0.01,
                       tv_weight: float = 0.2, noise_std: float = 0.2, blur_size: int = 11,
                       similarity: SimilarityFn = cosine, compute_dtype: str = "float32") -> jax.Array:
    """Fixed-reference masks for P pairs at once: ``queries [P, H, W, C]`` with their per-pair
    ``reference_embeddings [P, D]`` -> ``[P, H, W]``. ``key`` is one key (pair i uses
    ``fold_in(key, i)``) or P keys; a pair's map does not depend on the other pairs of the batch."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = jnp.asarray(checks.check_images(queries, "queries"))
    refs = jnp.asarray(reference_embeddings, jnp.float32)
    if refs.ndim != 2 or refs.shape[0] != queries.shape[0]:
        raise ValueError(f"reference_embeddings must be [P, D] with P = {queries.shape[0]}, got {refs.shape}")
    static = options(grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity,
                     compute_dtype)
    _check_blur(static["blur_size"], queries.shape[1:])
    return _batch_jit(embed_fn, queries, refs, _pair_keys(key, queries.shape[0]), variable=False, **static)


def perturbation_variable_batch(embed_fn: EmbedFn, queries: ArrayLike, references: ArrayLike, *, key: jax.Array,
                                grid: int = 8,
                                num_steps: int = 500, learning_rate: float = 0.1, l1_weight: float = 0.01,
                                tv_weight: float = 0.2, noise_std: float = 0.2, blur_size: int = 11,
                                similarity: SimilarityFn = cosine, compute_dtype: str = "float32") -> jax.Array:
    """Variable-reference masks for P pairs: ``queries, references [P, H, W, C]`` -> ``[P, H, W]``."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = jnp.asarray(checks.check_images(queries, "queries"))
    references = jnp.asarray(checks.check_images(references, "references"))
    if queries.shape != references.shape:
        raise ValueError(f"queries {queries.shape} and references {references.shape} must have the same shape "
                         "(they share one mask side by side)")
    static = options(grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity,
                     compute_dtype)
    _check_blur(static["blur_size"], queries.shape[1:])
    return _batch_jit(embed_fn, queries, references, _pair_keys(key, queries.shape[0]), variable=True, **static)


def perturbation(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: jax.Array,
                 grid: int = 8, num_steps: int = 500,
                 learning_rate: float = 0.1, l1_weight: float = 0.01, tv_weight: float = 0.2, noise_std: float = 0.2,
                 blur_size: int = 11, similarity: SimilarityFn = cosine, compute_dtype: str = "float32") -> jax.Array:
    """Fixed-reference mask saliency: ``[D]`` gives ``[H, W]``, ``[K, D]`` gives ``[K, H, W]``
    (every reference's mask optimised with the noise drawn from ``key``). ``compute_dtype``: the
    dtype of the model's forward and backward pass, as in ``sx.saliency.rise``; the mask, its
    gradient and Adam's state stay float32."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    if key is None:
        raise ValueError("the mask method needs key= (the noise of every step is drawn from it)")
    static = options(grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity,
                     compute_dtype)
    _check_blur(static["blur_size"], query.shape)
    maps = _perturbation_jit(embed_fn, query, refs, key, **static)
    return maps[0] if single else maps


def perturbation_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *, key: jax.Array,
                          grid: int = 8, num_steps: int = 500,
                          learning_rate: float = 0.1, l1_weight: float = 0.01, tv_weight: float = 0.2,
                          noise_std: float = 0.2, blur_size: int = 11, similarity: SimilarityFn = cosine,
                          compute_dtype: str = "float32") -> jax.Array:
    """Variable-reference mask saliency: ``reference [H, W, C]`` gives ``[H, W]``, ``[K, H, W, C]``
    gives ``[K, H, W]`` (each of the same shape as the query)."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if refs.shape[1:] != query.shape:
        raise ValueError(f"reference {tuple(refs.shape[1:])} must have the query's shape {tuple(query.shape)} "
                         "(they share one mask side by side)")
    if key is None:
        raise ValueError("the mask method needs key= (the noise of every step is drawn from it)")
    static = options(grid, num_steps, learning_rate, l1_weight, tv_weight, noise_std, blur_size, similarity,
                     compute_dtype)
    _check_blur(static["blur_size"], query.shape)
    maps = _perturbation_variable_jit(embed_fn, query, refs, key, **static)
    return maps[0] if single else maps
