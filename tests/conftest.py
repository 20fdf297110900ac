"""Fixtures: small analytic models whose saliency is known in closed form; 8 fake CPU devices; the
shapes/32px dataset, the runlocal similarity model and attribute predictors and the runlocal saliency
evaluation on one device, each made once per session (in-process).

The devices are set once here, before any test touches a backend, so sharded code is tested
in-process (``jax.devices()`` has 8 CPU devices; unsharded code runs on the first).

JAX's persistent compilation cache is on for the session, in ``.cache/jax-tests`` (or the folder
``SIMEXPLAIN_TEST_JAX_CACHE`` names; empty turns it off). Set through the environment too, so the
subprocesses of the tests share it: a program compiled once is read back by the other pytest
worker, by every command-line test (whose ``--compilation_cache`` defaults to it) and after
``jax.clear_caches()`` between modules, and a rerun of the suite starts warm.

The tests compile with most of XLA's optimisations off (``jax_disable_most_optimizations``, also
set for the subprocesses; an ``XLA_FLAGS`` that sets ``--xla_backend_optimization_level`` keeps
its own): the suite compiles thousands of small programs and runs most for milliseconds, so the
optimisation costs more than it saves. The session's similarity training compiles with them
(``compiled_with_optimizations``), as the command line compiles it. The
programs compute the same values to float rounding, and every assertion holds as it does at the
default level.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JAX_CACHE = os.environ.get("SIMEXPLAIN_TEST_JAX_CACHE", os.path.join(ROOT, ".cache", "jax-tests"))
if JAX_CACHE:
    # No size limit: with one, jax locks the folder (the filelock package) around every read and write, which
    # slowed the two pytest workers more than the cache saved. Without the lock, a process that reads an entry
    # while another writes it gets a warning and compiles the program itself.
    settings = dict(jax_compilation_cache_dir=JAX_CACHE, jax_persistent_cache_min_compile_time_secs=0,
                    jax_persistent_cache_min_entry_size_bytes=-1, jax_compilation_cache_max_size=-1)
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
        jax.config.update(name, value)
else:  # and off for the command lines run by the tests, which would keep one in ~/.cache (--compilation_cache)
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    jax.config.update("jax_enable_compilation_cache", False)

LEVEL_GIVEN = "--xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")  # the caller chose a level
if not LEVEL_GIVEN:
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # for the subprocesses
    jax.config.update("jax_disable_most_optimizations", True)  # read at each compilation

jax.config.update("jax_num_cpu_devices", 8)
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # the subprocesses compile as this process does
jax.config.update("jax_default_matmul_precision", "highest")


SALIENCY = "experiments/configs/saliency_shapes.py:runlocal"  # the saliency evaluation's runlocal config

SESSION_FIXTURES = {"shapes32_dir", "trained_similarity", "trained_attributes", "saliency_on_one_device"}
# The modules whose tests use them: under ``make test`` (``pytest -n 2``, pytest-xdist) one worker
# runs these modules, so the dataset and the models are built once, while the other runs the rest.
SESSION_MODULES = {f"tests/{name}.py" for name in (
    "test_correspondence_eval", "test_data_shapes", "test_experiments", "test_experiments_scale",
    "test_explain_command", "test_own_model_stages", "test_reference_files")}


def pytest_collection_modifyitems(config, items):
    """Refuses a test that uses a session fixture from a module outside SESSION_MODULES (under
    ``-n 2`` it would build the dataset and train the models a second time)."""
    for item in items:
        if SESSION_FIXTURES & set(item.fixturenames) and item.nodeid.split("::")[0] not in SESSION_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses a session fixture: add its module to SESSION_MODULES "
                                    "in tests/conftest.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist load``, except that SESSION_MODULES are one unit of work, handed out first."""
    from xdist.scheduler import LoadScopeScheduling

    class SessionModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "session" if nodeid.split("::")[0] in SESSION_MODULES else nodeid

    return SessionModulesTogether(config, log)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module, so that one long pytest process does
    not accumulate thousands of executables (each holds memory mappings of its code)."""
    yield
    jax.clear_caches()


def box_mask(size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    ymin, xmin, ymax, xmax = box
    m = np.zeros((size, size), bool)
    m[ymin:ymax, xmin:xmax] = True
    return m


class RegionModel:
    """An embedding that sees only one box of the image.

    ``embed(x) = [fraction of the box's channel-0 mass kept - 0.5, 0.1]``: its cosine with the
    reference direction ``[1, 0]`` is near +1 when most of the box is kept and near -1 when it
    is removed, and nothing outside the box can change it.
    """

    def __init__(self, size: int = 32, box=(4, 4, 28, 28)):
        self.size = size
        self.region = box_mask(size, box)
        self._weights = jnp.asarray(self.region, jnp.float32) / self.region.sum()
        self.reference = jnp.array([1.0, 0.0])
        self.query = jnp.ones((size, size, 3), jnp.float32)

    def __call__(self, images):
        kept = jnp.sum(images[..., 0] * self._weights, axis=(1, 2))
        return jnp.stack([kept - 0.5, jnp.full_like(kept, 0.1)], axis=-1)


@pytest.fixture
def region_model():
    return RegionModel()


def linear_embed_fn(size: int, channels: int = 3, dim: int = 8, seed: int = 0):
    """A random linear embedding ``[B, H, W, C] -> [B, D]`` (plain function) and its weights."""
    w = jax.random.normal(jax.random.key(seed), (size * size * channels, dim)) / np.sqrt(size * size * channels)
    w = w + 0.05  # a shared component so that similarities vary around a positive value

    def embed(images):
        return images.reshape(images.shape[0], -1) @ w

    return embed, np.asarray(w)


@pytest.fixture
def linear_model():
    return linear_embed_fn(16)


# Small options for every method, shared with ``saliency_problem`` by the saliency tests whose subject
# is not an option's value (test_explain_pairs, test_parallel, test_methods, test_reliability, ...): the
# same model, option values and shapes make the same programs, which the persistent cache compiles once.
# RISE runs the i.i.d. sampler here: the default orthogonal sampler's random draws double the
# compilation of a RISE program (benchmarks/RESULTS.md, "Test suite"), and every sampler gives mask i
# from (key, i) alone, so a map does not depend on how its masks are split over chunks and devices
# for any of them (test_samplers.py checks the samplers, the block samplers over chunks and devices).
SALIENCY_CONFIGS = {
    "rise": dict(num_masks=40, grid_size=4, sampler="iid"),
    "rise_variable": dict(num_masks=40, grid_size=4, num_reference_masks=3, sampler="iid"),
    "sliding_window": dict(window=6, stride=4, padding=2),
    "sliding_window_variable": dict(window=6, stride=4, padding=2, reference_window=8, reference_stride=8),
    "lime": dict(num_samples=40, num_segments=8),
    "lime_variable": dict(num_samples=40, num_segments=8, num_reference_masks=3),
    "perturbation": dict(num_steps=5),
    "perturbation_variable": dict(num_steps=5),
    "gradient": {},
    "integrated_gradients": dict(num_steps=4),
    "random": {},
    "pooled_pair": {},
    "rise_pair": dict(num_masks=16, grid_size=4),
    "integrated_cross_jacobian": dict(num_steps=2, grid_size=4),
}


def _tanh_embed(w, images):
    return jnp.tanh(images.reshape(images.shape[0], -1) @ w)


@pytest.fixture(scope="session")
def saliency_problem():
    """A small non-linear embedding (``tanh(x W)``, a ``jax.tree_util.Partial`` whose weights are an
    argument of the programs, not a constant), 12 random 16-px images and 15 ragged pairs (11
    queries with one or two references each)."""
    w = jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8)) / 30 + 0.05
    embed = jax.tree_util.Partial(_tanh_embed, w)
    images = np.random.default_rng(0).normal(size=(12, 16, 16, 3)).astype(np.float32)
    pairs = np.array([[q, (q + 1 + k) % 12] for q in range(11) for k in range(1 + q % 2)])
    return embed, images, pairs


@pytest.fixture(scope="session")
def shapes32_dir(tmp_path_factory):
    """A TFDS data folder with shapes/32px built once per test session."""
    import tensorflow_datasets as tfds

    import simexplain_jax.data  # noqa: F401

    data_dir = str(tmp_path_factory.mktemp("tfds_shapes32"))
    tfds.builder("shapes/32px", data_dir=data_dir).download_and_prepare()
    return data_dir


@contextlib.contextmanager
def compiled_with_optimizations():
    """XLA's optimisations on for what compiles inside (the suite compiles with most of them off): for
    the session's similarity training, compiled as the command line compiles it (its 200 steps took
    32.8 s with them and 31.2 s without, from an empty compilation cache).

    The setting is not part of jit's in-memory cache key: a program compiled before would be reused
    inside, and one compiled inside reused after. The compiled programs are dropped on the way in
    and out, so the training compiles the same whatever ran before it in the process."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        jax.clear_caches()


