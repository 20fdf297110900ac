"""What the experiments share: configs loaded in-process (``load_config``, ``override``), an
earlier stage run in this process when its output is missing (``ensure_stage``), one writer per
workdir (``WorkdirLock``), and the command line (``flags_main``: ``--config`` and ``--workdir``,
defined only in the entry point's process, with a clear message for a ``--config.x`` override
that names no field)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
import sys
import time
from typing import Callable, Optional

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import configs

LOCK_FILE = ".lock"
CONFIGS_PACKAGE = "experiments.configs"


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


def ensure_stage(run: Callable, config, workdir: str, overrides=None):
    """Runs ``run(config, workdir)`` in this process unless ``<workdir>/results.json`` exists (the
    stage's completion marker); ``config`` is a ConfigDict or a spec for ``load_config``, with
    ``overrides`` set into it first (so a misspelt override fails even when the stage is done).
    Returns ``workdir``."""
    config = load_config(config) if isinstance(config, str) else config
    override(config, overrides)
    if not os.path.exists(os.path.join(workdir, "results.json")):
        logging.warning("running stage %s into %s", run.__module__, workdir)
        run(config, workdir)
    return workdir


def _process_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    current = _process_start(pid)
    return start is None or current is None or current == start


class WorkdirLock:
    """One writer per workdir: ``<workdir>/.lock`` holds the holder's pid, host and start time.

    Taking it fails at once with a RuntimeError naming the holder when a live process holds it. A
    lock left by a process that died (same host, pid gone or reused) is stale: it is taken over. A
    lock from another host cannot be checked: the message says to delete the file if that run is
    gone. Released (the file removed) on ``release`` or when used as a context manager."""

    def __init__(self, workdir: str, name: str = LOCK_FILE):
        self.path = os.path.join(workdir, name)
        self.held = False

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "command": " ".join(sys.argv)[:500], "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._stale(holder):
                    logging.warning("removing the stale lock %s (%s)", self.path, holder)
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                where = "this host" if holder.get("host") == me["host"] else f"host {holder.get('host')}"
                raise RuntimeError(
                    f"{os.path.dirname(self.path)} is in use by process {holder.get('pid')} on {where} since "
                    f"{holder.get('since')} ({holder.get('command', '?')}): one run per workdir. Wait for it or "
                    f"stop it; if it is gone (e.g. a machine that was shut down), delete {self.path}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RuntimeError(f"could not take the lock {self.path}: other processes keep taking it")

    def _holder(self) -> Optional[dict]:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # being written this instant, or garbage: garbage older than a few seconds is stale
            try:
                return None if time.time() - os.path.getmtime(self.path) > 5 else {"pid": -1, "host": "?"}
            except OSError:
                return {}

    def _stale(self, holder: dict) -> bool:
        if not holder:
            return True
        if holder.get("host") != socket.gethostname() or holder["pid"] < 0:
            return False
        return holder["pid"] != os.getpid() and not _alive(holder["pid"], holder.get("start"))

    def release(self) -> None:
        if self.held:
            try:
                with open(self.path) as f:
                    mine = json.load(f).get("pid") == os.getpid()
            except (OSError, ValueError):
                mine = False
            if mine:
                os.remove(self.path)
            self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def parse_flags(argv: list) -> list:
    """absl's flag parsing (``app.parse_flags_with_usage``), with a ``--config.x=...`` override of a
    field the config does not have reported by name (ml_collections raises a bare AttributeError
    or KeyError); exits with status 1 as absl does for any flag error."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        sys.stderr.write(f"FATAL Flags parsing error: a --config override names a field the config does not have "
                         f"({err}); overrides given: {', '.join(overrides) or 'none'}\n")
        sys.exit(1)


def flags_main(run: Callable, config_help: str) -> None:
    """The command line of an experiment: defines ``--config`` (a config file, locked, with
    ``--config.x=...`` overrides; ``config_help`` names the config files) and ``--workdir``, then runs
    ``run(config, workdir)`` under ``app.run``. Call it from ``if __name__ == "__main__"`` only, so
    importing any number of experiment modules into one process defines no flag."""
    config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "output folder (resumes from what it holds)")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        run(config.value, workdir.value)

    app.run(main, flags_parser=parse_flags)
