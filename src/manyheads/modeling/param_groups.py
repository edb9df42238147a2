"""Optimizer groups at their own learning rate: the task adapters (`adapter_learning_rate`) and the task heads
(`head_learning_rate`, and `head_learning_rate_scaling="share"`: each head's rate divided by its share of steps).

Both are set on the optimizer `Trainer.create_optimizer` built, before `Trainer.create_scheduler` wraps it: the
scheduler scales each group's own rate, so warm-up and decay apply to them as to the encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .adapters import is_adapter_parameter


def is_head_parameter(name: str) -> bool:
    """Whether a parameter name (relative to the multi-task model) belongs to a task head: the layers built fresh
    for each task on top of the encoder. Seq2seq decoders are pretrained, so they are not heads."""
    return name.startswith("heads.")


def move_to_own_rate(optimizer: torch.optim.Optimizer, module: nn.Module, selects: Callable[[str], bool],
                     lr: float) -> bool:
    """Move the parameters of `module` whose name `selects` out of the optimizer's groups into groups of their own
    at `lr`, each keeping the options (weight decay) of the group it came from. False when none matched."""
    chosen = {id(p) for n, p in module.named_parameters() if selects(n)}
    if not chosen:
        return False
    groups = []
    for group in optimizer.param_groups:
        own = [p for p in group["params"] if id(p) in chosen]
        rest = [p for p in group["params"] if id(p) not in chosen]
        options = {k: v for k, v in group.items() if k != "params"}
        groups += [{**options, "params": rest}] if rest else []
        groups += [{**options, "params": own, "lr": lr}] if own else []
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
    return True


def head_step_shares(sampler: Any, head_of: Callable[[str], str]) -> dict[str, float]:
    """Each head's share of the optimizer steps that train it: the fraction of the first epoch's steps in the
    training batch sampler's schedule holding one of its tasks (datasets sharing a head, `head_of(task)`, count
    together). A step is `accumulation` micro-batches, each of one task, or of `group_size` tasks with task-group
    steps (a gradient aggregator), so a step can train several heads."""
    units = sampler.groups(0) if hasattr(sampler, "groups") else [[t] for t in sampler.task_order(0)]
    size = max(1, int(getattr(sampler, "accumulation", 1)))
    steps = [{head_of(sampler.names[t]) for unit in units[i:i + size] for t in unit}
             for i in range(0, len(units), size)]
    heads = dict.fromkeys(head_of(name) for name in sampler.names)
    return {head: sum(head in step for step in steps) / len(steps) for head in heads}


def apply_own_rates(optimizer: torch.optim.Optimizer, module: nn.Module, args: Any,
                    head_shares: dict[str, float] | None = None) -> list[str]:
    """Give adapters and heads their own rates where set (`args.adapter_learning_rate`, `args.head_learning_rate`;
    with `head_shares`, each head's rate is divided by its share of steps); returns a warning per rate that matched
    nothing."""
    unused = []
    adapter_lr, head_lr = args.adapter_learning_rate, args.head_learning_rate
    if adapter_lr is not None and not move_to_own_rate(optimizer, module, is_adapter_parameter, adapter_lr):
        unused.append(f"adapter_learning_rate is set but the model has no adapters (sharing "
                      f"'{module.sharing.mode}'); it is unused.")
    if head_shares is not None:
        # A head sees a gradient on about `share` of the steps while the encoder moves on every one; Adam's step
        # size hardly depends on the gradient's scale, so dividing the rate by the share evens out how far each
        # head can travel over the run.
        base = head_lr if head_lr is not None else args.learning_rate
        moved = [move_to_own_rate(optimizer, module, _in_head(head), base / share if share > 0 else base)
                 for head, share in head_shares.items()]  # share 0: a head never trained keeps the base rate
        if not any(moved):
            unused.append("head_learning_rate_scaling is 'share' but the model has no trainable task heads; it is "
                          "unused.")
    elif head_lr is not None and not move_to_own_rate(optimizer, module, is_head_parameter, head_lr):
        unused.append("head_learning_rate is set but the model has no trainable task heads (generation tasks "
                      "use their pretrained decoder); it is unused.")
    return unused


def _in_head(head: str) -> Callable[[str], bool]:
    return lambda name: name.startswith(f"heads.{head}.")
