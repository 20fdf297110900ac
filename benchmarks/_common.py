"""Helpers shared by the benchmarks: models with random weights, timing, JSON lines."""

from __future__ import annotations

import json
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from simexplain_jax.models import EmbeddingNet, ResNet18, SmallCNN, embed_fn


MODELS_HELP = "resnet18 (cut after layer3, the paper's), resnet18_full or small_cnn"


def define_model_flags(model: str, image_size: int, repeats: int | None = None,
                       repeats_help: str = "timed calls after warm-up (best is kept)") -> None:
    """The flags every throughput benchmark shares: ``--model``, ``--image_size`` and, when
    ``repeats`` is given, ``--repeats`` (defined in the benchmark's module, at import)."""
    from absl import flags

    flags.DEFINE_string("model", model, MODELS_HELP)
    flags.DEFINE_integer("image_size", image_size, "image side in pixels")
    if repeats is not None:
        flags.DEFINE_integer("repeats", repeats, repeats_help)


def make_model(model: str, image_size: int, dim: int = 64, seed: int = 0):
    """A randomly initialised EmbeddingNet and its variables (random batch-norm statistics)."""
    if model == "resnet18":
        net = EmbeddingNet(ResNet18(stages=3), dim)  # the paper's backbone: ResNet-18 cut after layer3
    elif model == "resnet18_full":
        net = EmbeddingNet(ResNet18(), dim)
    elif model == "small_cnn":
        net = EmbeddingNet(SmallCNN(), dim)
    else:
        raise ValueError(f"unknown model {model!r} (resnet18, resnet18_full, small_cnn)")
    variables = net.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
    variables = dict(variables, batch_stats=random_batch_stats(variables.get("batch_stats", {}), seed))
    return net, variables


def make_embed_fn(model: str, image_size: int, dim: int = 64, seed: int = 0):
    """A randomly initialised embedding model as a pure embed_fn (a jax.tree_util.Partial)."""
    return embed_fn(*make_model(model, image_size, dim, seed))


def random_batch_stats(batch_stats, seed: int = 0):
    """Batch-norm statistics drawn at random (means ~ N(0, 0.1^2), variances ~ U(0.5, 1.5)), so that
    inference-mode batch norm is not the identity it is at initialisation (means 0, variances 1)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(batch_stats)
    keys = jax.random.split(jax.random.key(seed + 1), max(len(leaves), 1))
    drawn = []
    for key, (path, leaf) in zip(keys, leaves):
        if str(getattr(path[-1], "key", path[-1])) == "var":
            drawn.append(jax.random.uniform(key, leaf.shape, leaf.dtype, 0.5, 1.5))
        else:
            drawn.append(0.1 * jax.random.normal(key, leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(tree, drawn)


def smooth_images(count: int, size: int, seed: int = 0, cell: int = 8):
    """``[count, size, size, 3]`` float32 random images made of smooth blobs (bilinear upsampling of
    ``size / cell`` square noise): unlike pixel noise, SLIC finds superpixels of them as in photos."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(count, -(-size // cell) + 1, -(-size // cell) + 1, 3)).astype(np.float32)
    return np.asarray(jax.image.resize(low, (count, size, size, 3), "bilinear"), np.float32)


def timed(fn, *args, repeats: int = 2, **kwargs):
    """Best wall-clock of ``repeats`` calls after one warm-up call (compilation excluded)."""
    jax.block_until_ready(fn(*args, **kwargs))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        best = min(best, time.perf_counter() - start)
    return best, out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; since the last reset_peak_rss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device": devices[0].device_kind,
        "num_devices": len(devices),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    sys.stdout.flush()
