"""Atomic file writes: a file is written beside its destination under a temporary name, flushed to
disk and renamed over the destination, so a reader sees the old content or the new, never a half.

This module imports nothing from the project (anything may use it).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable, Union


def write_atomic(path: str | os.PathLike, content: Union[bytes, str, Callable[[BinaryIO], Any]]) -> None:
    """Writes ``content`` to ``path`` atomically; creates the parent folders.

    ``content``: bytes, a str (written as UTF-8), or a function that writes into the binary file
    object it is given (e.g. ``lambda f: np.savez(f, x=x)``). If writing fails, ``path`` keeps its
    previous content and no temporary file is left.
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
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON with sorted keys (values JSON cannot hold are written as ``str``)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
