"""An on-disk cache of saliency maps, one file per query, written atomically and resumable.

Layout: ``<directory>/meta.json`` (the method and its options; a mismatch raises) and
``<directory>/q<query index>.npz`` holding ``references [R]`` and ``maps [R, H, W]`` float32.
A run killed at any moment loses at most the query in progress; a rerun skips every query whose
file already holds the references asked for.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from simexplain_jax.io import write_atomic


class SaliencyCache:
    def __init__(self, directory: str, meta: dict):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "meta.json")
        meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored != meta:
                raise ValueError(f"saliency cache {directory} was written with {stored}, not {meta}: "
                                 "use another directory or delete it")
        else:
            write_atomic(path, json.dumps(meta, sort_keys=True, indent=2))

    def _path(self, query: int) -> str:
        return os.path.join(self.directory, f"q{int(query)}.npz")

    def get(self, query: int, references) -> Optional[np.ndarray]:
        """Maps ``[R, H, W]`` for ``references`` of ``query`` if all are cached, else None."""
        path = self._path(query)
        if not os.path.exists(path):
            return None
        with np.load(path) as data:
            stored = {int(r): i for i, r in enumerate(data["references"])}
            if not all(int(r) in stored for r in references):
                return None
            return data["maps"][[stored[int(r)] for r in references]]

    def put(self, query: int, references, maps: np.ndarray) -> None:
        references = np.asarray(references, np.int64)
        maps = np.asarray(maps, np.float32)
        write_atomic(self._path(query), lambda f: np.savez(f, references=references, maps=maps))
