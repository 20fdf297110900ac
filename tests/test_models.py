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
    maps = sx.saliency.rise(f, images[0], f(images[1:2])[0], key=jax.random.key(0), num_masks=16, grid_size=4)
    assert maps.shape == (32, 32) and np.all(np.isfinite(maps))


# --- torchvision weight import, against an independent forward pass in plain PyTorch -------------

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
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    reference = torch_resnet(torch, "basic", (2, 2, 2, 2))
    net = EmbeddingNet(ResNet18(stages=3), dim=8)
    variables = net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    loaded = load_torchvision_resnet(variables, state, prefix=("backbone",))  # layer4 and fc skipped
    np.testing.assert_allclose(loaded["params"]["backbone"]["conv1"]["kernel"],
                               state["conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="strict"):
        load_torchvision_resnet(variables, state, prefix=("backbone",), strict=True)
    state["conv1.weight"] = state["conv1.weight"][:32]
    with pytest.raises(ValueError, match="conv1.weight"):
        load_torchvision_resnet(variables, state, prefix=("backbone",))
    with pytest.raises(FileNotFoundError):
        load_torchvision_resnet(variables, tmp_path / "missing.npz")
