"""A registry of dataset adapters, by name.

An adapter (``adapter.DatasetAdapter``) knows one dataset: how to prepare it and what the
experiments need from it. ``register(name)`` adds an adapter class; ``get(dataset)`` gives the
adapter of a dataset name (``"awa2"``, or ``"shapes/32px"`` for one of its configs).
"""

from __future__ import annotations

from typing import Callable

_ADAPTERS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """A class decorator that registers a dataset adapter under ``name``.

    Args:
      name: the dataset's name (for a TFDS dataset, its builder's name, without a config).

    Returns:
      The decorator; it returns the class unchanged.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty dataset name without '/', got {name!r}")

    def decorator(cls: type) -> type:
        known = _ADAPTERS.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"a dataset adapter is already registered as {name!r} ({known.__qualname__})")
        _ADAPTERS[name] = cls
        return cls

    return decorator


def registered() -> tuple[str, ...]:
    """The names adapters are registered under, sorted."""
    return tuple(sorted(_ADAPTERS))


def names() -> tuple[str, ...]:
    """Every dataset name ``get`` accepts (a registered name, or ``name/config`` for each config)."""
    return tuple(dataset for name in registered() for dataset in _ADAPTERS[name].dataset_names(name))


def get(dataset: str):
    """The adapter of ``dataset``.

    Args:
      dataset: a registered name, or ``name/config`` for a dataset with configs.

    Returns:
      An instance of the adapter class registered under the name before the ``/``.
    """
    if not isinstance(dataset, str) or dataset not in names():
        raise ValueError(f"dataset must be one of {names()}, got {dataset!r}")
    return _ADAPTERS[dataset.split("/")[0]](dataset)
