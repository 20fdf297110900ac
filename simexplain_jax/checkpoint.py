"""Checkpoints with orbax: one ``CheckpointManager`` that keeps the latest step and the best one by a
metric, resumable, with the config beside.

Layout under ``directory``: one folder per kept step (``<step>/``) holding three items,
``variables`` (``{"params", "batch_stats"}``: all that inference needs), ``train``
(``{"step", "opt_state"}``: what resuming needs besides) and ``meta`` (JSON: the step, the data
iterator's state); beside them ``config.json`` (the training config) and ``checkpointer.json`` (the
metric and its mode). After each save, orbax's preservation policy deletes every step but the
latest and the best by the metric (among the steps saved with metrics). Orbax writes each step to
a temporary folder and renames it, so a run killed at any moment leaves the previous steps intact.

``restore_variables`` reads the ``variables`` item alone: a trained model is loaded for inference
without building its optimizer.

Verification: after each save, the SHA-256 of every file of the step is written to
``digests/<step>.json``; a restore first checks the files it reads against it and raises a
``CorruptCheckpointError`` naming the step folder and the first file that differs (a flipped byte
would otherwise load as silently wrong weights). Each step's ``meta`` also holds the training
config: a ``config.json`` edited afterwards (another ``image_size``, say) raises on restore,
naming the fields that differ, instead of building a model the weights were not trained for.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from simexplain_jax.io import write_json_atomic

MODES = ("max", "min")
WHICH = ("last", "best")
DIGESTS = "digests"


class CorruptCheckpointError(ValueError):
    """A checkpoint's files differ from the digests written when it was saved."""


def _file_digests(folder: str) -> dict:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {os.path.relpath(os.path.join(root, name), folder): _file_digests_of(os.path.join(root, name))
            for root, _, files in os.walk(folder) for name in files}


def _json_like(data):
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def _config_differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '(absent)')!r} when trained, {current.get(k, '(absent)')!r} in config.json"
            for k in keys if saved.get(k) != current.get(k)]


def _abstract(tree):
    """``tree`` (arrays or ``jax.ShapeDtypeStruct``) as the abstract target orbax restores into:
    shape, dtype and sharding; a leaf without a sharding is restored onto this process's first
    device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            return ocp.utils.to_shape_dtype_struct(x)
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=device)

    return jax.tree.map(one, tree)


def _file_digests_of(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(directory: str) -> dict:
    """The ``config.json`` a ``Checkpointer`` wrote in ``directory``."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {directory} a checkpoint folder of a training run?")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable JSON config ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object (the training config), got {type(config).__name__}")
    return config


