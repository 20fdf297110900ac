"""The training loop shared by the experiments: steps, periodic evaluation, checkpoints, resume.

Resuming restores the train state and the data iterator's state from the last checkpoint, so a
run killed at any moment and started again continues from the last saved step with exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax

from simexplain_jax.checkpoint import Checkpointer


def restore_or_init(checkpointer: Checkpointer, state, iterator) -> tuple[object, int]:
    """Restores ``state`` and ``iterator`` from the last checkpoint if there is one.

    Returns ``(state, start_step)``.
    """
    if checkpointer.latest_step() is None:
        return state, 0
    state, meta = checkpointer.restore(state)
    if "iterator" in meta and hasattr(iterator, "set_state"):
        iterator.set_state(meta["iterator"].encode())
    return state, int(meta["step"])


def fit(state, train_step: Callable, iterator, *, num_steps: int, checkpointer: Checkpointer,
        evaluate: Optional[Callable[[object], dict]] = None, eval_every: int = 0, checkpoint_every: int = 0,
        on_step: Optional[Callable[[int, dict], None]] = None):
    """Runs ``train_step`` from the checkpointed step (or 0) up to ``num_steps``.

    Every ``eval_every`` steps (and at the end) ``evaluate(state)`` returns metrics (holding the
    checkpointer's metric) and the state is saved with them, competing for the best checkpoint;
    every ``checkpoint_every`` steps (and at the end) the state is saved. Every save holds the
    iterator's state, so any of them resumes exactly. Returns ``(state, history)`` where history
    lists ``{"step", **metrics}`` of this call's evaluations.
    """
    state, step = restore_or_init(checkpointer, state, iterator)
    history = []

    def meta(step):
        data = {"step": step}
        if hasattr(iterator, "get_state"):
            data["iterator"] = iterator.get_state().decode()
        return data

    while step < num_steps:
        batch = next(iterator)
        state, metrics = train_step(state, batch)
        step += 1
        if on_step is not None:
            on_step(step, metrics)
        last = step == num_steps
        results = None
        if evaluate is not None and ((eval_every and step % eval_every == 0) or last):
            results = {k: float(v) for k, v in evaluate(state).items()}
            history.append({"step": step, **results})
        if results is not None or (checkpoint_every and step % checkpoint_every == 0) or last:
            checkpointer.save(step, state, meta(step), metrics=results)
    jax.block_until_ready(state)
    return state, history
