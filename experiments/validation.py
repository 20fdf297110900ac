"""The experiments' config checks, run at start: before any training, dataset build or write.

Each ``check_*_config`` raises a ValueError (FileNotFoundError for a missing file) that names the
config field and what it must be. The flag-defining experiment modules call them; tests call them
directly.
"""

from __future__ import annotations

import math
import os

import jax

import simexplain_jax as sx
from simexplain_jax import parallel
from simexplain_jax.data import reference_files
from simexplain_jax.imageops import normalized_color
from simexplain_jax.models.factory import BACKBONES
from simexplain_jax.models.user import ARCHS
from simexplain_jax.data.datasets import check_dataset
from simexplain_jax.train.triplet import MININGS

SPLITS = ("train", "validation", "test")


def number(value, name: str, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value > high or (
            value <= low if low_open else value < low):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"config.{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


def integer(value, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"config.{name} must be an integer >= {low}, got {value!r}")
    return value


def devices(value: int, name: str = "mesh_devices") -> None:
    """``config.<name>`` devices must be on this machine (0: all of them)."""
    available = jax.local_device_count()
    if value > available:
        raise ValueError(f"config.{name}={value} but this process sees {available} device(s) "
                         f"({jax.devices()[0].platform}); use at most {available}, or 0 for all")


def existing_file(path: str, name: str) -> None:
    if path and not os.path.exists(path):
        raise FileNotFoundError(f"config.{name} {path!r} does not exist")


def check_similarity_config(config) -> None:
    """train_similarity."""
    check_dataset(config.dataset, config.manual_dir)
    if config.model not in BACKBONES:
        raise ValueError(f"config.model must be one of {BACKBONES}, got {config.model!r}")
    if config.embedding_dim < 1:
        raise ValueError(f"config.embedding_dim must be >= 1, got {config.embedding_dim}")
    if config.batch_size < 2 or config.num_steps < 1:
        raise ValueError(f"need batch_size >= 2 and num_steps >= 1, got {config.batch_size}, {config.num_steps}")
    if config.mining not in MININGS:
        raise ValueError(f"config.mining must be one of {MININGS}, got {config.mining!r}")
    number(config.learning_rate, "learning_rate", 0.0, low_open=True)
    number(config.lr_decay_rate, "lr_decay_rate", 0.0, 1.0, low_open=True)
    integer(config.lr_decay_steps, "lr_decay_steps")
    number(config.margin, "margin", 0.0)
    integer(config.eval_every, "eval_every")
    integer(config.patience, "patience")
    integer(config.checkpoint_every, "checkpoint_every")
    integer(config.num_eval_pairs, "num_eval_pairs", 2)
    integer(config.width, "width", 1)
    integer(config.stages, "stages", 1)
    existing_file(config.init_weights, "init_weights")
    integer(config.seed, "seed")
    parallel.check_data_parallel(config.mesh_devices, config.batch_size, config.param_sharding)
    devices(config.mesh_devices)
    if config.test_pairs:  # a packaged pair list ("reference:NAME") or an existing file
        reference_files.check_pair_file(config.test_pairs, "config.test_pairs")


def check_similarity_model(config) -> None:
    """A model of your own (``experiments.similarity_source``): refuses a ``similarity_model`` group
    that names two models, a bad ``arch`` or ``stages``, a missing weights file, or a model of your
    own together with ``similarity_workdir``."""
    group = config.get("similarity_model")
    if group is None:
        return
    if group.factory and group.torchvision_weights:
        raise ValueError("config.similarity_model names two models: give factory or torchvision_weights, not both")
    if group.arch not in ARCHS:
        raise ValueError(f"config.similarity_model.arch must be one of {ARCHS}, got {group.arch!r}")
    if isinstance(group.stages, bool) or not isinstance(group.stages, int) or not 1 <= group.stages <= 4:
        raise ValueError(f"config.similarity_model.stages must be an integer in 1..4, got {group.stages!r}")
    if group.torchvision_weights and not os.path.isfile(group.torchvision_weights):
        raise FileNotFoundError(f"config.similarity_model.torchvision_weights {group.torchvision_weights!r} does not exist")
    if group.factory and ":" not in group.factory:
        raise ValueError(f"config.similarity_model.factory must be package.module:factory, got {group.factory!r}")
    if (group.factory or group.torchvision_weights) and config.get("similarity_workdir"):
        raise ValueError("config.similarity_model and config.similarity_workdir both name a similarity model: "
                         "give one")


def sequence(value, name: str) -> list:
    """``value`` (a list or tuple, as configs hold them) as a list; a string or anything else raises
    naming the field (a comma string is no longer split by hand)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"config.{name} must be a list or tuple, got {value!r}")
    return list(value)


def parse_rows(rows) -> list[tuple[str, str, str]]:
    """``("rise:fixed", "rise:variable", ...)`` -> [(method, reference, saliency method name)]; at least one."""
    parsed = []
    for row in sequence(rows, "rows"):
        method, _, reference = str(row).strip().partition(":")
        name = method if reference == "fixed" else f"{method}_{reference}"
        if reference not in ("fixed", "variable") or name not in sx.saliency.METHODS:
            raise ValueError(f"bad row {row!r}: use METHOD:fixed or METHOD:variable with METHOD in "
                             f"{sorted(set(m.removesuffix('_variable') for m in sx.saliency.METHODS))}")
        if name in [p[2] for p in parsed]:
            raise ValueError(f"config.rows lists {row!r} twice")
        parsed.append((method, reference, name))
    if not parsed:
        raise ValueError(f"config.rows names no row (got {rows!r}): list METHOD:fixed or METHOD:variable, "
                         "e.g. ('rise:fixed', 'random:fixed')")
    return parsed


def method_config(config, name: str) -> dict:
    """The options of saliency method ``name`` in ``config.methods`` (empty if absent)."""
    return config.methods[name].to_dict() if name in config.methods else {}


def check_saliency_config(config) -> list[tuple[str, str, str]]:
    """saliency_eval; returns the parsed rows."""
    rows = parse_rows(config.rows)
    check_similarity_model(config)
    if config.test_pairs:  # a packaged pair list ("reference:NAME") or an existing file
        reference_files.check_pair_file(config.test_pairs, "config.test_pairs")
    if config.split not in SPLITS:
        raise ValueError(f"config.split must be one of {SPLITS}, got {config.split!r}")
    integer(config.num_pairs, "num_pairs", 2)
    integer(config.insertion_steps, "insertion_steps", 2)
    integer(config.gallery_pairs, "gallery_pairs", 1)
    integer(config.mesh_devices, "mesh_devices", 0)
    distributed = config.distributed.num_processes > 1 or config.distributed.coordinator_address == "auto"
    if not distributed:  # a multi-process run may not touch the devices before jax.distributed.initialize
        devices(config.mesh_devices)
    integer(config.mesh_masks, "mesh_masks", 1)
    integer(config.seed, "seed")
    integer(config.query_batch, "query_batch", 0)
    try:
        normalized_color(config.background)
    except ValueError as err:
        raise ValueError(f"config.background: {err}") from None
    unknown = sorted(set(config.methods) - set(sx.saliency.METHODS))
    if unknown:
        raise ValueError(f"config.methods has unknown method(s) {unknown}; methods: {list(sx.saliency.METHODS)}")
    for _, _, name in rows:
        try:
            sx.saliency.options_for(name, **method_config(config, name))
        except (TypeError, ValueError) as err:
            raise ValueError(f"config.methods.{name}: {err}") from None
    return rows


def check_attributes_config(config) -> list[float]:
    """train_attributes; returns the lambdas."""
    lambdas = sequence(config.lambdas, "lambdas")
    if not lambdas or any(isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0
                          for lam in lambdas):
        raise ValueError(f"config.lambdas must be non-negative numbers (at least one), got {config.lambdas!r}")
    lambdas = [float(lam) for lam in lambdas]
    check_similarity_model(config)
    if config.model not in BACKBONES:
        raise ValueError(f"config.model must be one of {BACKBONES}, got {config.model!r}")
    number(config.learning_rate, "learning_rate", 0.0, low_open=True)
    number(config.lr_decay_rate, "lr_decay_rate", 0.0, 1.0, low_open=True)
    integer(config.batch_size, "batch_size", 1)
    integer(config.num_epochs, "num_epochs", 1)
    integer(config.patience, "patience")
    integer(config.max_references, "max_references", 1)
    integer(config.cache_images, "cache_images", 0)
    integer(config.shard_size, "shard_size", 1)
    integer(config.width, "width", 1)
    integer(config.stages, "stages", 1)
    integer(config.seed, "seed")
    parallel.check_data_parallel(config.mesh_devices, config.batch_size, config.param_sharding)
    devices(config.mesh_devices)
    try:
        sx.saliency.options_for(config.saliency_method, **config.saliency.to_dict())
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.saliency ({config.saliency_method}): {err}") from None
    return lambdas


def check_explain_attributes_config(config) -> list[float]:
    """explain_attributes; returns the selector weights w."""
    weights = sequence(config.weights, "weights")
    if not weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1 for w in weights):
        raise ValueError(f"config.weights must be numbers in [0, 1] (at least one), got {config.weights!r}")
    weights = [float(w) for w in weights]
    check_similarity_model(config)
    if config.split not in SPLITS:
        raise ValueError(f"config.split must be one of {SPLITS}, got {config.split!r}")
    integer(config.num_pairs, "num_pairs", 1)
    integer(config.gallery_pairs, "gallery_pairs", 1)
    number(config.removal_fraction, "removal_fraction", 0.0, 1.0, low_open=True)
    scorers = sequence(config.concept_scorers, "concept_scorers")
    if any(x not in sx.attributes.concepts.SCORERS + ("cells",) for x in scorers):
        raise ValueError(f"config.concept_scorers must name scorers of {sx.attributes.concepts.SCORERS + ('cells',)}, "
                         f"got {config.concept_scorers!r}")
    methods = sequence(config.concept_methods, "concept_methods")
    known = sx.attributes.concepts.METHODS + ("edits",)
    if not methods or any(m not in known for m in methods) or len(set(methods)) < len(methods):
        raise ValueError(f"config.concept_methods must name distinct fits of {known} (at least one), "
                         f"got {config.concept_methods!r}")
    number(config.cell_fraction, "cell_fraction", 0.0, 1.0, low_open=True)
    integer(config.edit_scenes, "edit_scenes", 1)
    if config.concept_split not in ("train", "validation"):
        raise ValueError(f"config.concept_split must be 'train' or 'validation' (never test), got {config.concept_split!r}")
    if not float(config.concept_ridge) > 0 or not float(config.presence_weight) >= 0:
        raise ValueError(f"config.concept_ridge must be > 0 and config.presence_weight >= 0, got "
                         f"{config.concept_ridge}, {config.presence_weight}")
    try:
        sx.saliency.options_for(config.saliency_method, **config.saliency.to_dict())
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.saliency ({config.saliency_method}): {err}") from None
    return weights
