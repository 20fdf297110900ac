"""Checkpoints with orbax: the last and the best training state, resumable, with the config beside.

Layout under ``directory``: ``last/<step>/`` (the most recent save), ``best/<step>/`` (the best by
a metric), ``config.json``. Orbax writes each checkpoint to a temporary folder and renames it,
so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def write_json_atomic(path: str, data: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
    os.replace(f.name, path)


class Checkpointer:
    """Keeps the last checkpoint and the best one by ``metric`` (higher is better by default).

    Each checkpoint holds ``state`` (any pytree: params, batch_stats, optax state, step) and
    ``meta`` (a JSON dict: e.g. the data iterator's state and the metrics).
    """

    def __init__(self, directory: str, *, metric: Optional[str] = None, mode: str = "max",
                 config: Optional[dict] = None):
        """``metric=None`` reopens an existing folder with the metric it was written with."""
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        settings = os.path.join(self.directory, "checkpointer.json")
        if metric is None:
            if os.path.exists(settings):
                with open(settings) as f:
                    stored = json.load(f)
                metric, mode = stored["metric"], stored["mode"]
            else:
                metric = "val_auc"
        else:
            write_json_atomic(settings, {"metric": metric, "mode": mode})
        self.metric = metric
        options = dict(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self._last = ocp.CheckpointManager(os.path.join(self.directory, "last"),
                                           options=ocp.CheckpointManagerOptions(**options))
        self._best = ocp.CheckpointManager(
            os.path.join(self.directory, "best"),
            options=ocp.CheckpointManagerOptions(best_fn=lambda m: m[metric], best_mode=mode,
                                                 keep_checkpoints_without_metrics=False, **options))
        if config is not None:
            write_json_atomic(os.path.join(self.directory, "config.json"), config)

    @staticmethod
    def _args(state, meta):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def save_last(self, step: int, state, meta: dict) -> None:
        self._last.save(int(step), args=self._args(state, meta), force=True)
        self._last.wait_until_finished()

    def save_best(self, step: int, state, meta: dict, metrics: dict) -> None:
        """Saves when ``metrics[metric]`` beats the best so far (orbax keeps only the best)."""
        self._best.save(int(step), args=self._args(state, meta), metrics={k: float(v) for k, v in metrics.items()},
                        force=True)
        self._best.wait_until_finished()

    def latest_step(self) -> Optional[int]:
        return self._last.latest_step()

    def best_step(self) -> Optional[int]:
        return self._best.best_step()

    def restore(self, target_state, which: str = "last", step: Optional[int] = None):
        """``(state, meta)`` restored into the structure and dtypes of ``target_state``."""
        manager = {"last": self._last, "best": self._best}[which]
        step = step if step is not None else (manager.latest_step() if which == "last" else manager.best_step())
        if step is None:
            raise FileNotFoundError(f"no {which} checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self._last.close()
        self._best.close()
