"""Balancing tasks: loss weighting (per one-task micro-batch) and gradient aggregation (per task group).

Two families, one explicit registry each. A weighting is a `LossWeighting` (see `base.py`); an aggregator is a
torchjd aggregator used by `TaskGroupStep`. `check_balancing` validates a run's choice at config time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .aggregation import AGGREGATORS, build_aggregator
from .base import LossWeighting
from .dwa import DynamicWeightAverage
from .equal import EqualWeighting
from .gradnorm import GradNormWeighting
from .rlw import RandomWeighting
from .static import StaticWeighting
from .uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": EqualWeighting,
    "static": StaticWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "rlw": RandomWeighting,
    "gradnorm": GradNormWeighting,
}

__all__ = ["AGGREGATORS", "WEIGHTINGS", "LossWeighting", "build_aggregator", "build_weighting", "check_balancing",
           "resolve_weighting"]


def resolve_weighting(balancing: Any, tasks: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The weighting name and kwargs a run uses: `static` with the tasks' `weight:` values when none is named
    and some task sets a weight other than 1."""
    name = balancing.weighting
    kwargs = dict(balancing.weighting_kwargs or {})
    custom = {t.name: float(t.weight) for t in tasks if float(t.weight) != 1.0}
    if name is None:
        name = "static" if custom and balancing.aggregator is None else "equal"
    if name == "static" and "weights" not in kwargs:
        kwargs["weights"] = {t.name: float(t.weight) for t in tasks}
    return name, kwargs


def build_weighting(balancing: Any, tasks: Sequence[Any], seed: int = 0) -> LossWeighting:
    """The `LossWeighting` of a run (`tasks` are `TaskConfig`s)."""
    name, kwargs = resolve_weighting(balancing, tasks)
    if name == "rlw":
        kwargs.setdefault("seed", seed)
    return WEIGHTINGS[name]([t.name for t in tasks], **kwargs)


def check_balancing(run: Any) -> list[str]:
    """Problems of the run's balancing choice, each naming the setting, the value and the fix."""
    balancing, tasks = run.balancing, run.tasks
    problems = []
    custom = sorted(t.name for t in tasks if float(t.weight) != 1.0)
    if custom and balancing.weighting not in (None, "static"):
        problems.append(f"tasks {custom} set 'weight', which only 'weighting: static' uses, but weighting is "
                        f"{balancing.weighting or balancing.aggregator!r}. Remove the task weights or use static.")
    try:
        name, kwargs = resolve_weighting(balancing, tasks)
        WEIGHTINGS[name]([t.name for t in tasks] or ["_"], **kwargs)
    except (TypeError, ValueError) as err:
        problems.append(f"weighting '{balancing.weighting}' with weighting_kwargs {balancing.weighting_kwargs}: "
                        f"{err}. Fix weighting_kwargs (see the method's docstring).")
    if balancing.aggregator is not None:
        problems.extend(_check_group_step(run))
    return problems


def _check_group_step(run: Any) -> list[str]:
    balancing, training = run.balancing, run.training
    name = balancing.aggregator
    problems = []
    if len(run.tasks) < 2:
        problems.append(f"aggregator '{name}' combines the gradients of several tasks; this run has "
                        f"{len(run.tasks)}. Remove 'aggregator' or add tasks.")
    if balancing.group_size is not None and balancing.group_size > len(run.tasks):
        problems.append(f"group_size is {balancing.group_size} but the run has {len(run.tasks)} tasks; "
                        f"set group_size <= {len(run.tasks)} or remove it (all tasks).")
    untrained = [t.name for t in run.tasks if t.data is None or (t.data.train is None and t.data.hub is None)]
    if untrained:
        problems.append(f"aggregator '{name}' needs a training batch of every task, but {untrained} have no "
                        "training data. Give them 'data.train' or remove them.")
    if run.sampling.group_by_length:
        problems.append(f"sampling.group_by_length cannot serve task-group steps (aggregator '{name}'): each step "
                        "draws one batch of every task. Set group_by_length: false.")
    if run.freeze.encoder:
        problems.append(f"aggregator '{name}' rewrites the shared encoder's gradient, but freeze.encoder is true. "
                        "Unfreeze the encoder or remove 'aggregator'.")
    if training.get("fp16"):
        problems.append(f"aggregator '{name}' computes per-task gradients without fp16 loss scaling. "
                        "Use bf16: true (or fp32) instead of fp16.")
    for key in ("fsdp", "deepspeed"):
        if training.get(key):
            problems.append(f"aggregator '{name}' needs full (unsharded) task gradients; training.{key} shards "
                            "them. Use DDP (torchrun without fsdp/deepspeed) or a loss weighting.")
    try:
        build_aggregator(name, max(len(run.tasks), 2), balancing.aggregator_kwargs)
    except (ImportError, ValueError) as err:
        problems.append(str(err))
    return problems
