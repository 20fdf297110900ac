"""Checkpoints with orbax: one ``CheckpointManager`` that keeps the latest step and the best one by a
metric.

Layout under a checkpoint folder: one folder per kept step (``<step>/``) holding three items,
``variables`` (``{"params", "batch_stats"}``: all that inference needs), ``train``
(``{"step", "opt_state"}``: what resuming needs besides) and ``meta`` (JSON: the step, the data
iterator's state, the training config); beside them ``config.json`` (the training config,
``trained_config``), ``checkpointer.json`` (the metric, its mode and the folder's format) and
``digests/<step>.json`` (the SHA-256 of every file of the step, ``integrity``, required for every
step of this format). After each save, orbax's preservation
policy deletes every step but the latest and the best by the metric (among the steps saved with
metrics); orbax writes each step to a temporary folder and renames it.

A restore checks the files it reads against the step's digests and the folder's ``config.json``
against the config saved with the step, and raises naming the file or the fields that differ.
``Checkpointer.open`` opens a folder for reading only: it creates and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from simexplain_jax import integrity
from simexplain_jax.io import write_json_atomic
from simexplain_jax.trained_config import (CONFIG_FILE, as_json, check_config_drift, config_differences,
                                           read_config, write_config)

__all__ = ["Checkpointer", "CorruptCheckpointError", "read_config"]

MODES = ("max", "min")
WHICH = ("last", "best")
DIGESTS = "digests"
SETTINGS = "checkpointer.json"
ITEMS = ("variables", "train", "meta")
FORMAT = 2  # every step has its digest file


class CorruptCheckpointError(integrity.CorruptFileError):
    """A checkpoint's files differ from the digests written when it was saved."""


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


def _read_settings(directory: str) -> tuple[str, str, int]:
    """The folder's ``(metric, mode, format)``; folders written before digests were required have
    no format (1)."""
    path = os.path.join(directory, SETTINGS)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint folder {directory} does not exist")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {directory} a checkpoint folder of a training run?")
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        metric, mode, version = stored["metric"], stored["mode"], int(stored.get("format", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} does not name the checkpoints' metric and mode "
                         f"({type(err).__name__}: {err})") from None
    return metric, mode, version


