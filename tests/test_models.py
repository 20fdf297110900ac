import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx
from simexplain_jax.models import (EmbeddingNet, ResNet18, ResNet34, ResNet50, SmallCNN, TypeAwareEmbedding,
                                   condition_embed_fn, embed_fn, load_torchvision_resnet)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("factory,expected", [(ResNet18, 11_689_512), (ResNet34, 21_797_672), (ResNet50, 25_557_032)])
def test_parameter_counts_match_torchvision(factory, expected):
    shapes = jax.eval_shape(factory(num_classes=1000).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert count(shapes["params"]) == expected


def test_cut_backbone_and_width():
    features = jax.eval_shape(lambda x: ResNet18(stages=3).init_with_output(jax.random.key(0), x)[0],
                              jnp.zeros((2, 112, 112, 3)))
    assert features.shape == (2, 7, 7, 256)
    slim = jax.eval_shape(ResNet18(width=16, stages=3).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert count(slim["params"]) < count(jax.eval_shape(ResNet18(stages=3).init, jax.random.key(0),
                                                        jnp.zeros((1, 32, 32, 3)))["params"]) / 10


def test_embeddings_are_unit_norm_and_batch_norm_is_inference_mode():
    net = EmbeddingNet(SmallCNN(), dim=16)
    variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    images = jax.random.normal(jax.random.key(1), (5, 32, 32, 3))
    f = embed_fn(net, variables)
    e = f(images)
    np.testing.assert_allclose(jnp.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f(images[:1]), e[:1], rtol=1e-5, atol=1e-6)  # no batch statistics at inference


def test_type_aware_embedding_equals_the_formula():
    model = TypeAwareEmbedding(SmallCNN(), num_conditions=4, dim=8)
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    variables = model.init(jax.random.key(0), images)
    general = np.asarray(model.apply(variables, images), np.float64)
    masks = np.asarray(variables["params"]["masks"], np.float64)
    every = np.asarray(model.apply(variables, jnp.asarray(general, jnp.float32),
                                   method=TypeAwareEmbedding.condition_embeddings))
    assert every.shape == (3, 4, 8)
    for i in range(3):
        for c in range(4):
            naive = np.maximum(masks[c], 0) * general[i]
            np.testing.assert_allclose(every[i, c], naive / np.linalg.norm(naive), rtol=1e-5, atol=1e-6)
    conditions = jnp.array([2, 0, 3])
    chosen = model.apply(variables, images, conditions, method=TypeAwareEmbedding.embed)
    np.testing.assert_allclose(chosen, every[np.arange(3), conditions], rtol=1e-5, atol=1e-6)
    f = condition_embed_fn(model, variables, 3)
    np.testing.assert_allclose(f(images), every[:, 3], rtol=1e-5, atol=1e-6)
    # a condition embed_fn drives the saliency engine like any other
    maps = sx.saliency.rise(f, images[0], f(images[1:2])[0], key=jax.random.key(0), num_masks=16, grid_size=4).maps
    assert maps.shape == (32, 32) and np.all(np.isfinite(maps))


# --- torchvision weight import, against a forward pass written in plain NumPy --------------------
# The reference below is the torchvision ResNet written out from the layer definitions (NCHW
# activations, OIHW kernels, eval-mode batch norm with eps 1e-5); it runs in float64 and needs no
# PyTorch. The state dicts carry torchvision's exact tensor names.

def np_conv2d(x, w, stride=1, padding=0):
    """``x [N, C, H, W]`` cross-correlated with ``w [O, C, kh, kw]`` (PyTorch's Conv2d, no bias)."""
    kh, kw = w.shape[2:]
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)  # sum over c, i, j


def np_batch_norm(x, state, name, eps=1e-5):
    mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
    scale, shift = state[f"{name}.weight"], state[f"{name}.bias"]
    c = (slice(None), None, None)
    return (x - mean[c]) / np.sqrt(var[c] + eps) * scale[c] + shift[c]


def np_max_pool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-2, -1))


def relu(x):
    return np.maximum(x, 0.0)


