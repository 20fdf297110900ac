"""What the experiments share to run safely: an earlier stage run when its output is missing (as a
child process that dies with its parent), one writer per workdir (a lock file), and a clear
message for a ``--config.x`` override that names no field."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from absl import app, logging

PARENT_ENV = "SIMEXPLAIN_PARENT_PID"
LOCK_FILE = ".lock"
_PR_SET_PDEATHSIG = 1


def ensure_stage(module: str, config: str, workdir: str, overrides: dict) -> str:
    """Runs ``python -m experiments.<module> --config=<config> --workdir=<workdir>`` unless
    ``<workdir>/results.json`` exists (the stage's completion marker). Returns ``workdir``.

    The child is told its parent's pid (``SIMEXPLAIN_PARENT_PID``): it calls ``die_with_parent``
    at start, so killing this process (even with SIGKILL) ends the stage too, and a rerun never
    finds a stale child still training in the same folder."""
    if not os.path.exists(os.path.join(workdir, "results.json")):
        logging.warning("running stage %s (%s) into %s", module, config, workdir)
        command = [sys.executable, "-m", f"experiments.{module}", f"--config={config}", f"--workdir={workdir}"]
        command += [f"--config.{k}={v}" for k, v in overrides.items() if v not in (None, "")]
        subprocess.run(command, check=True, env=dict(os.environ, **{PARENT_ENV: str(os.getpid())}))
    return workdir


def die_with_parent() -> None:
    """When started by ``ensure_stage``: end this process when its parent ends.

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); elsewhere
    a daemon thread polls the parent's pid once a second. A parent already gone by now ends this
    process at once. Does nothing for a process started by hand."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent:
        return
    parent = int(parent)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch():
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


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


def run(main: Callable) -> None:
    """``app.run(main)`` for an experiment: clear errors for unknown config fields, and a stage
    started by ``ensure_stage`` dies with its parent."""
    die_with_parent()
    app.run(main, flags_parser=parse_flags)
