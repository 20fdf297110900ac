"""The training config kept beside a checkpoint (``config.json``), and the check that it still is
the config the weights were trained with.

This module imports nothing of the project but ``io`` (anything may use it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from simexplain_jax.io import write_json_atomic

CONFIG_FILE = "config.json"


def as_json(config: Any) -> Any:
    """``config`` as the JSON data it is written as (values JSON cannot hold as ``str``)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def write_config(directory: str, config: dict) -> None:
    """Writes ``config`` to ``<directory>/config.json`` atomically."""
    write_json_atomic(os.path.join(directory, CONFIG_FILE), config)


def read_config(directory: str) -> dict:
    """The training config a checkpoint folder holds.

    Args:
      directory: a checkpoint folder (``checkpoint.Checkpointer``'s).

    Returns:
      The ``config.json`` in ``directory``, as a dict.
    """
    path = os.path.join(directory, CONFIG_FILE)
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


def config_differences(trained: dict, current: dict, labels: tuple[str, str] = ("when trained", "in config.json")
                       ) -> list[str]:
    """The top-level fields of two configs that differ, one line each (``labels`` name the two)."""
    keys = sorted(set(trained) | set(current))
    return [f"{k}: {trained.get(k, '(absent)')!r} {labels[0]}, {current.get(k, '(absent)')!r} {labels[1]}"
            for k in keys if trained.get(k) != current.get(k)]


def check_config_drift(directory: str, trained: dict | None, step: int) -> None:
    """Raises when the folder's ``config.json`` is no longer the config step ``step`` was trained with.

    Args:
      directory: the checkpoint folder.
      trained: the config saved with the step (None: nothing to compare, nothing checked).
      step: the step, for the message.
    """
    path = os.path.join(directory, CONFIG_FILE)
    if trained is None or not os.path.exists(path):
        return
    changed = config_differences(trained, as_json(read_config(directory)))
    if changed:
        raise ValueError(f"{path} differs from the config checkpoint {step} was trained with: "
                         + "; ".join(changed[:8]) + ". Restore the training config (the weights do not fit "
                         "another one), or train again")
