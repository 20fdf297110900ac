"""One writer per workdir: ``WorkdirLock``, an exclusive OS lock on ``<workdir>/.lock``.

The standard library only: a process that takes the lock needs none of the experiments' imports."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

LOCK_FILE = ".lock"


class WorkdirLock:
    """One writer per workdir: an exclusive ``fcntl.flock`` on ``<workdir>/.lock``, which also holds
    the holder's pid, host, command and start time (for the message).

    The operating system holds the lock: it is released when the holder exits, however it ends (a
    killed run leaves no stale lock to take over), and two processes can never both hold it.
    Taking it fails at once with a RuntimeError naming the holder. Released (the file removed) on
    ``release`` or when used as a context manager."""

    def __init__(self, workdir: str, name: str = LOCK_FILE):
        self.path = os.path.join(workdir, name)
        self.held = False
        self._fd: Optional[int] = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:500],
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                where = "this host" if holder.get("host") == me["host"] else f"host {holder.get('host', '?')}"
                raise RuntimeError(
                    f"{os.path.dirname(self.path)} is in use by process {holder.get('pid', '?')} on {where} since "
                    f"{holder.get('since', '?')} ({holder.get('command', '?')}): one run per workdir. Wait for it "
                    "or stop it") from None
            try:  # the holder before us may have removed the file after we opened it: lock the file at the path
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        self._fd, self.held = fd, True
        return self

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)  # while still holding it: a waiting process then retries on a new file
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    """What the holder wrote into the lock file (empty while it is being written)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}
