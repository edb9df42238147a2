"""Optimizer groups at their own learning rate: the task adapters (`adapter_learning_rate`) and the task heads
(`head_learning_rate`).

Both are set on the optimizer `Trainer.create_optimizer` built, before `Trainer.create_scheduler` wraps it: the
scheduler scales each group's own rate, so warm-up and decay apply to them as to the encoder.
"""

from __future__ import annotations

from collections.abc import Callable

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


def apply_own_rates(optimizer: torch.optim.Optimizer, module: nn.Module, adapter_lr: float | None,
                    head_lr: float | None) -> list[str]:
    """Give adapters and heads their own rates where set; returns a warning per rate that matched nothing."""
    unused = []
    if adapter_lr is not None and not move_to_own_rate(optimizer, module, is_adapter_parameter, adapter_lr):
        unused.append(f"adapter_learning_rate is set but the model has no adapters (sharing "
                      f"'{module.sharing.mode}'); it is unused.")
    if head_lr is not None and not move_to_own_rate(optimizer, module, is_head_parameter, head_lr):
        unused.append("head_learning_rate is set but the model has no trainable task heads (generation tasks "
                      "use their pretrained decoder); it is unused.")
    return unused
