"""An on-disk cache of saliency maps, one file per query, written atomically and resumable.

Layout: ``<directory>/meta.json`` (what produced the maps) and ``<directory>/q<query id>.npz``
holding ``references [R]`` (reference ids), ``maps [R, H, W]`` float32 and the digests of the
query image and of each reference image the maps were computed from.

A cache cannot serve stale maps:

- ``meta.json`` records what the maps depend on (``explain_pairs`` writes the method and all its
  options, a fingerprint of the model's parameters, the key, and whatever the caller adds, e.g.
  the dataset and split the ids index). Opening a cache with other settings raises a ValueError
  that names every setting that differs, unless ``replace_stale=True``: then the old folder is
  moved aside (``<directory>.stale-<time>``) and a fresh cache starts.
- Each file records the digests of its images: a query or reference id whose image changed
  raises (or, with ``replace_stale``, is recomputed).
- A file that cannot be read (truncated, not an npz) is named in a warning, moved aside
  (``q<id>.npz.corrupt``) and recomputed.

A run killed at any moment loses at most the maps in progress; a rerun skips every query whose
file already holds the references asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
import zipfile
from typing import Any, Optional, Sequence

import jax
import numpy as np

from simexplain_jax.integrity import move_aside
from simexplain_jax.io import write_atomic

_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def describe(value: Any) -> Any:
    """``value`` as JSON-able data that is the same in every process: functions by their module and
    qualified name (never their address), arrays as nested lists, containers and dataclasses (an
    options object: its class and fields) recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and not callable(value):
        kind = type(value)
        return {"class": f"{kind.__module__}.{kind.__qualname__}",
                **{f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if callable(value):
        module = getattr(value, "__module__", None) or type(value).__module__
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{module}.{name}"
    return str(value)


def fingerprint(tree: Any) -> str:
    """A SHA-256 (hex, 20 characters) of every array in ``tree`` (its structure, shapes, dtypes and
    values): equal fingerprints mean equal parameters. A ``jax.tree_util.Partial`` (an
    ``embed_fn``) is fingerprinted by its arrays and the name of its function."""
    digest = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if isinstance(tree, jax.tree_util.Partial):
        digest.update(repr(describe(tree.func)).encode())
    digest.update(str(len(leaves)).encode())
    for leaf in leaves:
        array = np.ascontiguousarray(np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf))
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:20]


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def key_description(key) -> list:
    """The raw data of a PRNG key (typed or legacy uint32) as a list: what a cache records."""
    return np.asarray(jax.random.key_data(key) if _is_key(key) else key).tolist()


def image_digests(images: np.ndarray) -> np.ndarray:
    """One 64-bit digest per image of ``images [N, ...]`` (its float32 bytes): ``[N]`` uint64."""
    images = np.ascontiguousarray(np.asarray(images, np.float32))
    return np.asarray([int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
                       for image in images], np.uint64)


