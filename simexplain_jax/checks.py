"""Argument checks shared by the saliency methods and the metrics (below both; library-internal).

Each check raises a ValueError or TypeError that names the argument and what was expected.
Images must be floating point in the model's input space: integer images (uint8 pixels, say)
are rejected rather than silently used as if normalised; ``sx.imageops.normalize_images``
turns uint8 RGB into the ImageNet-normalised floats the built-in models take. Images, reference
embeddings and masks must be finite: a NaN or an infinity raises, naming the argument and the
first rows that hold one (a NaN would otherwise turn into all-zero maps and an AUC of 0.5).
Numeric options accept Python, NumPy and JAX scalars alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from simexplain_jax.similarity import SimilarityFn


def as_pytree_fn(embed_fn) -> Partial:
    """Wraps ``embed_fn`` as a ``jax.tree_util.Partial`` so that it crosses ``jit`` as an argument.

    A ``Partial(model.apply, variables)`` keeps its parameters as traced arguments: new weights
    of the same shapes reuse the compiled program. A plain function becomes a ``Partial`` with
    no arguments; it is then part of the compilation cache key, so pass the same function
    object on every call (not a fresh lambda) to avoid re-tracing.
    """
    if not callable(embed_fn):
        raise TypeError(f"embed_fn must be callable (images [B, H, W, C] -> embeddings [B, D]), got {type(embed_fn).__name__}")
    if isinstance(embed_fn, Partial):
        return embed_fn
    leaves = jax.tree_util.tree_leaves(embed_fn)
    if not (len(leaves) == 1 and leaves[0] is embed_fn):  # a callable pytree (sx.saliency.PooledModel): its arrays
        return Partial(call_pytree, embed_fn)  # travel as traced arguments
    return Partial(embed_fn)


def call_pytree(fn, images):
    """``fn(images)`` for a callable pytree ``fn`` carried as a ``Partial``'s argument."""
    return fn(images)


def _check_float(array, name: str) -> None:
    if jnp.issubdtype(array.dtype, jnp.integer) or array.dtype == bool:
        raise TypeError(f"{name} must be a floating-point image in the model's input space, got dtype {array.dtype}; "
                        "normalise integer pixels first (e.g. sx.imageops.normalize_images for uint8 RGB)")
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point image, got dtype {array.dtype}")


def check_finite(array, name: str, what: str = "values", rows: bool = True) -> None:
    """Raises a ValueError naming ``name`` (and its first offending rows) if ``array`` holds NaN or
    an infinity. Skipped while tracing (inside ``jit`` the values are not known)."""
    if isinstance(array, jax.core.Tracer):
        return
    if isinstance(array, np.ndarray):
        bad = ~np.isfinite(array)
        if not bad.any():
            return
    else:
        if bool(jnp.all(jnp.isfinite(array))):
            return
        bad = ~np.isfinite(np.asarray(array))
    where = ""
    if rows and bad.ndim >= 2:
        rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
        where = f" (rows {rows[:10].tolist()}{' ...' if len(rows) > 10 else ''})"
    raise ValueError(f"{name} holds NaN or infinite {what}{where}: every value must be finite")