def subprocess_env(devices=None):
    """The environment for a test's subprocess: this one's, with ``devices`` fake CPU devices (None:
    one, as a user's shell has) and the tests' compiler settings."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), **({"JAX_PLATFORMS": "cpu"} if devices else {}))


def run_module(module, *args, devices=None):
    """``python -m module ARGS`` from the repo root (``devices``: that many fake CPU devices). For the
    tests whose subject is the process boundary: the command line, several processes, a kill."""
    env = subprocess_env(devices)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def fresh_module(monkeypatch, name):
    """Makes the next ``import name`` load the module from ``sys.path`` again, and forgets it after the
    test: tests write their own ``my_models.py`` in their own folders, and one process runs many."""
    monkeypatch.setitem(sys.modules, name, None)  # recorded, so that teardown removes the entry
    del sys.modules[name]


def run_command_in_process(module, *args):
    """``python -m module ARGS`` in this process: absl parses ``ARGS`` into a new ``flags.FlagValues``
    with the module's ``define_flags`` and its ``main`` runs on them. Returns the exit status (0 when
    ``main`` returns). For a command line whose process boundary is not the subject; its
    subprocess form is tested once per entry point."""
    import importlib

    from absl import flags
    from absl import logging as absl_logging

    command = importlib.import_module(module)
    flag_values = flags.FlagValues()
    command.define_flags(flag_values)
    verbosity = absl_logging.get_verbosity()
    try:
        command.main(flag_values([module, *args]), flag_values)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        absl_logging.set_verbosity(verbosity)
    return 0


def stage_config(spec, **overrides):
    """The locked config ``spec`` (``experiments/configs/NAME.py[:ARG]``) with ``overrides`` set
    (nested dicts for nested fields)."""
    from experiments.stages import load_config, override

    return override(load_config(spec), overrides)


@pytest.fixture(scope="session")
def trained_similarity(tmp_path_factory, shapes32_dir):
    """The runlocal similarity model, trained once (in-process) for the session's experiment tests."""
    from experiments import train_similarity

    workdir = tmp_path_factory.mktemp("similarity")
    with compiled_with_optimizations():
        train_similarity.run(stage_config("experiments/configs/similarity_shapes.py:runlocal", data_dir=shapes32_dir),
                             str(workdir))
    return workdir


@pytest.fixture(scope="session")
def trained_attributes(tmp_path_factory, shapes32_dir, trained_similarity):
    """The runlocal attribute predictors (lambda 0 and 0.1), trained once for the session's experiment tests."""
    from experiments import train_attributes

    workdir = tmp_path_factory.mktemp("attributes")
    train_attributes.run(stage_config("experiments/configs/attributes_shapes.py:runlocal", data_dir=shapes32_dir,
                                      similarity_workdir=str(trained_similarity)), str(workdir))
    return workdir


@pytest.fixture(scope="session")
def saliency_on_one_device(tmp_path_factory, shapes32_dir, trained_similarity):
    """The runlocal saliency evaluation (every row) on one device, run once for the session's experiment
    tests: its workdir and the results ``run`` returned."""
    from experiments import saliency_eval

    workdir = tmp_path_factory.mktemp("saliency_one_device")
    summary = saliency_eval.run(stage_config(SALIENCY, data_dir=shapes32_dir, mesh_devices=1,
                                             similarity_workdir=str(trained_similarity)), str(workdir))
    return workdir, summary
