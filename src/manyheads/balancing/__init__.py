"""Balancing tasks: loss weighting (per one-task micro-batch) and gradient aggregation (per task group).

Two families, one explicit registry each: `WEIGHTINGS` (a `LossWeighting` per file) and `AGGREGATORS`
(torchjd aggregators, `aggregation.py`). Either may also be given as an import path, a class or an instance,
so a user's own method plugs in without editing the package:

```python
trainer = MultiTaskTrainer(..., weighting=MyWeighting(task_names))      # a LossWeighting instance
args = MultiTaskTrainingArguments(..., loss_weighting="my_pkg.MyWeighting", loss_weighting_kwargs={"beta": 2})
```
"""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import ConfigError
from ..importing import import_object
from .aggregation import AGGREGATORS, build_aggregator
from .base import LossWeighting
from .dwa import DynamicWeightAverage
from .equal import EqualWeighting
from .gradnorm import GradNormWeighting
from .group_step import TaskGroupStep
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

__all__ = ["AGGREGATORS", "WEIGHTINGS", "LossWeighting", "build_aggregator", "build_group_step", "build_weighting",
           "check_choice", "choice_problems", "group_step_problems", "resolve_weighting", "weighting_problems"]


def check_choice(key: str, value: Any, registry: dict[str, Any]) -> None:
    """A name must be in the registry or look like an import path (`package.module.Name`).

    Raises:
        ValueError: "'<key>' is <value>; valid choices: ..." (the wording every config error uses).
    """
    if value is None or not isinstance(value, str) or value in registry or "." in value:
        return
    raise ValueError(f"'{key}' is {value!r}; valid choices: {', '.join(registry)} (or the import path of your own "
                     "class)")


def choice_problems(weighting: Any, aggregator: Any, group_size: int | None) -> list[str]:
    """The rules between the balancing fields of `MultiTaskTrainingArguments` (named as there)."""
    w_key, a_key, g_key = "loss_weighting", "gradient_aggregator", "task_group_size"
    problems = []
    for key, value, registry in ((w_key, weighting, WEIGHTINGS), (a_key, aggregator, AGGREGATORS)):
        try:
            check_choice(key, value, registry)
        except ValueError as err:
            problems.append(str(err))
    if aggregator is not None and weighting not in (None, "equal"):
        problems.append(f"'{w_key}: {weighting}' and '{a_key}: {aggregator}' both rewrite the update; choose one "
                        f"(remove '{w_key}' to use the aggregator)")
    if group_size is not None and group_size < 2:
        problems.append(f"'{g_key}' is {group_size}; a task group needs >= 2 tasks")
    if group_size is not None and aggregator is None:
        problems.append(f"'{g_key}' applies to task-group steps; set '{a_key}' too, or remove it")
    return problems


def resolve_weighting(weighting: Any, kwargs: dict[str, Any] | None, task_weights: dict[str, float],
                      aggregator: Any = None) -> tuple[Any, dict[str, Any]]:
    """The weighting a run uses and its kwargs: `static` with the tasks' `weight` values when none is named and
    some task sets a weight other than 1; `equal` otherwise.

    Static weights have one home, each task's `weight`. `loss_weighting_kwargs={"weights": ...}` still works for
    one release, with a deprecation line; together with task weights it is an error (`weighting_problems`)."""
    kwargs = dict(kwargs or {})
    custom = {name: w for name, w in task_weights.items() if float(w) != 1.0}
    if weighting is None:
        weighting = "static" if custom and aggregator is None else "equal"
    if weighting == "static" and "weights" in kwargs and not custom:
        # A FutureWarning, shown once per place: the recipe's check and the trainer both resolve the weighting.
        warnings.warn("manyheads: loss_weighting_kwargs 'weights' is deprecated and will be removed: set each "
                      "task's `weight` instead (Task(weight=...), or `weight:` in a recipe task entry).",
                      FutureWarning, stacklevel=2)
    if weighting == "static" and "weights" not in kwargs:
        kwargs["weights"] = {name: float(w) for name, w in task_weights.items()}
    return weighting, kwargs


def build_weighting(weighting: Any, kwargs: dict[str, Any] | None, task_weights: dict[str, float],
                    aggregator: Any = None, seed: int = 0) -> LossWeighting:
    """A `LossWeighting` from a name, an import path, a class or an instance (`task_weights`: {task: weight})."""
    if isinstance(weighting, LossWeighting):
        unknown = sorted(set(task_weights) - set(weighting.tasks))
        if unknown:
            raise ValueError(f"the weighting instance was built for tasks {weighting.tasks}; the model also has "
                             f"{unknown}. Build it with all task names: {list(task_weights)}.")
        return weighting
    problems = task_weight_problems(weighting, kwargs, task_weights, aggregator)
    if problems:  # a task weight that the chosen method would silently ignore
        raise ValueError("; ".join(problems))
    weighting, kwargs = resolve_weighting(weighting, kwargs, task_weights, aggregator)
    if weighting == "rlw":
        kwargs.setdefault("seed", seed)
    cls = WEIGHTINGS.get(weighting) if isinstance(weighting, str) else weighting
    if cls is None:
        try:
            cls = import_object(weighting)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"'loss_weighting' is {weighting!r}; valid choices: {', '.join(WEIGHTINGS)}, or the "
                             f"import path of a LossWeighting subclass ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, LossWeighting)):
        raise ValueError(f"weighting {weighting!r} is not a LossWeighting subclass; subclass "
                         "manyheads.balancing.LossWeighting (see its docstring)")
    return cls(list(task_weights), **kwargs)


