"""The saliency methods by name: each name's options class, and options built from a plain dict.

``options_for("rise", num_masks=500)`` is ``Rise(num_masks=500)``: experiment configs keep plain
dicts of options under ``methods.<name>`` and build the options object with it.
"""

from __future__ import annotations

from typing import Optional, Union

from simexplain_jax.saliency._cross_jacobian import IntegratedCrossJacobian
from simexplain_jax.saliency._gradients import Gradient, IntegratedGradients
from simexplain_jax.saliency._lime import Lime, LimeVariable
from simexplain_jax.saliency._occlusion import SlidingWindow, SlidingWindowVariable
from simexplain_jax.saliency._options import MethodOptions, check_names
from simexplain_jax.saliency._perturbation import Perturbation, PerturbationVariable
from simexplain_jax.saliency._pooled import PooledPair
from simexplain_jax.saliency._random import Random
from simexplain_jax.saliency._rise import Rise, RiseVariable
from simexplain_jax.saliency._rise_pair import RisePair

OPTIONS = {cls.method: cls for cls in (Rise, RiseVariable, SlidingWindow, SlidingWindowVariable, Lime, LimeVariable,
                                       Perturbation, PerturbationVariable, Gradient, IntegratedGradients, Random,
                                       PooledPair, RisePair, IntegratedCrossJacobian)}
METHODS = tuple(OPTIONS)
# the pair methods: their results also hold the correspondence (explain_pairs(..., correspondences=True))
SECOND_ORDER = tuple(name for name, cls in OPTIONS.items() if cls.second_order)


def options_for(method: str, **config) -> MethodOptions:
    """The options object of ``method`` with ``config`` replacing its defaults.

    Args:
      method: one of ``METHODS``.
      **config: the method's options by name, e.g. ``num_masks=500``.

    Returns:
      The checked options, e.g. ``Rise(num_masks=500)``; an unknown method or option raises a
      ValueError naming the valid ones.
    """
    if method not in OPTIONS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_names(OPTIONS[method], config)
    return OPTIONS[method](**config)


def as_options(method: Union[str, MethodOptions], config: Optional[dict] = None) -> MethodOptions:
    """``method`` as an options object: a method name with ``config`` (a dict of options), or an
    options object (with ``config``, if given, replacing some of its options)."""
    if isinstance(method, MethodOptions):
        return method.replace(**config) if config else method
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name (one of {METHODS}) or an options object such as "
                        f"sx.saliency.Rise(...), got {type(method).__name__}")
    return options_for(method, **dict(config or {}))
