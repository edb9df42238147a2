"""The interface of loss weighting methods: one weight per task for one-task micro-batches.

A method sees each micro-batch's loss as it is computed (`forward`), may update its state once per optimizer
step (`step_end`) and reports the weights it used (`weights`). Learnable weights are `nn.Parameter`s trained by
the Trainer's optimizer (in their own parameter group); histories live in tensors or `get_extra_state`, so
`state_dict()` is the whole state a checkpoint needs for an exact resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# Sums a tensor over all ranks (identity in a single process); given by the trainer.
Reduce = Callable[[torch.Tensor], torch.Tensor]


def single_process(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class LossWeighting(nn.Module):
    """Base class. Subclasses override `current` (and, when stateful, `observe` / `step_end`).

    Args:
        tasks: task names, in the model's order.
    """

    # Learning rate of the method's own parameters (a separate optimizer group); None = no parameters.
    param_lr: float | None = None

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        if not tasks:
            raise ValueError("a weighting needs at least one task")
        self.tasks = list(tasks)
        self.index = {name: i for i, name in enumerate(self.tasks)}
        self.step = 0

    def current(self) -> torch.Tensor:
        """The weight of every task for the current optimizer step (a 1-D tensor in task order)."""
        return torch.ones(len(self.tasks))

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        """The loss of one task's micro-batch as it enters backward."""
        return loss * self.current()[self.index[task]].to(loss.device, loss.dtype)

    def weights(self) -> dict[str, float]:
        """The weights used at the current step, by task (logged as `weight_<task>`)."""
        return dict(zip(self.tasks, self.current().detach().float().cpu().tolist()))

    def observe(self, task: str, loss: torch.Tensor) -> None:
        """Record the unweighted, detached loss of one micro-batch."""

    def step_end(self, reduce: Reduce = single_process) -> None:
        """Called after every optimizer step; `reduce` sums a tensor over ranks."""
        self.step += 1

    def get_extra_state(self) -> dict:
        return {"step": self.step}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])
