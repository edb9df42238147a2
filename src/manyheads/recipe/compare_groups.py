"""The configurations `manyheads compare` weighs besides all-in-one and each-alone: task groups and fine-tuning.

`--groups "rte,mrpc" "stsb,cola,sst2"` trains each group of two or more tasks as one more multi-task run per seed
(`group-rte+mrpc/seed-N`): the recipe with only the group's tasks (their settings, data, sampling, weighting and
aggregation unchanged). Every task is in at most one group; a task in no group (or alone in its group) is the
single-task run, which is trained anyway. The groups can also come from a file: `--groups groups.json`
(`{"groups": [["rte", "mrpc"], ...]}`) or `--groups affinity.json:2`, the grouping into 2 groups recommended in an
affinity summary (`{"recommended": {"2": [[...], [...]], ...}}`, or `{"groupings": [{"groups": 2, "partition":
[[...], ...]}, ...]}` as `TaskAffinityCallback` writes it).

Equal examples per task: a group run gets the fewest optimizer steps with which its micro-batches hold at least
as many examples as the all-in-one run gave the group's tasks together, and its examples per task are counted
exactly (the same walk over the seeded sampler as the all-in-one run's). The built-in strategies draw each task's
share from that task's own size (`proportional`: size, `temperature`: size^(1/T), `uniform` / `round_robin`: 1),
so within a group the tasks keep the ratios they have in the all-in-one run, and each sees the same number of
examples up to the rounding of its per-epoch batch count and the shuffled order of the last, partial epoch (both
counts are in `compare.json`). A user's strategy (a function of all sizes) may not keep them: it is refused.

`--finetune [BUDGET]` (MT-DNN, Liu et al. 2019): after each seed's all-in-one run, one run per task
(`finetune-<task>/seed-N`) starts from the all-in-one model (its encoder and the task's head, through the recipe's
`init_from`) and trains that task alone, with the single-task run's recipe. The budget by default is the examples
of the task that the all-in-one run gave it (the single-task run's steps); an integer (`--finetune 50`) is that
many optimizer steps instead; a number with a decimal point (`--finetune 0.5`) is that multiple of the default
examples. Fine-tuning yields one model per task: its stored parameters are N encoders and their heads.

With `best_head_per_task: true` in the recipe, the multi-task and group runs keep each task's head from its best
evaluation (the encoder the last step's), and every run that yields one model per task (single-task and fine-tune
runs) keeps its whole model, encoder and head, from the evaluation where its task's main metric was best
(`load_best_model_at_end` on that metric, a checkpoint at each evaluation): each configuration is judged as a
user would keep it. The steps are in each run's `best_heads.json`, its result and `compare.md`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tasks import higher_is_better, main_metric_of

GROUP, FINE_TUNED = "group", "fine_tuned"
BUILT_IN_STRATEGIES = ("proportional", "temperature", "uniform", "round_robin")
GROUPS_FLAG = "--groups"


def group_name(tasks: list[str]) -> str:
    """The run (and folder) name of a group: `group-rte+mrpc`."""
    return "group-" + "+".join(tasks)


def read_groups(values: list[str]) -> list[list[str]]:
    """The groups of `--groups`: comma-separated tasks per argument, or one file (`FILE.json` or `FILE.json:K`)."""
    if len(values) == 1 and (values[0].endswith(".json") or (":" in values[0] and ".json:" in values[0])):
        return _groups_from_file(values[0])
    return [[t.strip() for t in value.split(",") if t.strip()] for value in values]


def _groups_from_file(value: str) -> list[list[str]]:
    path, _, k = value.rpartition(":") if ".json:" in value else (value, "", "")
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{GROUPS_FLAG}: cannot read {path} ({err}). Give a JSON file with "
                          "{\"groups\": [[task, ...], ...]}, or an affinity.json with ':K' for its grouping into K "
                          "groups.") from None
    if not isinstance(content, dict):
        content = {}
    if k:
        recommended = content.get("recommended")
        if isinstance(recommended, dict) and k in recommended:
            return _checked_lists(recommended[k], f"{path}: recommended.{k}")
        for grouping in content.get("groupings") or []:
            if isinstance(grouping, dict) and str(grouping.get("groups")) == k:
                return _checked_lists(grouping.get("partition"), f"{path}: groupings (groups {k})")
        have = sorted(set(map(str, recommended or {})) |
                      {str(g.get("groups")) for g in content.get("groupings") or [] if isinstance(g, dict)})
        raise ConfigError(f"{GROUPS_FLAG}: {path} has no grouping into {k} groups (it has: "
                          f"{', '.join(have) or 'none'}). Give {path}:K with one of those.")
    if "groups" not in content:
        raise ConfigError(f"{GROUPS_FLAG}: {path} has no 'groups' key. Write {{\"groups\": [[task, ...], ...]}}, or "
                          f"give {path}:K for the recommended grouping into K groups of an affinity.json.")
    return _checked_lists(content["groups"], f"{path}: groups")


def _checked_lists(value: Any, where: str) -> list[list[str]]:
    if not isinstance(value, list) or not all(isinstance(g, list) and all(isinstance(t, str) for t in g)
                                              for g in value):
        raise ConfigError(f"{GROUPS_FLAG}: {where} is {json.dumps(value)[:200]}; expected a list of lists of task "
                          "names, e.g. [[\"rte\", \"mrpc\"], [\"cola\"]].")
    return [list(g) for g in value]


def check_groups(groups: list[list[str]], names: list[str]) -> list[list[str]]:
    """The groups of two or more tasks (a group of one is that task's single-task run), checked: known tasks, each
    in at most one group, no group of every task (that is the all-in-one run)."""
    problems, seen = [], {}
    for index, group in enumerate(groups, 1):
        for task in group:
            if task not in names:
                problems.append(f"{GROUPS_FLAG}: group {index} ({','.join(group)}) names '{task}', which is not a task "
                                f"of the config; its tasks: {', '.join(names)}.")
            elif task in seen:
                where = "twice in that group" if seen[task] == index else f"also in group {seen[task]}"
                problems.append(f"{GROUPS_FLAG}: task '{task}' is in group {index} and {where}; put each task in at "
                                "most one group.")
            else:
                seen[task] = index
        if not group:
            problems.append(f"{GROUPS_FLAG}: group {index} is empty; give comma-separated task names, e.g. "
                            "\"rte,mrpc\".")
    kept = [[t for t in names if t in group] for group in groups if len(set(group)) >= 2]
    if not problems and any(len(g) == len(names) for g in kept):
        problems.append(f"{GROUPS_FLAG}: a group of every task ({','.join(names)}) is the all-in-one run, trained "
                        "anyway; give groups of some of the tasks.")
    if problems:
        raise ConfigError(problems)
    return kept


def check_group_sampling(strategy: Any) -> None:
    if str(strategy) not in BUILT_IN_STRATEGIES:
        raise ConfigError(f"{GROUPS_FLAG}: sampling_strategy {strategy!r} is not one of "
                          f"{', '.join(BUILT_IN_STRATEGIES)}; a group run keeps each task's examples equal to the "
                          "all-in-one run's only when a task's share depends on its own size alone. Compare with a "
                          "built-in strategy (e.g. --sampling_strategy proportional after the config).")


def parse_finetune(value: str | None) -> int | float | None:
    """`--finetune` with no number: 1.0 (the default budget); an integer: optimizer steps; a number with a
    decimal point: that multiple of the default examples."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        number: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        number = -1
    if not number > 0 or (isinstance(number, float) and not math.isfinite(number)):
        raise ConfigError(f"--finetune: {value!r}; give nothing (as many examples of each task as the all-in-one "
                          "run gave it), an integer number of optimizer steps (e.g. 50), or a multiple of that "
                          "default budget with a decimal point (e.g. 0.5).")
    return number


def finetune_examples(budget: int | float, default_examples: int) -> int | None:
    """Examples a fine-tune run must reach (None: the budget is a number of optimizer steps)."""
    if isinstance(budget, int):
        return None
    return max(1, math.ceil(budget * default_examples))


def describe_finetune(budget: int | float | None) -> str | None:
    if budget is None:
        return None
    if isinstance(budget, int):
        return f"{budget} optimizer steps per task"
    if budget == 1.0:
        return "as many examples of each task as the all-in-one run gave it"
    return f"{budget:g} x the examples of each task that the all-in-one run gave it"


def best_step_config(config: dict[str, Any], name: str, task: Any) -> dict[str, Any]:
    """A one-task run's recipe (single-task, fine-tune) with `best_head_per_task`: Trainer's
    `load_best_model_at_end` on the task's main metric, with a checkpoint at every evaluation (the last and the best
    kept), so the encoder comes from the step whose head `best_head_per_task` picks (both keep the first of equal
    values). Unchanged without it."""
    if not config.get("best_head_per_task"):
        return config
    metric = main_metric_of(task)
    # A checkpoint at every evaluation: Trainer evaluates every eval_steps, else every logging_steps (500).
    steps = {"save_steps": config.get("eval_steps") or config.get("logging_steps") or 500}
    return {**config, "load_best_model_at_end": True, "metric_for_best_model": f"eval_{name}_{metric}",
            "greater_is_better": higher_is_better(task, metric), "save_strategy": config.get("eval_strategy"),
            "save_total_limit": 1, **steps}
