"""What every saliency method shares: its options dataclass, its result type and its compiled call.

Each method's options are one frozen dataclass (``Rise``, ``SlidingWindow``, ``Lime``, ...,
defined next to the method): the defaults are written once, ``__post_init__`` checks them, and
the object is hashable. It is also a pytree: the options that do not change shapes (``p``,
``tolerance``, LIME's kernel width, the mask method's learning rate and weights) are its leaves,
traced under ``jit``, and the others are static, so a sweep over the former compiles once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp

from simexplain_jax.saliency.cache import describe


class SaliencyResult(NamedTuple):
    """What every single-pair method returns.

    Attributes:
      maps: ``[H, W]`` (one reference) or ``[K, H, W]`` float32 saliency maps.
      passes: int32 scalar, the perturbed (or differentiated) query forward passes used.
      error: ``[]`` or ``[K]``: each map's estimated standard error over its range where the
        method estimates it (RISE with ``tolerance``), NaN otherwise.
      correspondence: the second-order (pair) methods' cores only: ``[K, hq, wq, hr, wr]``, whose
        row sums the maps are; None for the first-order methods.
    """

    maps: jax.Array
    passes: jax.Array
    error: jax.Array
    correspondence: Optional[jax.Array] = None


def result(maps, passes, error=None, correspondence=None) -> SaliencyResult:
    """A ``SaliencyResult`` of ``[K, H, W]`` maps (``error`` NaN when None); traceable."""
    if error is None:
        error = jnp.full(maps.shape[:1], jnp.nan, jnp.float32)
    return SaliencyResult(maps, jnp.asarray(passes, jnp.int32), error, correspondence)


def squeeze(out: SaliencyResult, single: bool) -> SaliencyResult:
    """The result for one reference (``[H, W]`` maps, scalar error) when ``single``."""
    if not single:
        return out
    corr = None if out.correspondence is None else out.correspondence[0]
    return SaliencyResult(out.maps[0], out.passes, out.error[0], corr)


class MethodOptions:
    """Base of the options dataclasses (use the ``options_class`` decorator).

    Class attributes: ``method`` (the name ``explain_pairs`` knows it by), ``references``
    (``"embeddings"``: ``[K, D]``; ``"images"``: ``[K, H, W, C]``, variable reference),
    ``traced`` (the fields traced under ``jit``), ``split_masks`` (can divide a query's masks over
    the mesh's ``"masks"`` axis), ``segments`` (takes per-query superpixels) and
    ``queries_per_device`` (queries vmapped together on one device by default) and
    ``second_order`` (a pair method: its core also returns the correspondence, and its options
    have ``passes_per_pair(dim)``, the forward (or backward) passes one pair costs).
    """

    method: ClassVar[str]
    references: ClassVar[str]
    traced: ClassVar[tuple] = ()
    split_masks: ClassVar[bool] = False
    segments: ClassVar[bool] = False
    queries_per_device: ClassVar[int] = 1
    second_order: ClassVar[bool] = False

    def replace(self, **changes) -> "MethodOptions":
        """A copy with ``changes`` applied (checked); an unknown name raises a ValueError naming the options."""
        check_names(type(self), changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The options as JSON-able data (functions by module and name), e.g. for a cache's metadata."""
        return {f.name: describe(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def core(self, embed_fn, query, references, key, *extra, **context) -> SaliencyResult:
        """``[K, H, W]`` maps of ``query`` for ``references [K, ...]``; traceable."""
        raise NotImplementedError


def set_field(options, name: str, value: Any) -> None:
    """Stores a checked value in a frozen options object (for ``__post_init__``)."""
    object.__setattr__(options, name, value)


def check_names(cls, given) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {cls.method!r}; its options are {sorted(names)}")


def options_class(method: str, *, references: str, traced: tuple = (), split_masks: bool = False,
                  segments: bool = False, queries_per_device: int = 1, second_order: bool = False):
    """Makes a class a frozen options dataclass and a pytree whose leaves are the ``traced`` fields."""

    def wrap(cls):
        cls.method, cls.references, cls.traced = method, references, tuple(traced)
        cls.split_masks, cls.segments, cls.queries_per_device = split_masks, segments, queries_per_device
        cls.second_order = second_order
        cls = dataclasses.dataclass(frozen=True)(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        static = tuple(n for n in names if n not in cls.traced)

        def flatten(options):
            return ([getattr(options, n) for n in cls.traced], tuple(getattr(options, n) for n in static))

        def unflatten(aux, children):  # no __post_init__: the leaves may be tracers
            options = object.__new__(cls)
            for name, value in zip(static, aux):
                object.__setattr__(options, name, value)
            for name, value in zip(cls.traced, children):
                object.__setattr__(options, name, value)
            return options

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
        return cls

    return wrap


def resolve(cls, options: Optional[MethodOptions], overrides: dict) -> MethodOptions:
    """The options a single-pair function runs with: ``options`` (default ``cls()``) with the
    keyword ``overrides`` applied; a wrong type or an unknown name raises, naming it."""
    if options is None:
        check_names(cls, overrides)
        return cls(**overrides)
    if type(options) is not cls:
        raise TypeError(f"options must be sx.saliency.{cls.__name__}(...) for this method, got "
                        f"{type(options).__name__}")
    return options.replace(**overrides) if overrides else options


@dataclasses.dataclass(frozen=True)
class CoreCall:
    """One query's work as ``parallel.map_queries`` / ``replicated_call`` run it: hashable and
    compared by value, holding only how the call is placed (which mesh axis divides the masks,
    LIME's superpixel capacity), so one compiled program serves every value of the traced options.

    ``call((embed_fn, options), query, references, key_data, *extra)`` runs
    ``options.core(embed_fn, query, references, wrap_key_data(key_data), *extra, **context)``
    (a ``SaliencyResult``): keys travel as raw key data through ``shard_map``.
    """

    context: tuple = ()  # sorted (name, value) pairs

    @classmethod
    def of(cls, **context) -> "CoreCall":
        return cls(tuple(sorted(context.items())))

    def __call__(self, shared, query, references, key_data, *extra):
        embed_fn, options = shared
        key = jax.random.wrap_key_data(key_data)
        return options.core(embed_fn, query, references, key, *extra, **dict(self.context))