def check_image(image, name: str) -> jax.Array:
    """``[H, W, C]`` floating-point image as float32; raises naming ``name`` otherwise."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"{name} must be one image [H, W, C], got an array of shape {tuple(image.shape)}")
    if min(image.shape) < 1:
        raise ValueError(f"{name} must have positive sizes [H, W, C], got {tuple(image.shape)}")
    _check_float(image, name)
    image = jnp.asarray(image, jnp.float32)
    check_finite(image, name, "pixels", rows=False)
    return image


def check_images(images, name: str) -> np.ndarray:
    """``[N, H, W, C]`` floating-point images as a float32 numpy array (host side)."""
    images = np.asarray(images)
    if images.ndim != 4 or min(images.shape[1:]) < 1:
        raise ValueError(f"{name} must be a batch of images [N, H, W, C], got shape {tuple(images.shape)}")
    _check_float(images, name)
    images = images.astype(np.float32, copy=False)
    check_finite(images, name, "pixels")
    return images


def check_image_or_batch(images, name: str) -> tuple[jax.Array, bool]:
    """(``[K, H, W, C]`` float32, whether the input was a single ``[H, W, C]`` image)."""
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    if images.ndim == 3:
        return check_image(images, name)[None], True
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"{name} must be an image [H, W, C] or images [K, H, W, C], got shape {tuple(images.shape)}")
    _check_float(images, name)
    images = jnp.asarray(images, jnp.float32)
    check_finite(images, name, "pixels")
    return images, False


def check_reference_embeddings(reference_embeddings, name: str = "reference_embeddings") -> tuple[jax.Array, bool]:
    """Returns (``[K, D]`` float32, whether the input was a single ``[D]`` vector)."""
    if not hasattr(reference_embeddings, "shape"):
        reference_embeddings = np.asarray(reference_embeddings)
    if reference_embeddings.ndim not in (1, 2) or reference_embeddings.shape[-1] < 1:
        raise ValueError(f"{name} must be [D] or [K, D], got shape {tuple(reference_embeddings.shape)}")
    if reference_embeddings.ndim == 2 and reference_embeddings.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one embedding, got shape {tuple(reference_embeddings.shape)}")
    single = reference_embeddings.ndim == 1
    refs = jnp.asarray(reference_embeddings, jnp.float32)
    check_finite(refs[None] if single else refs, name)
    return (refs[None] if single else refs), single


def check_masks(masks, image: jax.Array, name: str = "masks") -> jax.Array:
    """``[N, H, W]`` masks matching the image's height and width."""
    if not hasattr(masks, "shape"):
        masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2] or masks.shape[0] < 1:
        raise ValueError(
            f"{name} must be [N, H, W] with N >= 1 and (H, W) = {tuple(image.shape[:2])}, got shape {tuple(masks.shape)}"
        )
    masks = jnp.asarray(masks, jnp.float32)
    check_finite(masks, name)
    return masks


def check_batch_size(batch_size) -> int:
    return check_positive_int(batch_size, "batch_size")


def check_key_or_masks(key, masks, what: str = "masks") -> None:
    if (key is None) == (masks is None):
        raise ValueError(f"pass exactly one of key= (to generate {what} on device) or {what}= (explicit)")
    if key is not None:
        check_key(key)


def check_key(key, name: str = "key", batch: bool = False) -> None:
    """Raises a TypeError unless ``key`` is one JAX PRNG key: a typed key (``jax.random.key(seed)``)
    or raw ``uint32[2]`` key data (``jax.random.PRNGKey(seed)``); ``batch``: or a 1-D stack of them."""
    if isinstance(key, jax.core.Tracer):
        return
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () and not (batch and key.ndim == 1):
            raise TypeError(f"{name} must be one PRNG key, got a batch of shape {key.shape}")
        return
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape[-1:] == (2,) and (
            key.ndim == 1 or batch and key.ndim == 2):
        return
    raise TypeError(f"{name} must be a PRNG key, e.g. jax.random.key(0), got "
                    f"{type(key).__name__}{' ' + repr(key) if isinstance(key, (int, float)) else ''}")


def check_positive_int(value, name: str, low: int = 1) -> int:
    """``value`` as an int if it is an integer (Python or NumPy) >= ``low``; bools are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype) -> str:
    """The name (``"float32"`` or ``"bfloat16"``) of the embedding forward's compute dtype; accepts the
    name or the dtype itself (``jnp.bfloat16``, ``np.dtype("float32")``)."""
    try:
        name = jnp.dtype(compute_dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    return name


def check_similarity(similarity: SimilarityFn) -> None:
    if not callable(similarity):
        raise TypeError(f"similarity must be callable ([..., D] x [..., D] -> [...]), got {similarity!r}")


def embedding_dim(embed_fn, image_shape, name: str = "query") -> int:
    """D of ``embed_fn`` on one image of ``image_shape`` (traced abstractly; no FLOPs).

    Call at trace time. Wraps a failure of ``embed_fn`` (typically a channel-count mismatch)
    into a ValueError that names the image argument.
    """
    probe = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    try:
        out = jax.eval_shape(embed_fn, probe)
    except Exception as err:  # the model's own error is kept as the cause
        raise ValueError(
            f"embed_fn cannot embed {name} of shape {tuple(image_shape)} (is the channel count C right?): {err}"
        ) from err
    if len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(f"embed_fn must map [B, H, W, C] to [B, D]; on a batch of 1 it returned shape {out.shape}")
    return int(out.shape[1])


def check_embedding_dims(embed_dim: int, reference_embeddings: jax.Array, name: str = "reference_embeddings") -> None:
    if reference_embeddings.shape[-1] != embed_dim:
        raise ValueError(
            f"{name} have D={reference_embeddings.shape[-1]} but embed_fn gives D={embed_dim} embeddings"
        )
