"""PyTorch's checkpoint format (``torch.save`` since PyTorch 1.6), read without PyTorch.

A ``.pth`` file is a zip archive: ``<name>/data.pkl`` (a pickle of the state dict), one file per
tensor storage in ``<name>/data/<key>`` and optionally ``<name>/byteorder``. The pickle refers to
storages through ``persistent_load`` and rebuilds tensors with ``torch._utils`` functions. This
reader runs the pickle with an unpickler that accepts exactly those functions, the storage types
and ``collections.OrderedDict``, and refuses every other global: a file that would run arbitrary
code when ``torch.load`` opens it without ``weights_only`` is refused here, naming what it asked
for. Tensors come back as NumPy arrays.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """What an allowed ``torch.<Type>Storage`` global unpickles to: its element dtype."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *_):
    """``torch._utils._rebuild_tensor_v2``: a strided view of a storage, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise pickle.UnpicklingError(f"a tensor with offset {offset}, size {size} and stride {stride}")
    if size and 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= len(storage):
            raise pickle.UnpicklingError(f"a tensor of size {size} and stride {stride} at offset {offset} reads past "
                                         f"its storage of {len(storage)} elements")
    elif not size and offset >= len(storage):
        raise pickle.UnpicklingError(f"a scalar at offset {offset} of a storage of {len(storage)} elements")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, *_):
    """``torch._utils._rebuild_parameter``: a parameter is its data."""
    return data


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}
_ALLOWED.update({("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str, byteorder: str):
        super().__init__(file)
        self.archive, self.prefix, self.path, self.byteorder = archive, prefix, path, byteorder
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{self.path} asks for {module}.{name}; only tensors and ordered dicts are "
                                         "read (a state dict), nothing that runs code")
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _, numel = pid
        key = str(key)
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"{self.path} has no storage {name}") from None
            dtype = storage_type.dtype.newbyteorder("<" if self.byteorder == "little" else ">")
            if len(raw) < int(numel) * dtype.itemsize:
                raise pickle.UnpicklingError(f"{self.path}: storage {name} holds {len(raw)} bytes, "
                                             f"{numel} elements need {int(numel) * dtype.itemsize}")
            array = np.frombuffer(raw, dtype, count=int(numel))
            self.storages[key] = array.astype(storage_type.dtype)  # native byte order, writable
        return self.storages[key]


def read_torch_zip(path: str | os.PathLike) -> dict:
    """The object a ``torch.save`` zip archive holds (a state dict), with tensors as NumPy arrays.

    Args:
      path: the ``.pth`` / ``.pt`` file.

    Returns:
      What was saved: usually an ``OrderedDict`` of name to array (or a dict holding one).

    Raises:
      ValueError: not a zip archive (PyTorch's format before 1.6, or another file), no
        ``data.pkl``, or a pickle that asks for anything but tensors and ordered dicts (the
        global it asked for is named).
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a PyTorch zip archive (torch.save since PyTorch 1.6); re-save it with "
                         "torch.save(state_dict, path), or convert it to .npz or .safetensors")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <name>/data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byte order {byteorder!r}")
        unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix, path, byteorder)
        try:
            return unpickler.load()
        except pickle.UnpicklingError as err:
            raise ValueError(str(err)) from None
        except (EOFError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"{path}: data.pkl is not a state dict pickle ({type(err).__name__}: {err})") from None
