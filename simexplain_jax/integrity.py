"""File integrity: SHA-256 digests of the files a folder holds, kept in a JSON file written
atomically, and checked before the files are trusted; a file found unreadable is moved aside.

This module imports nothing of the project but ``io`` (anything may use it).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

from simexplain_jax.io import write_json_atomic


class CorruptFileError(ValueError):
    """A file differs from the digest written when it was saved, or cannot be read."""


def file_digest(path: str | os.PathLike) -> Optional[str]:
    """The SHA-256 of a file's bytes.

    Args:
      path: the file.

    Returns:
      The hex digest, or None where ``path`` is not a file.
    """
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digests(folder: str | os.PathLike) -> dict[str, str]:
    """``{path relative to folder: SHA-256}`` of every file under ``folder``."""
    folder = os.fspath(folder)
    return {os.path.relpath(os.path.join(root, name), folder): file_digest(os.path.join(root, name))
            for root, _, files in os.walk(folder) for name in files}


def write_digests(path: str | os.PathLike, folder: str | os.PathLike) -> dict[str, str]:
    """Writes the digests of every file under ``folder`` to ``path`` (JSON, atomically).

    Returns:
      The digests written.
    """
    digests = folder_digests(folder)
    write_json_atomic(path, digests)
    return digests


def read_digests(path: str | os.PathLike) -> Optional[dict[str, str]]:
    """The digests ``write_digests`` wrote to ``path``.

    Returns:
      The digests, or None where ``path`` does not exist.

    Raises:
      CorruptFileError: ``path`` exists but does not hold digests.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            digests = json.load(f)
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"digest file {os.fspath(path)} is unreadable ({err})") from None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise CorruptFileError(f"digest file {os.fspath(path)} does not hold {{file: sha256}} digests")
    return digests


def first_difference(folder: str | os.PathLike, digests: dict[str, str],
                     within: Optional[Sequence[str]] = None) -> Optional[tuple[str, str]]:
    """The first file of ``folder`` (in sorted order) that differs from ``digests``.

    Args:
      folder: the folder the digests were taken of.
      digests: ``{relative path: SHA-256}``, as ``folder_digests`` gives.
      within: check only the files under these top-level entries of ``folder``; None: all.

    Returns:
      ``(relative path, "is missing" or "differs from the digest saved with it")``, or None when
      every file checked matches.
    """
    for relative, digest in sorted(digests.items()):
        if within is not None and relative.split(os.sep)[0] not in within:
            continue
        actual = file_digest(os.path.join(os.fspath(folder), relative))
        if actual != digest:
            return relative, "is missing" if actual is None else "differs from the digest saved with it"
    return None


def move_aside(path: str, suffix: str) -> str:
    """Renames ``path`` to ``<path>.<suffix>`` (``-1``, ``-2``, ... added until the name is free).

    Returns:
      The new name.
    """
    target, n = f"{path}.{suffix}", 0
    while os.path.exists(target):
        n += 1
        target = f"{path}.{suffix}-{n}"
    os.replace(path, target)
    return target