def task_weight_problems(weighting: Any, kwargs: dict[str, Any] | None, task_weights: dict[str, float],
                         aggregator: Any = None) -> list[str]:
    """Task `weight`s that the chosen method would ignore, or static weights given twice."""
    problems = []
    custom = sorted(name for name, w in task_weights.items() if float(w) != 1.0)
    ignored = weighting not in (None, "static") or (weighting is None and aggregator is not None)
    if custom and ignored:
        problems.append(f"tasks {custom} set 'weight', which only 'loss_weighting: static' uses, but the run uses "
                        f"{weighting or aggregator!r}. Remove the task weights or use static.")
    if custom and "weights" in (kwargs or {}):
        problems.append(f"static weights are given twice: tasks {custom} set 'weight' and loss_weighting_kwargs has "
                        "'weights'. Keep the tasks' 'weight' and remove loss_weighting_kwargs 'weights'.")
    return problems


def weighting_problems(weighting: Any, kwargs: dict[str, Any] | None, task_weights: dict[str, float],
                       aggregator: Any = None) -> list[str]:
    """Problems of a weighting choice (kwargs against the constructor, task weights without `static`)."""
    problems = task_weight_problems(weighting, kwargs, task_weights, aggregator)
    if problems:
        return problems
    try:
        build_weighting(weighting, kwargs, task_weights or {"_": 1.0}, aggregator)
    except (TypeError, ValueError, ImportError) as err:
        problems.append(f"loss_weighting '{weighting}' with loss_weighting_kwargs {kwargs}: {err}. Fix "
                        "loss_weighting_kwargs (see the method's docstring).")
    return problems


def group_step_problems(aggregator: Any, kwargs: dict[str, Any] | None, n_tasks: int, *, group_size: int | None = None,
                        fp16: bool = False, sharded: str | None = None,
                        encoder_frozen: bool = False, sharing: str = "hard") -> list[str]:
    """What keeps a gradient aggregator from serving a run, each with the fix (checked by the trainer and the
    recipe alike)."""
    name = aggregator if isinstance(aggregator, str) else type(aggregator).__name__
    problems = []
    if n_tasks < 2:
        problems.append(f"gradient_aggregator '{name}' combines the gradients of several tasks; this run has "
                        f"{n_tasks}. Remove 'gradient_aggregator' or add tasks.")
    if group_size is not None and group_size > n_tasks:
        problems.append(f"task_group_size is {group_size} but the run has {n_tasks} tasks; set task_group_size <= "
                        f"{n_tasks} or remove it (all tasks).")
    if sharing == "lora":
        problems.append(f"gradient_aggregator '{name}' rewrites the shared encoder's gradient, but sharing 'lora' "
                        "freezes the encoder: each task trains only its own adapter and head, so there is nothing "
                        "shared to aggregate. Use sharing 'hybrid' (shared encoder + adapters), or remove "
                        "'gradient_aggregator'.")
    elif encoder_frozen:
        problems.append(f"gradient_aggregator '{name}' rewrites the shared encoder's gradient, but the encoder is "
                        "frozen. Unfreeze the encoder or remove 'gradient_aggregator'.")
    if fp16:
        problems.append(f"gradient_aggregator '{name}' computes per-task gradients without fp16 loss scaling. "
                        "Use bf16: true (or fp32) instead of fp16.")
    if sharded:
        problems.append(f"gradient_aggregator '{name}' needs full (unsharded) task gradients; {sharded} shards "
                        "them. Use DDP (torchrun without fsdp/deepspeed) or a loss weighting.")
    if isinstance(aggregator, str):
        try:
            build_aggregator(aggregator, max(n_tasks, 2), kwargs)
        except (ImportError, ValueError) as err:
            problems.append(str(err))
    return problems


def build_group_step(model: Any, args: Any, aggregator: Any) -> TaskGroupStep | None:
    """The task-group step of gradient aggregator `aggregator` (a name, instance or class; None: no aggregation)
    for `model` trained with `args` (`MultiTaskTrainingArguments`); raises `ConfigError` with every problem."""
    if aggregator is None:
        return None
    sharded = "fsdp" if args.fsdp else ("deepspeed" if args.deepspeed else None)
    problems = group_step_problems(aggregator, args.gradient_aggregator_kwargs, len(model.tasks),
                                   group_size=args.task_group_size,
                                   fp16=args.fp16, sharded=sharded, encoder_frozen=not model.shared_parameters(),
                                   sharing=model.sharing.mode)
    if problems:
        raise ConfigError(problems)
    built = build_aggregator(aggregator, len(model.tasks), args.gradient_aggregator_kwargs)
    return TaskGroupStep(model, built, seed=args.seed)
