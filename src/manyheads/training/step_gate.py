"""Skipping one optimizer step (a NaN/inf loss) through the optimizer and scheduler that `MultiTaskTrainer` creates.

`Trainer` steps the optimizer and then the scheduler at the end of every accumulation window. A step whose loss was
not finite must change nothing: no parameter update, no optimizer state (Adam's moments), no learning-rate step.
The gate wraps the `step` method of the two objects as `create_optimizer` / `create_scheduler` return them (a
user-supplied pair included), so a skipped step is a no-op of public methods, whatever accelerate does with its own
gradient-sync flag. The optimizer step always comes before the scheduler step, so the scheduler skips exactly when
the optimizer step just before it was skipped. (DeepSpeed steps its own engine and is not covered.)
"""

from __future__ import annotations

import types
from typing import Any

import torch
from transformers.optimization import GreedyLR
from transformers.utils import logging

logger = logging.get_logger(__name__)

_METRIC_SCHEDULERS = (torch.optim.lr_scheduler.ReduceLROnPlateau, GreedyLR)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a NaN/inf loss; the last checkpoint is left as it was."""


class NonFiniteSteps:
    """The tasks with a NaN/inf loss in the current optimizer step, the skipped steps in a row, and the gate."""

    def __init__(self) -> None:
        self.tasks: set[str] = set()
        self.streak = 0
        self.gate = StepGate()

    def skip(self, step: int, limit: int) -> None:
        """Skip optimizer step `step` (one warning line), or stop with `NonFiniteLossError` at `limit` in a row."""
        tasks = sorted(self.tasks) or ["(another rank)"]
        self.tasks.clear()
        self.streak += 1
        logger.warning("manyheads: non-finite loss for task(s) %s at step %d; this update is skipped (%d in a row, "
                       "limit %d).", ", ".join(tasks), step, self.streak, limit)
        if self.streak >= limit:
            raise NonFiniteLossError(
                f"{self.streak} consecutive optimizer steps had a non-finite loss (last: task(s) {', '.join(tasks)} "
                f"at step {step}); stopping. The last saved checkpoint is intact: lower the learning rate or check "
                "the data, then resume from it.")
        self.gate.skip_next()


class StepGate:
    """Lets `skip_next()` turn the next optimizer step, and the scheduler step after it, into no-ops."""

    def __init__(self) -> None:
        self._skip_next = False
        self._last_skipped = False

    def skip_next(self) -> None:
        self._skip_next = True

    def wrap_optimizer(self, optimizer: Any) -> Any:
        def gate(inner: Any, *args: Any, **kwargs: Any) -> Any:
            self._last_skipped, self._skip_next = self._skip_next, False
            return None if self._last_skipped else inner(*args, **kwargs)

        return self._wrap(optimizer, gate)

    def wrap_scheduler(self, scheduler: Any) -> Any:
        """The scheduler behind a gated `step`. Not a patched method: Trainer saves `scheduler.state_dict()`, which
        is the instance's `__dict__`. Schedulers stepped on metrics at evaluation (ReduceLROnPlateau) stay as they
        are: they never step with an optimizer step."""
        if isinstance(scheduler, GatedScheduler) or isinstance(scheduler, _METRIC_SCHEDULERS):
            return scheduler
        return GatedScheduler(scheduler, self)

    def scheduler_may_step(self) -> bool:
        skipped, self._last_skipped = self._last_skipped, False
        return not skipped

    def _wrap(self, target: Any, gate: Any) -> Any:
        inner = target.step
        if getattr(inner, "_step_gate", None) is self:  # train() called again on the same objects
            return target

        def step(_target: Any, *args: Any, **kwargs: Any) -> Any:
            return gate(inner, *args, **kwargs)

        step._step_gate = self  # type: ignore[attr-defined]
        # A user's scheduler built before training already wrapped `optimizer.step` to check the call order; keep
        # its mark, or torch warns that the step was overridden after the scheduler was made.
        if getattr(inner, "_wrapped_by_lr_sched", False):
            step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        # A bound method, as the original was: torch's LR schedulers re-wrap `optimizer.step` through `__func__`.
        target.step = types.MethodType(step, target)
        return target


class GatedScheduler:
    """A learning-rate scheduler whose `step` does nothing right after a skipped optimizer step; every other
    attribute (`state_dict`, `get_last_lr`, `last_epoch`, ...) is the wrapped scheduler's own."""

    def __init__(self, scheduler: Any, gate: StepGate) -> None:
        self.scheduler = scheduler
        self._gate = gate

    def step(self, *args: Any, **kwargs: Any) -> Any:
        return self.scheduler.step(*args, **kwargs) if self._gate.scheduler_may_step() else None

    def __getattr__(self, name: str) -> Any:  # only called for what this class does not define
        if name in ("scheduler", "_gate"):  # not set yet (copy, unpickling): no endless lookup through itself
            raise AttributeError(name)
        return getattr(self.scheduler, name)
