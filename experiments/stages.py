"""What the experiments share: configs loaded in-process (``load_config``, ``override``), an
earlier stage run in this process when its output is missing (``ensure_stage``), and the command
line (``flags_main``: ``--config`` and ``--workdir``, defined only in the entry point's process,
with a clear message for a ``--config.x`` override that names no field). One writer per workdir
is ``experiments.workdir_lock``."""

from __future__ import annotations

import importlib
import importlib.util
import copy
import json
import os
import sys
import traceback
from typing import Callable

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import configs
from simexplain_jax.io import write_json_atomic

STAGE_RECORD = "stage_config.json"  # the settings a stage run by ensure_stage finished with
# settings that say only how a stage runs (its results do not depend on them): a finished stage is
# reused whatever they are now
EXECUTION_FIELDS = ("mesh_devices", "mesh_masks", "distributed", "param_sharding")
CONFIGS_PACKAGE = "experiments.configs"
# fields added to the stage configs after runs were recorded, each with the value that means what those runs did:
# a finished stage whose record lacks one is reused when the field is requested at that value
ADDED_FIELDS = {
    # a similarity model of your own (experiments.similarity_source); empty: the trained one, as before
    "similarity_model": {"factory": "", "torchvision_weights": "", "arch": "resnet18", "stages": 4, "dataset": ""},
    "patience": 0,  # early stopping of the training stages; 0: off, as before
}


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The locked config named by ``spec``: ``experiments/configs/NAME.py[:ARG]`` (or ``NAME[:ARG]``)
    is ``experiments.configs.NAME.get_config(ARG)``, imported from the package wherever the process
    runs; a path to another ``.py`` file with a ``get_config`` is loaded from that file. Locked: a
    field set later that the config does not have raises."""
    path, _, arg = str(spec).partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(os.path.normpath(path))
    packaged = folder in ("", os.path.join("experiments", "configs")) or (
        os.path.isfile(path) and os.path.samefile(folder, os.path.dirname(os.path.abspath(configs.__file__))))
    if packaged and importlib.util.find_spec(f"{CONFIGS_PACKAGE}.{name}") is not None:
        module = importlib.import_module(f"{CONFIGS_PACKAGE}.{name}")
    elif os.path.isfile(path):
        module_spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        raise FileNotFoundError(f"config {spec!r}: no module {CONFIGS_PACKAGE}.{name} and no file {path!r}")
    config = module.get_config(arg or None)
    config.lock()
    return config


def override(config: ml_collections.ConfigDict, overrides, where: str = "config") -> ml_collections.ConfigDict:
    """Sets ``overrides`` (a nested dict or ConfigDict) into ``config`` field by field (nested
    ConfigDicts are updated, not replaced). A field ``config`` does not have raises a KeyError
    naming it. Returns ``config``."""
    for key, value in (overrides.items() if overrides is not None else ()):
        if key not in config:
            raise KeyError(f"{where}.{key}: the config has no such field (fields: {', '.join(sorted(config))})")
        if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(config[key], ml_collections.ConfigDict):
            override(config[key], value, f"{where}.{key}")
        else:
            config[key] = value
    return config


def stage_config(config, overrides=None) -> ml_collections.ConfigDict:
    """A stage's config: ``config`` (a ConfigDict, or a spec for ``load_config``) with ``overrides``
    set into a copy of it (a misspelt override raises, naming it); the caller's ConfigDict is left
    as it was."""
    config = load_config(config) if isinstance(config, str) else copy.deepcopy(config)
    return override(config, overrides)


def ensure_stage(run: Callable, config, workdir: str, overrides=None, *, given: bool = False):
    """Runs ``run(config, workdir)`` in this process unless ``<workdir>/results.json`` exists (the
    stage's completion marker); ``config`` is a ConfigDict or a spec for ``load_config``, with
    ``overrides`` set into it first (so a misspelt override fails even when the stage is done).

    A finished stage of the caller's own (``given`` False: a folder it chose, e.g.
    ``<workdir>/similarity``) is reused only with the settings it ran with (``STAGE_RECORD``,
    written when it finishes; ``EXECUTION_FIELDS`` aside; a field of ``ADDED_FIELDS`` that the record
    lacks counts as recorded at its value there): otherwise a ValueError names every field that
    differs. ``given``:
    the user (or a parent stage) named ``workdir`` (e.g. ``similarity_workdir``): it must exist, so
    a mistyped path is an error instead of a new run there, and what it holds is used as it is.
    Returns ``workdir``."""
    config = stage_config(config, overrides)
    record = os.path.join(workdir, STAGE_RECORD)
    requested = _as_json(config.to_dict())
    if given and not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir} does not exist: it was given as the workdir of stage {run.__module__} "
                                "(leave it empty to run that stage into this experiment's workdir)")
    if os.path.exists(os.path.join(workdir, "results.json")):
        if not given and os.path.exists(record):
            with open(record, encoding="utf-8") as f:
                recorded = json.load(f)
            recorded = {**{k: v for k, v in ADDED_FIELDS.items() if k in requested}, **recorded}
            changed = _differences({k: v for k, v in recorded.items() if k not in EXECUTION_FIELDS},
                                   {k: v for k, v in requested.items() if k not in EXECUTION_FIELDS})
            if changed:
                raise ValueError(f"stage {run.__module__} in {workdir} ran with other settings ({'; '.join(changed[:8])})"
                                 f": it is not reused with these. Use another workdir, or delete {workdir} to run it "
                                 "again")
        return workdir
    print(f"running stage {run.__module__} into {workdir}", flush=True)  # progress, not a warning
    run(config, workdir)
    write_json_atomic(record, requested)
    return workdir


def _as_json(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _differences(recorded: dict, requested: dict, prefix: str = "") -> list[str]:
    """``field: recorded -> requested`` for each (nested) field that differs."""
    out = []
    for key in sorted(set(recorded) | set(requested)):
        a, b = recorded.get(key, "(absent)"), requested.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def packaged_config_flag(arg: str) -> str:
    """``--config=experiments/configs/NAME.py[:ARG]`` given outside the repository (no such file
    here) names the packaged config file, so the README's commands work from any folder."""
    if not arg.startswith("--config="):
        return arg
    path, sep, rest = arg[len("--config="):].partition(":")
    folder = os.path.join("experiments", "configs")
    if os.path.dirname(os.path.normpath(path)) != folder or os.path.exists(path):
        return arg
    packaged = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), os.path.basename(path))
    return f"--config={packaged}{sep}{rest}" if os.path.isfile(packaged) else arg


