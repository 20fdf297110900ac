"""Your own similarity model: any embedding function, with its input size and normalisation.

Everything in the library explains a pure ``embed_fn(images [B, H, W, 3]) -> [B, D]``. A
``SimilarityModel`` adds what the experiments need to feed it: the square input size, the
normalisation of uint8 pixels, and (for the library's own pooled models) the Flax module and
variables that the exact correspondences use. Build one with an adapter:

- ``from_linen(module, variables, ...)``: a Flax linen module with its variables;
- ``from_nnx(module, ...)``: a Flax NNX module, split into a graph and its state, so the weights
  travel through ``jit`` as arguments (new weights of the same shapes reuse compiled programs);
- ``from_function(fn, params, ...)``: a plain JAX function ``fn(params, images)`` (or
  ``fn(images)`` without params);
- ``torchvision_resnet(weights, arch=..., stages=...)``: an ImageNet-pretrained torchvision
  ResNet (a ``.pth``, ``.safetensors`` or ``.npz`` file you downloaded), globally average-pooled.

The experiments take ``--model=package.module:factory``, a function of no arguments returning a
``SimilarityModel`` (``load_factory``); ``check_embeddings`` refuses a model whose output is not
``[B, D]`` finite floats before any long work starts.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from simexplain_jax.imageops import IMAGENET_MEAN, IMAGENET_STD
from simexplain_jax.models.embedding import EmbeddingNet, embed_fn
from simexplain_jax.models.factory import backbone
from simexplain_jax.models.torchvision_import import load_torchvision_resnet

ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclasses.dataclass(frozen=True)
class SimilarityModel:
    """An embedding model as the experiments use it.

    Attributes:
      embed_fn: ``images [B, H, W, 3]`` (normalised float32) ``-> [B, D]``; a
        ``jax.tree_util.Partial`` (or another callable pytree) keeps the weights traced.
      image_size: the square input side the model takes.
      mean: per-channel mean of pixels scaled to [0, 1], subtracted before ``embed_fn``.
      std: per-channel standard deviation, divided after subtracting ``mean``.
      name: what the model is, for messages and results.
      module: a Flax linen module, with ``variables``, when the model is one (the exact pooled
        correspondences use it when it is an ``EmbeddingNet``); None otherwise.
      variables: the module's variables.
    """

    embed_fn: Callable
    image_size: int
    mean: tuple = tuple(float(v) for v in IMAGENET_MEAN)
    std: tuple = tuple(float(v) for v in IMAGENET_STD)
    name: str = "model"
    module: Optional[nn.Module] = None
    variables: Any = None

    def __post_init__(self):
        if not callable(self.embed_fn):
            raise TypeError(f"embed_fn must be callable, got {type(self.embed_fn).__name__}")
        if not isinstance(self.image_size, (int, np.integer)) or isinstance(self.image_size, bool) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        for field in ("mean", "std"):
            values = np.asarray(getattr(self, field), np.float64)
            if values.shape != (3,) or not np.all(np.isfinite(values)):
                raise ValueError(f"{field} must be 3 finite numbers (R, G, B, pixels scaled to [0, 1]), "
                                 f"got {getattr(self, field)!r}")
            object.__setattr__(self, field, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def normalize(self, images) -> np.ndarray:
        """uint8 ``[..., H, W, 3]`` -> float32, ``(x / 255 - mean) / std``."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return ((np.asarray(images, np.float32) / 255.0) - mean) / std

    def same_input(self, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> bool:
        """Whether images of side ``image_size`` normalised with ``mean`` and ``std`` are what the
        model takes as they are."""
        return (int(image_size) == self.image_size and np.allclose(self.mean, mean, rtol=0, atol=1e-7)
                and np.allclose(self.std, std, rtol=0, atol=1e-7))

    def embed_fn_for(self, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
        """``embed_fn`` for images prepared otherwise: square, of side ``image_size``, normalised
        with ``mean`` and ``std`` (a dataset's images, e.g. the library's ImageNet-normalised ones).

        Each batch is renormalised to the model's ``mean`` and ``std`` and resized (linear,
        antialiased) to its ``image_size``; ``embed_fn`` itself when nothing differs. The result
        is a ``jax.tree_util.Partial`` whose weights stay traced.

        Args:
          image_size: the side of the images that will be passed.
          mean: their per-channel mean (pixels in [0, 1]).
          std: their per-channel standard deviation.

        Returns:
          ``images [B, image_size, image_size, 3] -> [B, D]``.
        """
        if self.same_input(image_size, mean, std):
            return self.embed_fn
        data_mean, data_std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        own_mean, own_std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        # x_data = (p - m_data) / s_data and x_own = (p - m_own) / s_own, so x_own = x_data * scale + shift
        scale, shift = data_std / own_std, (data_mean - own_mean) / own_std
        return Partial(_Renormalize(self.image_size), self.embed_fn, jnp.asarray(scale), jnp.asarray(shift))


@dataclasses.dataclass(frozen=True)
class _Renormalize:
    """``embed_fn(resize(images * scale + shift))``, resized only when the side differs (static)."""
    image_size: int

    def __call__(self, embed_fn, scale, shift, images):
        images = images * scale + shift
        if images.shape[1:3] != (self.image_size, self.image_size):
            images = jax.image.resize(images, (images.shape[0], self.image_size, self.image_size, images.shape[3]),
                                      "linear", antialias=True)
        return embed_fn(images)


@dataclasses.dataclass(frozen=True)
class _LinenApply:
    module: nn.Module
    method: Optional[str]
    kwargs: tuple

    def __call__(self, variables, images):
        method = getattr(type(self.module), self.method) if self.method else None
        return self.module.apply(variables, images, method=method, **dict(self.kwargs))


def from_linen(module: nn.Module, variables, *, image_size: int, method: Optional[str] = None,
               apply_kwargs: Optional[dict] = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               name: str = "") -> SimilarityModel:
    """A Flax linen module with its variables.

    Args:
      module: the module; ``module.apply(variables, images, **apply_kwargs)`` must give ``[B, D]``.
      variables: its variables (``{"params": ..., "batch_stats": ...}``).
      image_size: the square input side.
      method: the name of the module's method to apply (None: ``__call__``).
      apply_kwargs: keyword arguments of every call, e.g. ``{"train": False}`` (hashable values).
      mean: per-channel mean (pixels in [0, 1]).
      std: per-channel standard deviation.
      name: for messages (default: the module's class).

    Returns:
      The ``SimilarityModel``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen needs a flax.linen Module, got {type(module).__name__}")
    if method is not None and not callable(getattr(type(module), method, None)):
        raise ValueError(f"{type(module).__name__} has no method {method!r}")
    apply = _LinenApply(module, method, tuple(sorted((apply_kwargs or {}).items())))
    return SimilarityModel(Partial(apply, variables), image_size, mean, std, name or type(module).__name__,
                           module=module, variables=variables)


@dataclasses.dataclass(frozen=True)
class _NnxApply:
    graphdef: Any

    def __call__(self, state, images):
        from flax import nnx

        return nnx.merge(self.graphdef, state)(images)


def from_nnx(module, *, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, name: str = "") -> SimilarityModel:
    """A Flax NNX module, called as ``module(images) -> [B, D]``.

    The module is switched to evaluation mode (``module.eval()``: batch norm uses its running
    statistics, dropout is off) and split into its graph definition and its state; the state
    travels through ``jit`` as an argument, so another module of the same structure with other
    weights reuses the compiled programs.

    Args:
      module: an ``nnx.Module``.
      image_size: the square input side.
      mean: per-channel mean (pixels in [0, 1]).
      std: per-channel standard deviation.
      name: for messages (default: the module's class).

    Returns:
      The ``SimilarityModel``.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx needs a flax.nnx Module, got {type(module).__name__}")
    module.eval()
    graphdef, state = nnx.split(module)
    return SimilarityModel(Partial(_NnxApply(graphdef), state), image_size, mean, std, name or type(module).__name__)


def from_function(fn: Callable, params=None, *, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  name: str = "") -> SimilarityModel:
    """A plain JAX function: ``fn(params, images) -> [B, D]``, or ``fn(images)`` when ``params`` is None.

    Args:
      fn: a function of JAX arrays (hashable: a module-level function, not a lambda made per call,
        so that compiled programs are reused).
      params: a pytree of arrays passed first (traced), or None.
      image_size: the square input side.
      mean: per-channel mean (pixels in [0, 1]).
      std: per-channel standard deviation.
      name: for messages (default: the function's name).

    Returns:
      The ``SimilarityModel``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    embed = Partial(fn) if params is None else Partial(fn, params)
    return SimilarityModel(embed, image_size, mean, std, name or getattr(fn, "__name__", "function"))


def torchvision_resnet(weights: str | os.PathLike, *, arch: str = "resnet18", stages: int = 4,
                       image_size: int = 224) -> SimilarityModel:
    """An ImageNet-pretrained torchvision ResNet as a similarity model, without training.

    The embedding is the global average pool of the last kept stage (``stages=3``: cut after
    layer3, the paper's similarity backbone), as an ``EmbeddingNet`` whose head is the identity,
    so the exact pooled correspondences apply. ImageNet normalisation.

    Args:
      weights: the state dict file (``.pth``, ``.safetensors`` or ``.npz``, torchvision's names).
      arch: one of ``ARCHS``.
      stages: how many of the four stages to keep (1..4).
      image_size: the input side (224 as in ImageNet training).

    Returns:
      The ``SimilarityModel``.

    Raises:
      ValueError: an unknown arch, or weights that do not fit it (the tensor named).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if not 1 <= stages <= 4:
        raise ValueError(f"stages must be in 1..4, got {stages}")
    net = backbone(arch, width=64, stages=stages)
    channels = 64 * 2 ** (stages - 1) * (4 if arch == "resnet50" else 1)
    model = EmbeddingNet(net, dim=channels, normalize=False)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables["params"]["head"] = {"kernel": np.eye(channels, dtype=np.float32),
                                   "bias": np.zeros(channels, np.float32)}
    try:
        variables = load_torchvision_resnet(variables, weights, prefix=("backbone",), strict=False)
    except ValueError as err:
        raise ValueError(f"{weights} does not fit a torchvision {arch} ({err})") from None
    _check_filled(variables, weights, arch)
    return SimilarityModel(embed_fn(model, variables), image_size, name=f"torchvision {arch}, {stages} stages",
                           module=model, variables=variables)


def _check_filled(variables, weights, arch) -> None:
    """Refuses weights that left the backbone's first convolution empty (not a torchvision ResNet)."""
    if not np.any(np.asarray(variables["params"]["backbone"]["conv1"]["kernel"])):
        raise ValueError(f"{weights} holds no torchvision ResNet weights (no conv1.weight) for {arch}")


def check_embeddings(model: SimilarityModel, batch: int = 2) -> int:
    """Runs ``model`` once on ``batch`` small random images and returns the embedding size ``D``.

    Raises:
      ValueError: an output that is not ``[batch, D]`` floats, or that holds NaN or infinite
        values, naming the model; the error the model itself raised, with its name, otherwise.
    """
    images = np.random.default_rng(0).integers(0, 256, (batch, model.image_size, model.image_size, 3), np.uint8)
    try:
        out = model.embed_fn(jnp.asarray(model.normalize(images)))
    except Exception as err:  # noqa: BLE001  (whatever the user's model raised, named)
        raise ValueError(f"model {model.name} failed on a [{batch}, {model.image_size}, {model.image_size}, 3] "
                         f"batch: {type(err).__name__}: {err}") from None
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or len(shape) != 2 or shape[0] != batch or shape[1] < 1 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"model {model.name} must return embeddings [B, D] of floats; for a "
                         f"[{batch}, {model.image_size}, {model.image_size}, 3] batch it returned "
                         f"{type(out).__name__} of shape {shape} and dtype {dtype}")
    if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError(f"model {model.name} returned NaN or infinite embeddings")
    return int(shape[1])


def load_factory(spec: str) -> SimilarityModel:
    """The ``SimilarityModel`` of ``"package.module:factory"``: the factory is imported and called
    with no arguments.

    Raises:
      ValueError: a malformed spec, a module or attribute that cannot be found, or a factory that
        does not return a ``SimilarityModel`` (each named).
    """
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(f"--model must be package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model={spec}: cannot import {module_name} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model={spec}: {module_name} has no function {attr}")
    model = factory()
    if not isinstance(model, SimilarityModel):
        raise ValueError(f"--model={spec}: {attr}() must return a simexplain_jax.models.SimilarityModel (from_linen, "
                         f"from_nnx, from_function or torchvision_resnet), got {type(model).__name__}")
    return model