def np_block(x, state, name, block, stride):
    if block == "basic":
        y = relu(np_batch_norm(np_conv2d(x, state[f"{name}.conv1.weight"], stride, 1), state, f"{name}.bn1"))
        y = np_batch_norm(np_conv2d(y, state[f"{name}.conv2.weight"], 1, 1), state, f"{name}.bn2")
    else:  # bottleneck: the stride sits on the 3x3 convolution (torchvision's "v1.5")
        y = relu(np_batch_norm(np_conv2d(x, state[f"{name}.conv1.weight"]), state, f"{name}.bn1"))
        y = relu(np_batch_norm(np_conv2d(y, state[f"{name}.conv2.weight"], stride, 1), state, f"{name}.bn2"))
        y = np_batch_norm(np_conv2d(y, state[f"{name}.conv3.weight"]), state, f"{name}.bn3")
    if f"{name}.downsample.0.weight" in state:
        x = np_batch_norm(np_conv2d(x, state[f"{name}.downsample.0.weight"], stride), state, f"{name}.downsample.1")
    return relu(y + x)


def np_resnet(state, images_nhwc, block, layers, stages=4, classify=False):
    """The torchvision forward pass; returns the last kept stage's map (NHWC) or the logits."""
    x = np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)
    state = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = np_max_pool_3x3_s2_p1(relu(np_batch_norm(np_conv2d(x, state["conv1.weight"], 2, 3), state, "bn1")))
    for i, n in enumerate(layers[:stages]):
        for j in range(n):
            x = np_block(x, state, f"layer{i + 1}.{j}", block, 2 if (i > 0 and j == 0) else 1)
    if classify:
        return x.mean(axis=(2, 3)) @ state["fc.weight"].T + state["fc.bias"]
    return x.transpose(0, 2, 3, 1)


def torchvision_state_dict(block, layers, width=64, num_classes=10, seed=0):
    """Random weights under torchvision's names (``layer2.0.downsample.1.running_var``, ...),
    with non-trivial batch-norm statistics and affine terms, as float32 NumPy arrays."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = rng.normal(0.0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))

    def bn(name, c):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
        state[f"{name}.bias"] = rng.uniform(-0.2, 0.2, c)
        state[f"{name}.running_mean"] = rng.uniform(-0.2, 0.2, c)
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c)
        state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    cin = width
    for i, n in enumerate(layers):
        planes = width * 2**i
        for j in range(n):
            name, stride = f"layer{i + 1}.{j}", 2 if (i > 0 and j == 0) else 1
            if block == "basic":
                conv(f"{name}.conv1", planes, cin, 3), bn(f"{name}.bn1", planes)
                conv(f"{name}.conv2", planes, planes, 3), bn(f"{name}.bn2", planes)
                cout = planes
            else:
                conv(f"{name}.conv1", planes, cin, 1), bn(f"{name}.bn1", planes)
                conv(f"{name}.conv2", planes, planes, 3), bn(f"{name}.bn2", planes)
                conv(f"{name}.conv3", 4 * planes, planes, 1), bn(f"{name}.bn3", 4 * planes)
                cout = 4 * planes
            if stride != 1 or cin != cout:
                conv(f"{name}.downsample.0", cout, cin, 1), bn(f"{name}.downsample.1", cout)
            cin = cout
    state["fc.weight"] = rng.normal(0.0, 1.0 / np.sqrt(cin), (num_classes, cin))
    state["fc.bias"] = rng.uniform(-0.1, 0.1, num_classes)
    return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in state.items()}


def zero_variables(model, size):
    """The model's variables as zeros, from shapes alone (eager init is slow, and the import fills them all)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_numpy_state_dict_has_torchvision_names():
    state = torchvision_state_dict("basic", (2, 2, 2, 2))
    for name, shape in [("conv1.weight", (64, 3, 7, 7)), ("bn1.running_mean", (64,)),
                        ("layer1.0.conv1.weight", (64, 64, 3, 3)), ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
                        ("layer2.0.downsample.1.running_var", (128,)), ("layer4.1.bn2.bias", (512,)),
                        ("fc.weight", (10, 512))]:
        assert state[name].shape == shape, name
    assert "layer1.0.downsample.0.weight" not in state  # no projection where shapes already match
    # torchvision's ResNet-18 has 11,689,512 parameters with 1000 classes; 10 classes drop 990 * 513
    params = sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params == 11_689_512 - 990 * 513


@pytest.mark.parametrize("factory,block,layers,width", [(ResNet18, "basic", (2, 2, 2, 2), 8),
                                                        (ResNet50, "bottleneck", (3, 4, 6, 3), 4)])
