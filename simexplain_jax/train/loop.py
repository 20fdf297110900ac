"""The training loop shared by the experiments: steps, periodic evaluation, checkpoints, resume.

Resuming restores the train state and the data iterator's state from the last checkpoint, so a
run killed at any moment and started again continues from the last saved step with exactly the
batches an uninterrupted run would have seen.

A non-finite loss stops the run: the first step whose loss is NaN or infinite is tracked on
device (no synchronisation per step) and checked before every evaluation and save, so a
``FloatingPointError`` names that step and no state trained through it is ever saved (as the
latest or as the best checkpoint). The parameters themselves are checked before every save too
(a loss can stay finite while they are NaN: normalised NaN embeddings give a constant loss).

Every save records the evaluation history so far, so a resumed run returns the whole history.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from simexplain_jax.checkpoint import Checkpointer


@jax.jit
def _first_nonfinite(first, loss, step):
    """``step`` if ``loss`` is the first non-finite one seen (``first`` is -1 until then)."""
    return jnp.where((first < 0) & ~jnp.all(jnp.isfinite(loss)), step, first)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def restore_or_init(checkpointer: Checkpointer, state, iterator) -> tuple[object, int, list]:
    """Restores ``state`` and ``iterator`` from the last checkpoint if there is one.

    Returns ``(state, start_step, history)``: the evaluations recorded up to that checkpoint.
    """
    if checkpointer.latest_step() is None:
        return state, 0, []
    state, meta = checkpointer.restore(state)
    if "iterator" in meta and hasattr(iterator, "set_state"):
        iterator.set_state(meta["iterator"].encode())
    return state, int(meta["step"]), list(meta.get("history", []))


def stalled(history: list, metric: str, mode: str, patience: int) -> bool:
    """Whether none of the last ``patience`` evaluations of ``history`` improved on the best
    ``metric`` before them (``mode``: ``"max"`` or ``"min"``; a tie is no improvement); never with
    ``patience`` 0."""
    values = [h[metric] for h in history if metric in h]
    if patience < 1 or len(values) <= patience:
        return False
    earlier, recent = values[:-patience], values[-patience:]
    return max(recent) <= max(earlier) if mode == "max" else min(recent) >= min(earlier)


def fit(state, train_step: Callable, iterator, *, num_steps: int, checkpointer: Checkpointer,
        evaluate: Optional[Callable[[object], dict]] = None, eval_every: int = 0, checkpoint_every: int = 0,
        on_step: Optional[Callable[[int, dict], None]] = None, patience: int = 0):
    """Runs ``train_step`` from the checkpointed step (or 0) up to ``num_steps``.

    Every ``eval_every`` steps (and at the end) ``evaluate(state)`` returns metrics (holding the
    checkpointer's metric) and the state is saved with them, competing for the best checkpoint;
    every ``checkpoint_every`` steps (and at the end) the state is saved. Every save holds the
    iterator's state and the history, so any of them resumes exactly. Returns ``(state, history)``
    where history lists ``{"step", **metrics}`` of every evaluation of the run, those before a
    resume included.

    ``train_step``'s metrics must hold ``"loss"``: a non-finite loss raises ``FloatingPointError``
    naming the first such step, before anything trained through it is evaluated or saved; so do
    non-finite parameters, checked before each evaluation and save.

    ``patience`` > 0 stops early: after an evaluation, when the checkpointer's metric has not
    improved on its best for that many evaluations in a row (the state is saved at that step; a
    resumed run that finds it so in the restored history stops at once). The best checkpoint is
    the one the full run would have chosen so far.
    """
    state, step, history = restore_or_init(checkpointer, state, iterator)
    first_bad = jnp.asarray(-1, jnp.int32)
    if stalled(history, checkpointer.metric, checkpointer.mode, patience):
        return state, history

    def check_finite():
        bad = int(first_bad)
        if bad >= 0:
            raise FloatingPointError(
                f"the training loss is NaN or infinite at step {bad}: stopped before saving (the last good "
                f"checkpoint in {checkpointer.directory} is kept); lower the learning rate or check the data")
        if not bool(_all_finite(state.params)):
            raise FloatingPointError(
                f"the model's parameters are NaN or infinite at step {step} (the loss was finite): stopped before "
                f"saving (the last good checkpoint in {checkpointer.directory} is kept); lower the learning rate")

    def meta(step):
        data = {"step": step, "history": history}
        if hasattr(iterator, "get_state"):
            data["iterator"] = iterator.get_state().decode()
        return data

    while step < num_steps:
        batch = next(iterator)
        state, metrics = train_step(state, batch)
        step += 1
        if "loss" in metrics:
            first_bad = _first_nonfinite(first_bad, metrics["loss"], step)
        if on_step is not None:
            on_step(step, metrics)
        last = step == num_steps
        results = None
        will_save = (evaluate is not None and ((eval_every and step % eval_every == 0) or last)) or (
            checkpoint_every and step % checkpoint_every == 0) or last
        if will_save:
            check_finite()
        if evaluate is not None and ((eval_every and step % eval_every == 0) or last):
            try:
                results = {k: float(v) for k, v in evaluate(state).items()}
            except FloatingPointError as err:  # diverged or collapsed embeddings (train.similarity.check_embeddings)
                raise FloatingPointError(f"step {step}: {err}; stopped before saving (the last good checkpoint in "
                                         f"{checkpointer.directory} is kept)") from None
            history.append({"step": step, **results})
        if results is not None or (checkpoint_every and step % checkpoint_every == 0) or last:
            checkpointer.save(step, state, meta(step), metrics=results)
        if results is not None and stalled(history, checkpointer.metric, checkpointer.mode, patience):
            break
    jax.block_until_ready(state)
    check_finite()
    return state, history
