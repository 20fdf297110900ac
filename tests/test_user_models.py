"""Your own model: linen, NNX and plain-function adapters, torchvision ResNets from weight files in
the formats users download (written here in their real layouts, no PyTorch), and the checks."""

import collections
import pickle
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import fresh_module
from flax import linen as nn

from simexplain_jax.models import (SimilarityModel, check_embeddings, from_function, from_linen, from_nnx,
                                   load_factory, read_state_dict, torchvision_resnet)
from simexplain_jax.imageops import normalize_images
from simexplain_jax.models.torch_zip import read_torch_zip
from test_models import np_resnet, torchvision_state_dict

# --- PyTorch's zip layout, written without PyTorch -------------------------------------------------
# torch.save writes <name>/data.pkl (protocol 2), whose tensors are torch._utils._rebuild_tensor_v2
# calls on storages named by persistent ids ("storage", torch.<T>Storage, key, location, numel), and
# each storage's raw little-endian bytes as <name>/data/<key>. The pickler below uses stand-in torch
# modules so that the pickle names exactly torch's globals.

STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
                 np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage"}


class Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).reshape(-1)


class Tensor:
    """A view into a Storage: ``offset``, ``size``, ``stride`` in elements, as a torch tensor is."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                         collections.OrderedDict())


def fake_torch(monkeypatch):
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only pickled by name
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def write_torch_zip(path, obj, monkeypatch, prefix="archive"):
    """``obj`` (holding Tensors) as torch.save writes it."""
    torch = fake_torch(monkeypatch)
    storages = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, Storage):
                storages[value.key] = value.array
                return ("storage", getattr(torch, STORAGE_NAMES[value.array.dtype]), value.key, "cpu",
                        value.array.size)
            return None

    import io

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", buffer.getvalue())
        archive.writestr(f"{prefix}/byteorder", "little")
        archive.writestr(f"{prefix}/version", "3\n")
        for key, array in storages.items():
            archive.writestr(f"{prefix}/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())


def state_dict_tensors(state):
    """``{name: array}`` as an OrderedDict of contiguous Tensors, one storage each (as a state dict)."""
    out = collections.OrderedDict()
    for i, (name, value) in enumerate(state.items()):
        value = np.asarray(value)
        strides = [int(np.prod(value.shape[k + 1:])) for k in range(value.ndim)]
        out[name] = Tensor(Storage(str(i), value), 0, value.shape, strides)
    return out


def test_the_pth_reader_rebuilds_views_dtypes_and_state_dict_metadata(tmp_path, monkeypatch):
    base = np.arange(24, dtype=np.float32)
    shared = Storage("0", base)
    state = collections.OrderedDict(
        whole=Tensor(shared, 0, (4, 6), (6, 1)),
        transposed=Tensor(shared, 0, (6, 4), (1, 6)),  # a non-contiguous view of the same storage
        offset=Tensor(shared, 6, (2, 3), (6, 2)),
        scalar=Tensor(Storage("1", np.array([7], np.int64)), 0, (), ()),
        half=Tensor(Storage("2", np.array([1.5, -2.25], np.float16)), 0, (2,), (1,)),
        bf16=Tensor(Storage("3", np.array([0.5, 3.0, -1.0], ml_dtypes.bfloat16)), 1, (2,), (1,)))
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # what nn.Module.state_dict() attaches
    write_torch_zip(tmp_path / "w.pth", state, monkeypatch, prefix="resnet18-f37072fd")
    got = read_torch_zip(tmp_path / "w.pth")
    assert list(got) == list(state) and got._metadata == {"": {"version": 1}}
    np.testing.assert_array_equal(got["whole"], base.reshape(4, 6))
    np.testing.assert_array_equal(got["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(got["offset"], base.reshape(4, 6)[1:3, ::2])
    assert got["scalar"].shape == () and got["scalar"] == 7 and got["scalar"].dtype == np.int64
    assert got["half"].dtype == np.float16 and got["half"].tolist() == [1.5, -2.25]
    assert got["bf16"].dtype == ml_dtypes.bfloat16 and got["bf16"].astype(np.float32).tolist() == [3.0, -1.0]
    # read_state_dict: float32, num_batches_tracked dropped, a {"state_dict": ...} wrapper and module. prefixes undone
    wrapped = {"state_dict": collections.OrderedDict(
        [("module.conv1.weight", state["whole"]), ("module.bn1.num_batches_tracked", state["scalar"])]), "epoch": 3}
    write_torch_zip(tmp_path / "ckpt.pt", wrapped, monkeypatch)
    loaded = read_state_dict(tmp_path / "ckpt.pt")
    assert list(loaded) == ["conv1.weight"] and loaded["conv1.weight"].dtype == np.float32


class Evil:
    def __reduce__(self):
        import os

        return os.system, ("echo owned",)


def test_the_pth_reader_refuses_code_and_old_formats(tmp_path, monkeypatch):
    write_torch_zip(tmp_path / "evil.pth", {"weight": Evil()}, monkeypatch)
    with pytest.raises(ValueError, match=r"evil.pth asks for posix.system; only tensors and ordered dicts are read"):
        read_state_dict(tmp_path / "evil.pth")
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}))  # not a zip: PyTorch < 1.6 or another file
    with pytest.raises(ValueError, match="legacy.pth is not a PyTorch zip archive"):
        read_state_dict(tmp_path / "legacy.pth")
    broken = Tensor(Storage("0", np.zeros(4, np.float32)), 2, (4,), (1,))  # reads past its storage
    write_torch_zip(tmp_path / "broken.pth", {"w": broken}, monkeypatch)
    with pytest.raises(ValueError, match="reads past its storage of 4 elements"):
        read_state_dict(tmp_path / "broken.pth")
    (tmp_path / "w.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown format '.onnx'; use .pth/.pt \(torch.save\), .safetensors or .npz"):
        read_state_dict(tmp_path / "w.onnx")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors is not a safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_a_torchvision_resnet_from_each_weight_format_matches_the_numpy_forward(tmp_path, monkeypatch):
    """ImageNet-layout ResNet-18 weights (written here under torchvision's names) give the same
    embedding from .pth, .safetensors and .npz: the global average pool of the kept stages, equal to
    a forward pass written in NumPy."""
    from safetensors.numpy import save_file

    state = torchvision_state_dict("basic", (2, 2, 2, 2), width=64, num_classes=1000)
    np.savez(tmp_path / "r18.npz", **state)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    write_torch_zip(tmp_path / "r18.pth", state_dict_tensors(state), monkeypatch)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    embeddings = {}
    for suffix in ("pth", "safetensors", "npz"):
        model = torchvision_resnet(tmp_path / f"r18.{suffix}", arch="resnet18", stages=2, image_size=32)
        assert check_embeddings(model) == 128 and model.image_size == 32
        embeddings[suffix] = np.asarray(model.embed_fn(model.normalize(images)))
    expected = np_resnet(state, model.normalize(images), "basic", (2, 2, 2, 2), stages=2).mean(axis=(1, 2))
    for suffix, got in embeddings.items():
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=suffix)
    # the pooled structure is kept: the exact correspondences of the library apply
    import simexplain_jax as sx

    pooled = sx.saliency.pooled_model(model.module, model.variables)
    pair = sx.saliency.pooled_pair(pooled, None, model.normalize(images[0]), model.normalize(images[1]))
    similarity = float(sx.similarity.cosine(embeddings["npz"][0], embeddings["npz"][1]))
    assert float(np.sum(pair.correspondence)) == pytest.approx(similarity, abs=1e-4)
    with pytest.raises(ValueError, match="arch must be one of"):
        torchvision_resnet(tmp_path / "r18.npz", arch="vgg16")
    with pytest.raises(ValueError, match=r"r18.npz does not fit a torchvision resnet50 \(layer1.0.conv1.weight: shape"):
        torchvision_resnet(tmp_path / "r18.npz", arch="resnet50", image_size=32)
    np.savez(tmp_path / "other.npz", **{"encoder.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="unexpected parameter name 'encoder.weight'"):
        torchvision_resnet(tmp_path / "other.npz", image_size=32)


class LinenEmbedder(nn.Module):
    dim: int = 8

    @nn.compact
    def __call__(self, images, scale: float = 1.0):
        x = nn.Conv(4, (3, 3), strides=2)(images)
        return scale * nn.Dense(self.dim)(jnp.mean(nn.relu(x), axis=(1, 2)))

    def project(self, images):
        return self(images)[:, :3]


def test_linen_adapter(tmp_path):
    module = LinenEmbedder()
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), np.uint8)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    model = from_linen(module, variables, image_size=16, apply_kwargs={"scale": 2.0}, mean=(0.5, 0.5, 0.5),
                       std=(0.25, 0.25, 0.25))
    x = (images / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(model.normalize(images), x, rtol=1e-6, atol=1e-6)  # float32 against float64
    np.testing.assert_allclose(model.embed_fn(model.normalize(images)), module.apply(variables, x, scale=2.0),
                               rtol=1e-5, atol=1e-6)
    assert check_embeddings(model) == 8 and model.name == "LinenEmbedder"
    assert check_embeddings(from_linen(module, variables, image_size=16, method="project")) == 3
    with pytest.raises(ValueError, match="LinenEmbedder has no method 'nope'"):
        from_linen(module, variables, image_size=16, method="nope")
    with pytest.raises(TypeError, match="from_linen needs a flax.linen Module"):
        from_linen(lambda x: x, variables, image_size=16)


def test_nnx_adapter_keeps_weights_traced():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), strides=2, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.head = nnx.Linear(4, 6, rngs=rngs)

        def __call__(self, images):
            return self.head(jnp.mean(nnx.relu(self.bn(self.conv(images))), axis=(1, 2)))

    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    first, second = Net(nnx.Rngs(0)), Net(nnx.Rngs(1))
    second.bn.mean[...] = second.bn.mean[...] + 0.3  # running statistics are used in evaluation mode
    models = [from_nnx(first, image_size=16), from_nnx(second, image_size=16)]
    for net, model in zip((first, second), models):
        assert net.bn.use_running_average  # switched to evaluation mode
        np.testing.assert_allclose(model.embed_fn(images), net(images), rtol=1e-5, atol=1e-6)
        assert check_embeddings(model) == 6
    traces = []

    @jax.jit
    def embed(fn, x):
        traces.append(1)
        return fn(x)

    a, b = (np.asarray(embed(m.embed_fn, images)) for m in models)
    assert len(traces) == 1 and not np.allclose(a, b)  # other weights, the same compiled program
    with pytest.raises(TypeError, match="from_nnx needs a flax.nnx Module"):
        from_nnx(LinenEmbedder(), image_size=16)


def plain_embedding(params, images):
    return jnp.tanh(jnp.mean(images, axis=(1, 2)) @ params["w"])


def test_function_adapter_and_the_output_checks():
    params = {"w": jnp.ones((3, 5))}
    model = from_function(plain_embedding, params, image_size=8)
    assert check_embeddings(model) == 5 and model.name == "plain_embedding"
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(model.embed_fn(x), plain_embedding(params, x), rtol=1e-6)
    assert check_embeddings(from_function(lambda images: images.mean(axis=(1, 2)), image_size=8)) == 3
    for fn, message in [(lambda im: im.mean(axis=(1, 2, 3)), r"must return embeddings \[B, D\] of floats.* shape \(2,\)"),
                        (lambda im: jnp.zeros((2, 4), jnp.int32), "dtype int32"),
                        (lambda im: jnp.zeros((1, 4)), r"shape \(1, 4\)"),
                        (lambda im: jnp.full((2, 4), jnp.nan), "returned NaN or infinite embeddings"),
                        (lambda im: im @ jnp.ones((4, 4)), "failed on a \\[2, 8, 8, 3\\] batch: TypeError")]:
        with pytest.raises(ValueError, match=message):
            check_embeddings(from_function(fn, image_size=8, name="mine"))
    for bad, message in [(dict(image_size=0), "image_size must be a positive integer"),
                         (dict(image_size=8, mean=(0.5, 0.5)), "mean must be 3 finite numbers"),
                         (dict(image_size=8, std=(1.0, 0.0, 1.0)), "std must be positive")]:
        with pytest.raises(ValueError, match=message):
            SimilarityModel(plain_embedding, **bad)


def test_model_factories_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import jax.numpy as jnp\n"
        "from simexplain_jax.models import from_function\n"
        "def embed(images):\n    return jnp.mean(images, axis=(1, 2))\n"
        "def good():\n    return from_function(embed, image_size=8, name='mean colour')\n"
        "def wrong():\n    return embed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh_module(monkeypatch, "my_models")
    assert load_factory("my_models:good").name == "mean colour"
    for spec, message in [("my_models", "must be package.module:factory"),
                          ("no_such_module:f", "cannot import no_such_module"),
                          ("my_models:missing", "my_models has no function missing"),
                          ("my_models:wrong", r"wrong\(\) must return a simexplain_jax.models.SimilarityModel")]:
        with pytest.raises(ValueError, match=message):
            load_factory(spec)


def _patch_embed(w, images):
    b, s = images.shape[0], images.shape[1]
    return images.reshape(b, s // 4, 4, s // 4, 4, 3).mean(axis=(2, 4)).reshape(b, -1) @ w


def test_embed_fn_for_renormalises_and_resizes_the_datasets_images():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(6 * 6 * 3, 5)), jnp.float32)
    model = from_function(_patch_embed, w, image_size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), np.uint8)
    data = jnp.asarray(normalize_images(pixels))  # the library's images: ImageNet-normalised, 32 px
    adapted = model.embed_fn_for(32)
    # written out: back to pixels, the model's normalisation, then resized to its side
    own = (np.asarray(pixels, np.float32) / 255.0 - np.asarray(model.mean)) / np.asarray(model.std)
    expected = _patch_embed(w, jax.image.resize(jnp.asarray(own, jnp.float32), (3, 24, 24, 3), "linear",
                                                antialias=True))
    np.testing.assert_allclose(adapted(data), expected, rtol=1e-5, atol=1e-5)
    # at its own size and normalisation nothing is adapted; at its size with other statistics only renormalised
    assert model.embed_fn_for(24, model.mean, model.std) is model.embed_fn
    assert model.same_input(24, model.mean, model.std) and not model.same_input(24)
    own24 = (np.asarray(pixels[:, :24, :24], np.float32) / 255.0 - np.asarray(model.mean)) / np.asarray(model.std)
    np.testing.assert_allclose(model.embed_fn_for(24)(normalize_images(pixels[:, :24, :24])),
                               _patch_embed(w, jnp.asarray(own24, jnp.float32)), rtol=1e-5, atol=1e-5)
    # the weights stay traced: two models of the same shapes through one jitted function trace once
    other = from_function(_patch_embed, w + 1.0, image_size=24, mean=model.mean, std=model.std)
    traces = []

    @jax.jit
    def embed(f, images):
        traces.append(1)
        return f(images)

    first, second = embed(model.embed_fn_for(32), data), embed(other.embed_fn_for(32), data)
    assert len(traces) == 1 and not np.allclose(first, second)
