"""Import torchvision-format ResNet weights (a state dict the user downloaded) into the Flax ResNet.

Accepted files, none of which needs PyTorch: a ``.pth``/``.pt`` state dict (``torch.save``'s zip
archive, read by ``torch_zip`` with an unpickler that refuses anything but tensors and ordered
dicts), a ``.safetensors`` file, or an ``.npz`` holding the same names (``conv1.weight``,
``layer1.0.bn1.running_mean``, ``fc.weight``, ...). Nothing is ever downloaded.

Layout conversions: convolution kernels ``[O, I, kh, kw] -> [kh, kw, I, O]``, linear weights
``[O, I] -> [I, O]``; batch norm ``weight/bias`` go to params ``scale/bias`` and
``running_mean/running_var`` to ``batch_stats mean/var``.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import numpy as np
from flax.core import freeze, unfreeze

from simexplain_jax.models.torch_zip import read_torch_zip


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torchvision state dict as ``{name: float32 numpy array}``, read without PyTorch.

    Args:
      path: ``.pth`` / ``.pt`` (``torch.save``'s zip archive, read by ``torch_zip.read_torch_zip``,
        which refuses anything but tensors and ordered dicts), ``.safetensors`` or ``.npz``. A
        checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped, and a
        ``module.`` prefix (DataParallel) dropped.

    Returns:
      Every floating or integer tensor but ``num_batches_tracked``, as float32.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unknown suffix, or a file that is not what its suffix says (named).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not an .npz archive of arrays ({err})") from None
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a safetensors file ({err})") from None
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        state = read_torch_zip(path)
    else:
        raise ValueError(f"weights file {path}: unknown format {suffix!r}; use .pth/.pt (torch.save), .safetensors "
                         "or .npz")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): np.asarray(v, np.float32) for k, v in state.items()
            if isinstance(v, np.ndarray) and v.dtype != np.bool_ and not str(k).endswith("num_batches_tracked")}


def _flax_path(name: str) -> tuple[str, tuple[str, ...], str] | None:
    """torchvision name -> (collection, module path, leaf) in the Flax ResNet, or None to skip."""
    if name.endswith("num_batches_tracked"):
        return None
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(\w+)", name)
    if match:
        stage, block, module, leaf = match.groups()
        module = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(module, module)
        path = (f"layer{stage}_{block}", module)
    else:
        match = re.fullmatch(r"(conv1|bn1|fc)\.(\w+)", name)
        if not match:
            raise ValueError(f"unexpected parameter name {name!r} in a torchvision ResNet state dict")
        path, leaf = (match.group(1),), match.group(2)
    is_bn = path[-1].startswith("bn") or path[-1] == "downsample_bn"
    if is_bn:
        collection, leaf = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                            "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}[leaf]
    elif path[-1] == "fc":
        collection, leaf = "params", {"weight": "kernel", "bias": "bias"}[leaf]
    else:
        collection, leaf = "params", {"weight": "kernel"}[leaf]
    return collection, path, leaf


def _convert(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def load_torchvision_resnet(variables, state_dict: Mapping[str, np.ndarray] | str | os.PathLike,
                            prefix: Sequence[str] = (), strict: bool = False):
    """Returns ``variables`` with the ResNet weights of a torchvision state dict filled in.

    Args:
      variables: the Flax variables (``{'params': ..., 'batch_stats': ...}``) of a model holding
        a ``simexplain_jax.models.ResNet`` at ``prefix`` (e.g. ``("backbone",)`` in an
        ``EmbeddingNet``); its shapes decide what is loaded.
      state_dict: a mapping or a path (see ``read_state_dict``).
      strict: if True, every tensor must be used and every ResNet variable filled.
    Raises ValueError on a shape mismatch (naming the tensor), and, with ``strict``, on unused
    tensors or unfilled variables. Tensors of stages the model does not have (``stages=3``) and
    ``fc`` for a model without a classifier are skipped otherwise.
    """
    if not isinstance(state_dict, Mapping):
        state_dict = read_state_dict(state_dict)
    out = unfreeze(variables)
    filled, unused = set(), []
    for name, value in state_dict.items():
        target = _flax_path(name)
        if target is None:
            continue
        collection, path, leaf = target
        node = out.get(collection, {})
        for key in (*prefix, *path):
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None or leaf not in node:
            unused.append(name)
            continue
        converted = _convert(np.asarray(value, np.float32), leaf)
        if converted.shape != tuple(node[leaf].shape):
            raise ValueError(f"{name}: shape {tuple(np.shape(value))} converts to {converted.shape}, but the model "
                             f"expects {tuple(node[leaf].shape)} at {'/'.join((collection, *prefix, *path, leaf))}")
        node[leaf] = converted
        filled.add((collection, *path, leaf))
    if strict:
        expected = set()
        for collection in ("params", "batch_stats"):
            node = out.get(collection, {})
            for key in prefix:
                node = node.get(key, {})
            stack = [((), node)]
            while stack:
                path, n = stack.pop()
                for k, v in n.items():
                    stack.append(((*path, k), v)) if isinstance(v, dict) else expected.add((collection, *path, k))
        missing = expected - filled
        if unused or missing:
            raise ValueError(f"strict import: unused tensors {sorted(unused)[:5]}, unfilled variables "
                             f"{sorted('/'.join(m) for m in missing)[:5]}")
    return freeze(out) if not isinstance(variables, dict) else out