def test_torchvision_import_matches_numpy_forward(tmp_path, factory, block, layers, width):
    state = torchvision_state_dict(block, layers, width=width, num_classes=7)
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    model = factory(width=width, num_classes=7)
    variables = zero_variables(model, 32)
    loaded = load_torchvision_resnet(variables, state, strict=True)
    got = np.asarray(model.apply(loaded, images, train=False))
    np.testing.assert_allclose(got, np_resnet(state, images, block, layers, classify=True), rtol=1e-4, atol=1e-4)
    np.savez(tmp_path / "weights.npz", **state)  # the same names from an .npz file
    jax.tree.map(np.testing.assert_array_equal, load_torchvision_resnet(variables, tmp_path / "weights.npz"), loaded)


def test_torchvision_import_into_the_cut_backbone_matches_numpy_features():
    state = torchvision_state_dict("basic", (2, 2, 2, 2), width=8)  # a whole checkpoint, layer4 and fc included
    images = np.random.default_rng(2).normal(size=(3, 48, 48, 3)).astype(np.float32)
    model = ResNet18(width=8, stages=3)
    variables = zero_variables(model, 48)
    loaded = load_torchvision_resnet(variables, state)  # layer4 and fc are skipped
    # the cut model uses every tensor of conv1, bn1 and layer1..layer3 and nothing else
    kept = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    jax.tree.map(np.testing.assert_array_equal, load_torchvision_resnet(variables, kept, strict=True), loaded)
    got = np.asarray(model.apply(loaded, images, train=False))
    expected = np_resnet(state, images, "basic", (2, 2, 2, 2), stages=3)
    assert got.shape == expected.shape == (3, 3, 3, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# --- the same import against PyTorch itself, where it is installed (Python 3.11 test venvs) --------


def torch_resnet(torch, block: str, layers, num_classes=1000):
    nn = torch.nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.downsample = None
            if stride != 1 or cin != c:
                self.downsample = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottle(nn.Module):
        expansion = 4

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * c)
            self.downsample = None
            if stride != 1 or cin != 4 * c:
                self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * c, 1, stride, bias=False), nn.BatchNorm2d(4 * c))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    Block = Basic if block == "basic" else Bottle

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, n in enumerate(layers):
                blocks = []
                for j in range(n):
                    blocks.append(Block(cin, 64 * 2**i, 2 if (i > 0 and j == 0) else 1))
                    cin = 64 * 2**i * Block.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for i in range(len(layers)):
                x = getattr(self, f"layer{i + 1}")(x)
            return self.fc(x.mean(dim=(2, 3)))

    net = Net()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics and affine terms
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    return net.eval()


@pytest.mark.parametrize("factory,block,layers", [(ResNet18, "basic", (2, 2, 2, 2)), (ResNet50, "bottleneck", (3, 4, 6, 3))])
def test_torchvision_import_matches_plain_torch(tmp_path, factory, block, layers):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (make test installs torch==2.13.0 on Python 3.11)")
    torch.manual_seed(0)
    reference = torch_resnet(torch, block, layers, num_classes=10)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = factory(num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    loaded = load_torchvision_resnet(variables, path, strict=True)
    got = model.apply(loaded, images, train=False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the same names in an .npz load without PyTorch and give the same weights
    np.savez(tmp_path / "weights.npz", **{k: v.numpy() for k, v in reference.state_dict().items()})
    from_npz = load_torchvision_resnet(variables, tmp_path / "weights.npz", strict=True)
    jax.tree.map(np.testing.assert_array_equal, from_npz, loaded)


def test_import_into_a_cut_embedding_backbone_and_errors(tmp_path):
    state = torchvision_state_dict("basic", (2, 2, 2, 2), width=8)
    variables = zero_variables(EmbeddingNet(ResNet18(width=8, stages=3), dim=8), 32)
    loaded = load_torchvision_resnet(variables, state, prefix=("backbone",))  # layer4 and fc skipped
    np.testing.assert_allclose(loaded["params"]["backbone"]["conv1"]["kernel"],
                               state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_allclose(loaded["batch_stats"]["backbone"]["layer2_0"]["downsample_bn"]["var"],
                               state["layer2.0.downsample.1.running_var"])
    with pytest.raises(ValueError, match="strict"):
        load_torchvision_resnet(variables, state, prefix=("backbone",), strict=True)
    state["conv1.weight"] = state["conv1.weight"][:4]
    with pytest.raises(ValueError, match="conv1.weight"):
        load_torchvision_resnet(variables, state, prefix=("backbone",))
    with pytest.raises(ValueError, match="head.weight"):
        load_torchvision_resnet(variables, {"head.weight": np.zeros(1)}, prefix=("backbone",))
    with pytest.raises(FileNotFoundError):
        load_torchvision_resnet(variables, tmp_path / "missing.npz")