def saved_steps(directory: str) -> list[int]:
    """The steps a checkpoint folder holds (their folders), without opening it."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


class Checkpointer:
    """Keeps the latest checkpoint and the best one by a metric.

    A saved ``state`` has ``params``, ``batch_stats``, ``opt_state`` and ``step`` (a flax train
    state, e.g. ``train.similarity.TrainState``); ``meta`` is a JSON dict (e.g. the data
    iterator's state).

    Opening a folder that already holds steps checks first, and writes nothing when it refuses:
    its metric and mode must be the ones given, and its ``config.json`` the given config (a model
    is never resumed, nor its config overwritten, under another config).

    Args:
      directory: the checkpoint folder, created if needed.
      metric: the name of the metric the best checkpoint is chosen by.
      mode: ``"max"`` (higher is better) or ``"min"``.
      config: the training config, written to ``config.json`` and saved with every step.
    """

    def __init__(self, directory: str, *, metric: str, mode: str = "max", config: Optional[dict] = None):
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"metric must name the metric the best checkpoint is chosen by, got {metric!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        directory = os.path.abspath(directory)
        steps = saved_steps(directory)
        version = FORMAT
        if steps:  # a run to resume: everything is checked before anything is written
            stored_metric, stored_mode, version = _read_settings(directory)
            if (stored_metric, stored_mode) != (metric, mode):
                raise ValueError(f"checkpoint folder {directory} holds steps {steps} chosen by {stored_metric!r} "
                                 f"({stored_mode}); this run asks for {metric!r} ({mode}). Use another folder")
            if config is not None and os.path.exists(os.path.join(directory, CONFIG_FILE)):
                changed = config_differences(read_config(directory), as_json(config), ("when trained", "now"))
                if changed:
                    raise ValueError(
                        f"checkpoint folder {directory} holds a model trained with another config (steps {steps}): "
                        + "; ".join(changed[:8])
                        + ". Nothing was changed: use another workdir, or run with the config it was trained with")
        os.makedirs(directory, exist_ok=True)
        write_json_atomic(os.path.join(directory, SETTINGS), {"metric": metric, "mode": mode, "format": version})
        if config is not None:
            write_config(directory, config)
        self._start(directory, metric, mode, None if config is None else as_json(config), read_only=False,
                    version=version)

    @classmethod
    def open(cls, directory: str) -> "Checkpointer":
        """Opens a checkpoint folder for reading, with the metric and mode it was written with.

        Nothing is created or written; ``save`` raises.

        Args:
          directory: a folder a ``Checkpointer`` wrote.

        Returns:
          A read-only ``Checkpointer``.
        """
        directory = os.path.abspath(directory)
        metric, mode, version = _read_settings(directory)
        if mode not in MODES:
            raise ValueError(f"{os.path.join(directory, SETTINGS)}: mode must be one of {MODES}, got {mode!r}")
        reader = cls.__new__(cls)
        reader._start(directory, metric, mode, None, read_only=True, version=version)
        return reader

    def _start(self, directory: str, metric: str, mode: str, config: Optional[dict], read_only: bool,
               version: int) -> None:
        self.directory, self.metric, self.mode = directory, metric, mode
        self.read_only, self.format = read_only, version
        self._config = config
        best = lambda metrics: metrics[metric]  # noqa: E731
        policy = preservation_policy.AnyPreservationPolicy([
            preservation_policy.LatestN(n=1),
            preservation_policy.BestN(get_metric_fn=best, reverse=mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=best, best_mode=mode,
                                               create=not read_only, read_only=read_only,
                                               save_interval_steps=0 if read_only else 1,
                                               enable_async_checkpointing=False)
        absl_logger = logging.getLogger("absl")  # orbax warns that a folder opened read-only is read-only
        level = absl_logger.level
        absl_logger.setLevel(max(level, logging.ERROR) if read_only else level)
        try:
            self._manager = ocp.CheckpointManager(directory, options=options)
        finally:
            absl_logger.setLevel(level)

    def save(self, step: int, state, meta: dict, metrics: Optional[dict] = None) -> None:
        """Saves ``state`` and ``meta`` at ``step``.

        Args:
          step: the training step.
          state: the train state.
          meta: JSON data saved with the step.
          metrics: the step's metrics, holding the checkpointer's metric; with them the step
            competes for the best checkpoint.
        """
        if self.read_only:
            raise ValueError(f"checkpoint folder {self.directory} is open for reading (Checkpointer.open); "
                             "save through Checkpointer(directory, metric=...)")
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
        integrity.write_digests(self._digest_path(step), os.path.join(self.directory, str(step)))
        kept = {str(s) for s in self._manager.all_steps()}
        for name in os.listdir(os.path.join(self.directory, DIGESTS)):
            if name.endswith(".json") and name[:-5] not in kept:
                os.remove(os.path.join(self.directory, DIGESTS, name))

    def verify(self, step: int, items=ITEMS) -> None:
        """Checks the files of ``items`` of ``step`` against the digests saved with it.

        Every step of a folder written by this version has its digest file (written right after
        the step, atomically); one without it is refused. Folders of the earlier format (no
        ``format`` in ``checkpointer.json``) are checked where they have digests.

        Args:
          step: the step.
          items: the step's items to check.

        Raises:
          CorruptCheckpointError: naming the step folder and the first file that differs or is missing.
        """
        folder = os.path.join(self.directory, str(int(step)))
        try:
            expected = integrity.read_digests(self._digest_path(step))
        except integrity.CorruptFileError as err:
            raise CorruptCheckpointError(f"checkpoint {folder}: its {err}") from None
        if expected is None and self.format >= 2:
            raise CorruptCheckpointError(
                f"checkpoint {folder} has no digest file ({self._digest_path(step)}): its save did not finish, or "
                "the file was removed, so its files cannot be trusted. Delete the step's folder to resume from the "
                "step before, or restore both from a copy")
        difference = None if expected is None else integrity.first_difference(folder, expected, items)
        if difference is not None:
            relative, state = difference
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
        check_config_drift(self.directory, meta.get("config") if isinstance(meta, dict) else None, step)

    def latest_step(self) -> Optional[int]:
        """The latest step (None if there is none)."""
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
        """Restores a whole train state.

        Args:
          target_state: a train state whose structure, dtypes and shardings the restored one takes.
          which: ``"last"`` or ``"best"``.
          step: a step to restore instead.

        Returns:
          ``(state, meta)``: ``target_state`` with every saved field restored, and the step's meta.
        """
        step = self._step(which, step)
        restored = self._restore(
            step, ITEMS,
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
        """Restores the variables alone (no optimizer state is read).

        Args:
          target: ``{"params", "batch_stats"}`` as arrays, or as ``jax.ShapeDtypeStruct`` (what
            ``jax.eval_shape(model.init, ...)`` gives).
          which: ``"best"`` or ``"last"``.
          step: a step to restore instead.

        Returns:
          ``{"params", "batch_stats"}`` in the structure of ``target``.
        """
        step = self._step(which, step)
        self._check_config(self._restore(step, ("meta",), meta=ocp.args.JsonRestore())["meta"], step)
        restored = self._restore(step, ("variables",), variables=ocp.args.StandardRestore(_abstract(
            {"params": target["params"], "batch_stats": target.get("batch_stats", {})})))
        return dict(restored["variables"])

    def close(self) -> None:
        """Releases the manager."""
        self._manager.close()