def parse_flags(argv: list) -> list:
    """absl's flag parsing (``app.parse_flags_with_usage``), with a ``--config.x=...`` override of a
    field the config does not have reported by name (ml_collections raises a bare AttributeError
    or KeyError); exits with status 1 as absl does for any flag error."""
    argv = [packaged_config_flag(a) for a in argv]
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        sys.stderr.write(f"FATAL Flags parsing error: a --config override names a field the config does not have "
                         f"({err}); overrides given: {', '.join(overrides) or 'none'}\n")
        sys.exit(1)


# what a run refuses with a message for the user (a bad config, file, workdir or model), printed as one line
USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError,
               RuntimeError, FloatingPointError)


def report_error(err: BaseException, verbose: bool) -> int:
    """Prints ``err`` for the user: one line ``error: ...`` on stderr (the traceback too with
    ``verbose``); returns the exit status (1)."""
    if verbose:
        traceback.print_exception(err)
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    first = " ".join(message.split()) or type(err).__name__
    sys.stderr.write(f"error: {first}" + ("" if verbose else " (--verbose shows where)") + "\n")
    return 1


def default_compilation_cache() -> str:
    """Where the commands keep JAX's persistent compilation cache unless told otherwise: JAX's own
    settings first (``''``, off, when ``jax_enable_compilation_cache`` is false, e.g. from
    ``$JAX_ENABLE_COMPILATION_CACHE``; ``jax_compilation_cache_dir`` when set, e.g. from
    ``$JAX_COMPILATION_CACHE_DIR``), else ``$XDG_CACHE_HOME/simexplain_jax/jax``
    (``~/.cache/simexplain_jax/jax``)."""
    if not jax.config.jax_enable_compilation_cache:
        return ""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "simexplain_jax", "jax")


def define_compilation_cache_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """``--compilation_cache``: the folder of JAX's persistent compilation cache (``''``: off)."""
    flags.DEFINE_string("compilation_cache", default_compilation_cache(),
                        "JAX's persistent compilation cache: the programs a command compiles are written here and "
                        "read back by the next command that needs them, instead of compiled again (safe to delete; "
                        "'' turns it off)", flag_values=flag_values)


def use_compilation_cache(folder: str) -> str:
    """Turns JAX's persistent compilation cache on in ``folder`` (``''``: off), for every program
    compiled after this call, however short its compilation (unless
    ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise): a command compiles hundreds of
    small programs, each read back faster than compiled again. A folder that cannot be created or
    written is reported in one line on stderr, and the cache stays off. Call it before anything
    compiles. Returns the folder in use (``''``: none)."""
    if folder:
        folder = os.path.abspath(os.path.expanduser(folder))
        try:
            os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError("not writable")
        except OSError as err:
            sys.stderr.write(f"warning: --compilation_cache={folder} cannot be used ({err}); running without it\n")
            folder = ""
    if not folder:
        jax.config.update("jax_enable_compilation_cache", False)
        return ""
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder


def flags_main(run: Callable, config_help: str) -> None:
    """The command line of an experiment: defines ``--config`` (a config file, locked, with
    ``--config.x=...`` overrides; ``config_help`` names the config files), ``--workdir`` and
    ``--verbose`` and ``--compilation_cache`` (``use_compilation_cache``), then runs
    ``run(config, workdir)`` under ``app.run``. An error meant for the user
    (``USER_ERRORS``) is printed as one line and the command exits 1; ``--verbose`` adds the
    traceback. Call it from ``if __name__ == "__main__"`` only, so importing any number of
    experiment modules into one process defines no flag."""
    config = config_flags.DEFINE_config_file(
        "config", None, f"the config file ({config_help}[:ARG]); --config.FIELD=VALUE sets one of its fields",
        lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "output folder (resumes from what it holds)")
    verbose = flags.DEFINE_bool("verbose", False, "print the traceback of an error, not only its message")
    define_compilation_cache_flag()
    flags.mark_flags_as_required(["config", "workdir"])
    for name in ("config", "workdir", "verbose", "compilation_cache"):  # listed by --help (defined here, not in main)
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        use_compilation_cache(flags.FLAGS.compilation_cache)
        try:
            run(config.value, workdir.value)
        except USER_ERRORS as err:
            sys.exit(report_error(err, verbose.value))

    app.run(main, flags_parser=parse_flags)