class Checkpointer:
    """Keeps the latest checkpoint and the best one by ``metric`` (``mode="max"``: higher is better).

    A saved ``state`` is a train state with ``params``, ``batch_stats``, ``opt_state`` and ``step``
    (``simexplain_jax.train.similarity.TrainState``); ``meta`` is a JSON dict (e.g. the data
    iterator's state).
    """

    def __init__(self, directory: str, *, metric: Optional[str] = None, mode: str = "max",
                 config: Optional[dict] = None):
        """``metric=None`` reopens an existing folder with the metric it was written with."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
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
        self.metric, self.mode = metric, mode
        best = lambda metrics: metrics[metric]  # noqa: E731
        policy = preservation_policy.AnyPreservationPolicy([
            preservation_policy.LatestN(n=1),
            preservation_policy.BestN(get_metric_fn=best, reverse=mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False)])
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=best, best_mode=mode,
                                                 create=True, enable_async_checkpointing=False))
        self._config = None if config is None else _json_like(config)
        if config is not None:
            write_json_atomic(os.path.join(self.directory, "config.json"), config)

    def save(self, step: int, state, meta: dict, metrics: Optional[dict] = None) -> None:
        """Saves ``state`` and ``meta`` at ``step``; with ``metrics`` (which must hold the metric)
        the step competes for the best checkpoint."""
        if metrics is not None and self.metric not in metrics:
            raise ValueError(f"metrics must hold the checkpointer's metric {self.metric!r}, got {sorted(metrics)}")
        if self._config is not None:
            meta = dict(meta, config=self._config)
        args = ocp.args.Composite(
            variables=ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
            meta=ocp.args.JsonSave(meta))
        self._manager.save(int(step), args=args, force=True,
                           metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()})
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            self._write_digests(int(step))

    def _digest_path(self, step: int) -> str:
        return os.path.join(self.directory, DIGESTS, f"{int(step)}.json")

    def _write_digests(self, step: int) -> None:
        """Digests of the step just saved; those of steps orbax has deleted are removed."""
        write_json_atomic(self._digest_path(step), _file_digests(os.path.join(self.directory, str(step))))
        kept = {str(s) for s in self._manager.all_steps()}
        for name in os.listdir(os.path.join(self.directory, DIGESTS)):
            if name.endswith(".json") and name[:-5] not in kept:
                os.remove(os.path.join(self.directory, DIGESTS, name))

    def verify(self, step: int, items=("variables", "train", "meta")) -> None:
        """Checks the files of ``items`` of ``step`` against the digests saved with it (a checkpoint
        saved before digests were kept is not checked); raises ``CorruptCheckpointError`` naming
        the step folder and the first file that differs or is missing."""
        path = self._digest_path(step)
        if not os.path.exists(path):
            return
        folder = os.path.join(self.directory, str(int(step)))
        try:
            with open(path) as f:
                expected = json.load(f)
        except (OSError, ValueError) as err:
            raise CorruptCheckpointError(f"checkpoint {folder}: its digest file {path} is unreadable ({err})") from None
        for relative, digest in sorted(expected.items()):
            if relative.split(os.sep)[0] not in items:
                continue
            actual = _file_digests_of(os.path.join(folder, relative))
            if actual != digest:
                state = "is missing" if actual is None else "differs from the digest saved with it"
                raise CorruptCheckpointError(
                    f"checkpoint {folder} is corrupt: {relative} {state}. Restore it from a copy, or resume "
                    f"from another step (delete this step's folder)")

    def _restore(self, step: int, items: tuple, **args):
        """The manager's restore of ``args`` at ``step``, verified first; orbax's errors name the folder."""
        self.verify(step, items)
        folder = os.path.join(self.directory, str(int(step)))
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**args))
        except CorruptCheckpointError:
            raise
        except Exception as err:  # orbax / tensorstore errors, kept as the cause
            raise CorruptCheckpointError(f"cannot restore checkpoint {folder}: {type(err).__name__}: {err}") from err

    def _check_config(self, meta: dict, step: int) -> None:
        """A ``config.json`` edited after training raises, naming the fields that differ."""
        path = os.path.join(self.directory, "config.json")
        saved = meta.get("config") if isinstance(meta, dict) else None
        if saved is None or not os.path.exists(path):
            return
        current = _json_like(read_config(self.directory))
        changed = _config_differences(saved, current)
        if changed:
            raise ValueError(f"{path} differs from the config checkpoint {step} was trained with: "
                             + "; ".join(changed[:8]) + ". Restore the training config (the weights do not fit "
                             "another one), or train again")

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The best step among those saved with metrics (None if there is none)."""
        return self._manager.best_step()

    def _step(self, which: str, step: Optional[int]) -> int:
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {which!r}")
        if step is None:
            step = self.latest_step() if which == "last" else self.best_step()
        if step is None:
            raise FileNotFoundError(f"no {which} checkpoint in {self.directory}")
        return step

    def restore(self, target_state, which: str = "last", step: Optional[int] = None):
        """``(state, meta)``: ``target_state`` with every saved field restored, in its structure,
        dtypes and shardings."""
        step = self._step(which, step)
        restored = self._restore(
            step, ("variables", "train", "meta"),
            variables=ocp.args.StandardRestore(_abstract({"params": target_state.params,
                                                          "batch_stats": target_state.batch_stats})),
            train=ocp.args.StandardRestore(_abstract({"step": target_state.step,
                                                      "opt_state": target_state.opt_state})),
            meta=ocp.args.JsonRestore())
        self._check_config(restored["meta"], step)
        variables, train = restored["variables"], restored["train"]
        state = target_state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                                     step=train["step"], opt_state=train["opt_state"])
        return state, restored["meta"]

    def restore_variables(self, target: Any, which: str = "best", step: Optional[int] = None) -> dict:
        """``{"params", "batch_stats"}`` alone (no optimizer state is read), into the structure of
        ``target`` (arrays, or ``jax.ShapeDtypeStruct`` as ``jax.eval_shape(model.init, ...)``
        gives)."""
        step = self._step(which, step)
        self._check_config(self._restore(step, ("meta",), meta=ocp.args.JsonRestore())["meta"], step)
        restored = self._restore(step, ("variables",), variables=ocp.args.StandardRestore(_abstract(
            {"params": target["params"], "batch_stats": target.get("batch_stats", {})})))
        return dict(restored["variables"])

    def close(self) -> None:
        self._manager.close()
