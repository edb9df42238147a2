"""Preemption: a SIGTERM during training ends the run with a complete checkpoint, ready to resume exactly.

Cluster schedulers (SLURM, Kubernetes, spot instances) send SIGTERM and wait a grace period before SIGKILL.
`Preemption` replaces the SIGTERM handler with one that only sets a flag (a handler that saved by itself would
run in the middle of a forward pass, or of a save). `PreemptionCallback` reads the flag at the end of each
optimizer step, asks the Trainer to save a checkpoint there and stop. A checkpoint taken at a step boundary
is an ordinary one, so `--resume` continues with bitwise the same weights as an uninterrupted run. (Trainer's
own `enable_jit_checkpoint` saves before the optimizer step of an unfinished step, which a resume cannot
replay exactly.)

`manyheads train` installs both, and then exits with `PREEMPTED_EXIT_CODE` (143 = 128 + SIGTERM, what a shell
reports for a process ended by SIGTERM) after printing where the checkpoint is and how to resume. It is not 0
on purpose: the run is not finished, and a scheduler that restarts failed jobs must restart this one.

From Python:

```python
from manyheads.training.preemption import Preemption, PreemptionCallback

with Preemption() as preemption:            # SIGTERM now only sets a flag
    callback = PreemptionCallback(preemption)
    trainer.add_callback(callback)
    trainer.train()
if callback.preempted:                      # callback.checkpoint is the folder to resume from
    ...
```

Under DDP every rank receives the signal, but not necessarily before the same step: the flag is combined
across ranks at each step (one scalar all-reduce), so all ranks save the same step and stop together.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

PREEMPTED_EXIT_CODE = 143


class Preemption:
    """Turns the given signals into a flag while installed (a context manager; the old handlers come back
    on exit).

    Args:
        signals: the signals that mean "save and stop"; SIGTERM by default.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a save-and-stop as if `signum` had been received."""
        self.received = signum

    def _handle(self, signum: int, frame: Any) -> None:
        # Only a flag: the training loop saves at the next step boundary, outside any forward or save.
        self.received = signum

    def install(self) -> Preemption:
        # Python only lets the main thread set signal handlers; elsewhere (a notebook worker thread) the
        # default behaviour stays and `request()` is the way in.
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> Preemption:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()


class PreemptionCallback(TrainerCallback):
    """Saves a checkpoint and stops training at the first step end after `preemption.requested`.

    After `train()` returns, `preempted` tells whether it stopped for that reason and `checkpoint` is the folder
    saved at that step.
    """

    def __init__(self, preemption: Preemption):
        self.preemption = preemption
        self.stopped_at: int | None = None
        self.checkpoint: str | None = None
        self._saved_steps: set[int] = set()

    @property
    def preempted(self) -> bool:
        return self.stopped_at is not None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_at is None and _any_rank(self.preemption.requested, args):
            self.stopped_at = state.global_step
            self.checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._saved_steps.add(state.global_step)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped_at is None:
            return
        # The epoch is cut short: no end-of-epoch evaluation inside the grace period. Save here only when the
        # step's own save did not happen (with save_strategy "best", an evaluation at that step can cancel it).
        control.should_evaluate = False
        control.should_save = self.stopped_at not in self._saved_steps


def _any_rank(flag: bool, args: Any) -> bool:
    """True when any rank has the flag, so that every rank saves the same step and stops together."""
    if getattr(args, "world_size", 1) <= 1:
        return flag
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


__all__ = ["PREEMPTED_EXIT_CODE", "Preemption", "PreemptionCallback"]