def differences(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two JSON-like dicts, as ``name: stored -> wanted`` lines."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(stored) | set(wanted)):
            name = f"{prefix}{k}"
            if k not in stored:
                out.append(f"{name}: (absent) -> {_short(wanted[k])}")
            elif k not in wanted:
                out.append(f"{name}: {_short(stored[k])} -> (absent)")
            else:
                out += differences(stored[k], wanted[k], name + ".")
        return out
    return [] if stored == wanted else [f"{prefix.rstrip('.')}: {_short(stored)} -> {_short(wanted)}"]


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SaliencyCache:
    def __init__(self, directory: str, meta: dict, *, replace_stale: bool = False):
        self.directory = directory
        self.replace_stale = bool(replace_stale)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "meta.json")
        meta = json.loads(json.dumps(describe(meta), sort_keys=True))
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    stored = json.load(f)
            except (OSError, ValueError) as err:
                stored = {"unreadable meta.json": f"{type(err).__name__}: {err}"}
            if stored != meta:
                changed = differences(stored, meta)
                if not self.replace_stale:
                    raise ValueError(
                        f"saliency cache {directory} was written with other settings; what differs "
                        f"(cached -> now):\n  " + "\n  ".join(changed) + "\nUse another directory, delete this one, "
                        "or start a fresh cache explicitly (replace_stale=True; in the experiments "
                        "--config.replace_stale_cache=True), which moves the old one aside")
                aside = move_aside(directory.rstrip("/\\"), time.strftime("stale-%Y%m%d-%H%M%S"))
                warnings.warn(f"saliency cache {directory} was written with other settings "
                              f"({'; '.join(changed)}): moved to {aside}; starting a fresh cache", stacklevel=3)
                os.makedirs(directory, exist_ok=True)
                write_atomic(path, json.dumps(meta, sort_keys=True, indent=2))
        else:
            write_atomic(path, json.dumps(meta, sort_keys=True, indent=2))
        self.meta = meta

    def path_of(self, query: int) -> str:
        """The file that holds (or will hold) the maps of query id ``query``."""
        return os.path.join(self.directory, f"q{int(query)}.npz")

    def _read(self, query: int) -> Optional[dict]:
        """The file's arrays, or None when it is absent; an unreadable file is moved aside (warned)."""
        path = self.path_of(query)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
            references, maps = stored["references"], stored["maps"]
            if references.ndim != 1 or maps.ndim != 3 or len(maps) != len(references):
                raise ValueError(f"references {references.shape} and maps {maps.shape} do not match")
        except _UNREADABLE as err:
            aside = move_aside(path, "corrupt")
            warnings.warn(f"saliency cache file {path} is unreadable ({type(err).__name__}: {err}); moved to "
                          f"{aside} and recomputed", stacklevel=3)
            return None
        return stored

    def get(self, query: int, references: Sequence[int], query_digest: Optional[int] = None,
            reference_digests: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
        """Maps ``[R, H, W]`` for ``references`` of ``query`` if all are cached, else None.

        With digests (``image_digests``), the cached maps must have been computed from the same
        query and reference images: a mismatch raises a ValueError naming the file (or, with
        ``replace_stale``, returns None so that they are recomputed)."""
        found = self.lookup(query, references, query_digest, reference_digests)
        return None if found is None else found["maps"]

    def lookup(self, query: int, references: Sequence[int], query_digest: Optional[int] = None,
               reference_digests: Optional[Sequence[int]] = None, extras: Sequence[str] = ()) -> Optional[dict]:
        """As :meth:`get`, but returns ``{"maps": [R, H, W], name: [R, ...] for name in extras}``
        (per-reference arrays stored with the maps by ``put``); None when any is missing."""
        stored = self._read(query)
        if stored is None or any(name not in stored for name in extras):
            return None
        position = {int(r): i for i, r in enumerate(stored["references"])}
        if not all(int(r) in position for r in references):
            return None
        rows = [position[int(r)] for r in references]
        stale = []
        if query_digest is not None and "query_digest" in stored and int(stored["query_digest"]) != int(query_digest):
            stale.append(f"query {int(query)}")
        if reference_digests is not None and "reference_digests" in stored:
            cached = stored["reference_digests"][rows]
            stale += [f"reference {int(r)}" for r, a, b in zip(references, cached, reference_digests) if int(a) != int(b)]
        if stale:
            if self.replace_stale:
                return None
            raise ValueError(f"saliency cache file {self.path_of(query)} holds maps of other images for the same ids "
                             f"({', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''} changed): the images "
                             "behind these ids are not the ones cached. Use another cache directory, or "
                             "replace_stale=True to recompute them")
        return {"maps": stored["maps"][rows], **{name: stored[name][rows] for name in extras}}

    def put(self, query: int, references: Sequence[int], maps: np.ndarray, query_digest: Optional[int] = None,
            reference_digests: Optional[Sequence[int]] = None, extras: Optional[dict] = None) -> None:
        """Stores ``maps [R, H, W]`` of ``query`` against ``references`` (and ``extras``, arrays
        ``[R, ...]`` by name, e.g. the pair methods' correspondences), keeping the file's other
        references (of the same query image) that were cached before."""
        references = np.asarray(references, np.int64)
        maps = np.asarray(maps, np.float32)
        extras = {name: np.asarray(value, np.float32) for name, value in (extras or {}).items()}
        if not np.all(np.isfinite(maps)) or not all(np.isfinite(v).all() for v in extras.values()):
            raise ValueError(f"refusing to cache non-finite maps for query {int(query)}")
        digests = None if reference_digests is None else np.asarray(reference_digests, np.uint64)
        old = self._read(query)
        if old is not None and maps.ndim == 3 and old["maps"].shape[1:] == maps.shape[1:] and (
                query_digest is None or int(old.get("query_digest", query_digest)) == int(query_digest)) and all(
                name in old and old[name].shape[1:] == value.shape[1:] for name, value in extras.items()):
            keep = ~np.isin(old["references"], references)
            if keep.any() and (digests is None) == ("reference_digests" not in old):
                references = np.concatenate([old["references"][keep], references])
                maps = np.concatenate([old["maps"][keep], maps])
                extras = {name: np.concatenate([old[name][keep], value]) for name, value in extras.items()}
                if digests is not None:
                    digests = np.concatenate([old["reference_digests"][keep], digests])
        arrays = {"references": references, "maps": maps, **extras}
        if query_digest is not None:
            arrays["query_digest"] = np.uint64(query_digest)
        if digests is not None:
            arrays["reference_digests"] = digests
        write_atomic(self.path_of(query), lambda f: np.savez(f, **arrays))
