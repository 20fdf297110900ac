"""Files: atomic writes (a file is written beside its destination under a temporary name, flushed
to disk and renamed over the destination, so a reader sees the old content or the new, never a
half), with the permissions an ordinary ``open(path, "w")`` would give (``0o666`` less the
user's umask); and paths named by outside data kept inside their folder (``path_inside``).

This module imports nothing from the project (anything may use it).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable, Union


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux's
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, content: Union[bytes, str, Callable[[BinaryIO], Any]]) -> None:
    """Writes ``content`` to ``path`` atomically; creates the parent folders.

    ``content``: bytes, a str (written as UTF-8), or a function that writes into the binary file
    object it is given (e.g. ``lambda f: np.savez(f, x=x)``). If writing fails, ``path`` keeps its
    previous content and no temporary file is left. The file gets mode ``0o666 & ~umask`` (a
    temporary file is created private, ``0o600``; it is widened before the rename), so other users
    of a shared folder read it as they read any file the user writes.
    """
    if not isinstance(content, (bytes, str)) and not callable(content):
        raise TypeError(f"content must be bytes, str or a function of a binary file, got {type(content).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            mode = 0o666 & ~current_umask()
            os.fchmod(f.fileno(), mode) if hasattr(os, "fchmod") else os.chmod(temporary, mode)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON with sorted keys (values JSON cannot hold are written as ``str``)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def path_inside(root: str | os.PathLike, *names: str, what: str = "name") -> str:
    """``os.path.join(root, *names)``, refusing names that leave ``root``: an absolute name, a
    drive, or ``..`` components that climb above it (``../../secret/x``, ``a/../../b``). Raises a
    ValueError naming ``what`` and the name.

    The check is on the names as written (symbolic links inside ``root`` are the owner's choice
    and are followed as usual): use it for every path built from a name read out of a data file.
    """
    root = os.fspath(root)
    parts = []
    for name in names:
        name = os.fspath(name)
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{what} {name!r} is not a file name")
        if os.path.isabs(name) or os.path.splitdrive(name)[0] or name.startswith(("/", "\\")):
            raise ValueError(f"{what} {name!r} is an absolute path: only names inside {root} are allowed")
        parts.append(name)
    relative = os.path.normpath(os.path.join(*parts)) if parts else "."
    if relative == ".." or relative.startswith(".." + os.sep) or (os.altsep and relative.startswith(".." + os.altsep)):
        raise ValueError(f"{what} {os.path.join(*parts)!r} leaves its folder {root}: only names inside it are allowed")
    return os.path.join(root, *parts)
