"""The plan of `manyheads compare`: which runs, with which configs, and how many examples each task sees.

(`--groups` and `--finetune` add group runs and fine-tune runs: see `compare_groups` for their recipes and budgets.)

For each seed: the recipe's multi-task run as written, and one run per task alone with the same recipe (same
training arguments, max_length, task settings, data), trained on as many examples of its task as the
multi-task run feeds it.

Examples seen are counted exactly, not estimated: the multi-task run's batch sampler is a pure function of
(seed, epoch), so the plan builds the same sampler `MultiTaskTrainer` builds (`MultiTaskBatchSampler`, or
`TaskGroupBatchSampler` with a gradient aggregator) and walks the micro-batches `Trainer` will draw: `max_steps`
optimizer steps (or `num_train_epochs` of them), `gradient_accumulation_steps` micro-batches each, fewer for the
last step of an epoch, as `Trainer` does. Every micro-batch of a task is full (a task that runs out of examples
is reshuffled and restarted), so a task's count is its micro-batches times the batch size. Counted in training
*features*: a question-answering row split into several windows counts once per window. A single-task run then
gets the smallest `max_steps` that reaches that count with the same batch size, so it sees at most one
optimizer step's worth of examples (batch x accumulation) more. One process is assumed (`manyheads compare`
starts plain `manyheads train` processes, not torchrun).

What a single-task run changes in the recipe, and why:
- `tasks`: the one task (its settings and data unchanged);
- `loss_weighting`, `gradient_aggregator` (and their kwargs, `task_group_size`): removed (equal weighting):
  weighting and aggregation are between tasks, and an aggregator with one task is refused;
- `sampling_strategy`: `proportional` (every strategy gives the same schedule for one task, but a user
  function may not accept one task); `group_by_length` stays;
- `max_steps`: as above; `metric_for_best_model`: `eval_average` (then the task's own main metric) when it named
  another task's metric;
- every run: `seed` is one of the comparison's seeds (a seed in the recipe is replaced), `output_dir` its folder,
  `push_to_hub` off.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.samplers import MultiTaskBatchSampler, TaskGroupBatchSampler
from ..errors import ConfigError, ProblemCollector
from ..modeling.param_groups import head_step_shares
from ..tasks.metrics import best_metric_problem
from .arguments import normalize
from .build import prepare_data
from .compare_groups import (
    FINE_TUNED,
    GROUP,
    GROUPS_FLAG,
    best_step_config,
    check_group_sampling,
    check_groups,
    finetune_examples,
    group_name,
)
from .config import RunConfig, build_config, path_resolver, read_yaml
from .task_groups import expand_tasks

MULTI_TASK, SINGLE_TASK = "multi_task", "single_task"
PLAN_FILE = "compare_plan.json"  # the comparison's identity (config hash) and its runs
RESULT_FILE = "compare_result.json"  # written into a run's folder once it has finished and been evaluated
RUN_CONFIG_FILE = "compare_run.yaml"  # the config `manyheads train` runs in that folder
LOG_FILE = "train.log"


@dataclass
class PlannedRun:
    """One training run of a comparison."""

    name: str  # "mt", "single-<task>", "group-<task>+<task>..." or "finetune-<task>"
    kind: str  # MULTI_TASK, SINGLE_TASK, GROUP or FINE_TUNED
    seed: int
    tasks: list[str]
    config: dict[str, Any]  # the raw recipe `manyheads train` gets (output_dir is set when it runs)
    examples: dict[str, int]  # training examples (features) per task over the run
    max_steps: int  # optimizer steps
    starts_from: str | None = None  # the key of the run whose saved model this one starts from (`init_from`)
    head_rates: dict[str, float] = field(default_factory=dict)  # each task's head learning rate, as the run sets it

    @property
    def key(self) -> str:
        return f"{self.name}/seed-{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"


@dataclass
class Comparison:
    """A planned comparison: where it lives, what it compares, and its identity."""

    output_dir: Path
    config_path: str
    seeds: list[int]
    run: RunConfig  # the multi-task recipe (validated)
    config: dict[str, Any]  # its raw form, overrides applied, data paths absolute
    runs: list[PlannedRun] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # `--groups`: the groups of two or more tasks
    finetune: int | float | None = None  # `--finetune`: steps (int) or a multiple of the default examples

    def folder(self, planned: PlannedRun) -> Path:
        return self.output_dir / planned.name / f"seed-{planned.seed}"

    @property
    def identity(self) -> dict[str, Any]:
        """What must match for a folder to continue this comparison: config, seeds and planned examples."""
        identity = {"config": self.config, "seeds": self.seeds,
                    "runs": {r.key: {"examples": r.examples, "max_steps": r.max_steps} for r in self.runs}}
        if self.groups:  # absent without them: the identity (and hash) of a plain comparison is unchanged
            identity["groups"] = self.groups
        if self.finetune is not None:
            identity["finetune"] = self.finetune
        return identity

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def micro_batches_per_epoch(batches_in_epoch: int, accumulation: int, max_steps: int) -> list[int]:
    """Micro-batches `Trainer` draws in each epoch of a run of `max_steps` optimizer steps: an epoch has
    ceil(batches / accumulation) steps, the last one taking only the epoch's remaining micro-batches."""
    steps_per_epoch = max(math.ceil(batches_in_epoch / accumulation), 1)
    out, left = [], max_steps
    while left > 0:
        steps = min(steps_per_epoch, left)
        out.append(batches_in_epoch if steps == steps_per_epoch else steps * accumulation)
        left -= steps
    return out


def total_steps(args: Any, batches_in_epoch: int) -> int:
    """Optimizer steps of a run: `max_steps`, else `num_train_epochs` epochs (rounded up, as `Trainer` does)."""
    if args.max_steps > 0:
        return int(args.max_steps)
    steps_per_epoch = max(math.ceil(batches_in_epoch / args.gradient_accumulation_steps), 1)
    return math.ceil(args.num_train_epochs * steps_per_epoch)


def multitask_examples(run: RunConfig, sizes: dict[str, int], seed: int, max_steps: int | None = None
                       ) -> tuple[dict[str, int], int]:
    """Training examples per task that the multi-task run with `seed` draws (with `max_steps` instead of the
    recipe's when given), and its optimizer steps."""
    args = run.training_arguments(seed=seed, **({"max_steps": max_steps} if max_steps else {}))
    group = args.gradient_aggregator is not None
    sampler = _sampler(args, sizes, seed)
    steps = total_steps(args, len(sampler))
    counts = dict.fromkeys(sizes, 0)
    for epoch, taken in enumerate(micro_batches_per_epoch(len(sampler), args.gradient_accumulation_steps, steps)):
        if group:
            for tasks in sampler.groups(epoch)[:taken]:
                for t in tasks:
                    counts[sampler.names[t]] += args.train_batch_size
        else:
            for t in sampler.task_order(epoch)[:taken]:
                counts[sampler.names[t]] += args.train_batch_size
    return counts, steps


def _sampler(args: Any, sizes: dict[str, int], seed: int) -> MultiTaskBatchSampler:
    """The training batch sampler `MultiTaskTrainer` builds for these arguments and task sizes."""
    common = {"batch_size": args.train_batch_size, "strategy": args.sampling_strategy,
              "temperature": args.sampling_temperature, "accumulation": args.gradient_accumulation_steps,
              "seed": args.data_seed if args.data_seed is not None else seed}
    if args.gradient_aggregator is not None:
        return TaskGroupBatchSampler(sizes, group_size=args.task_group_size, **common)
    return MultiTaskBatchSampler(sizes, **common)


def head_rates(run: RunConfig, sizes: dict[str, int], seed: int) -> dict[str, float]:
    """Each task's head learning rate in a run of the tasks in `sizes`, as `MultiTaskTrainer` sets it
    (`head_learning_rate`, else `learning_rate`; over the head's share of steps with `head_learning_rate_scaling:
    share`, 1 for a task alone), so that `--plan_only` shows both sides get the same rule."""
    args = run.training_arguments(seed=seed)
    base = args.head_learning_rate if args.head_learning_rate is not None else args.learning_rate
    if args.head_learning_rate_scaling != "share":
        return dict.fromkeys(sizes, base)
    head_of = {t: run.task(t).head or t for t in sizes}
    shares = head_step_shares(_sampler(args, sizes, seed), head_of.__getitem__)
    return {t: base / shares[head_of[t]] if shares[head_of[t]] > 0 else base for t in sizes}


def single_task_steps(size: int, examples: int, batch_size: int, accumulation: int) -> int:
    """The fewest optimizer steps with which a one-task run of `size` rows sees at least `examples` examples."""
    batches = math.ceil(size / batch_size)
    steps = max(1, math.ceil(examples / (batch_size * accumulation)))
    while batch_size * sum(micro_batches_per_epoch(batches, accumulation, steps)) < examples:
        steps += 1  # the short last step of each epoch (gradient accumulation) fell below the count
    return steps


def read_recipe(config_path: str, overrides: list[str]) -> dict[str, Any]:
    """The recipe in its current shape (old keys upgraded), the command-line flags applied, and its data folder
    made absolute (the per-run configs are written elsewhere, and relative paths must still find the same files)."""
    raw, config_dir = read_yaml(config_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level, got {type(raw).__name__}.")
    problems = ProblemCollector()
    raw = normalize(copy.deepcopy(raw), overrides, problems)
    problems.raise_if_any()
    data_dir = raw.get("data_dir")
    raw["data_dir"] = os.path.abspath(os.path.expanduser(str(data_dir))) if data_dir is not None else config_dir
    if isinstance(raw.get("tasks"), list):  # glob entries become plain tasks here: each may then train alone
        raw["tasks"] = [entry for _, entry in expand_tasks(raw["tasks"], problems, path_resolver(raw, config_dir))]
        problems.raise_if_any()
    # Each run gets its own folder and its seed from --seeds.
    raw.pop("output_dir", None)
    raw.pop("seed", None)
    if raw.get("push_to_hub"):
        raw["push_to_hub"] = False  # a comparison's many runs would all push to one repository
    return raw


def single_task_config(raw: dict[str, Any], run: RunConfig, task: str, max_steps: int) -> dict[str, Any]:
    """The recipe of `task` alone (see the module docstring for what changes)."""
    single = copy.deepcopy(raw)
    single["tasks"] = [copy.deepcopy(t) for t in raw["tasks"] if isinstance(t, dict) and t.get("name") == task]
    for key in ("loss_weighting", "loss_weighting_kwargs", "gradient_aggregator", "gradient_aggregator_kwargs",
                "task_group_size"):
        single.pop(key, None)
    single["sampling_strategy"] = "proportional"
    single["max_steps"] = max_steps
    if best_metric_problem(single.get("metric_for_best_model"), [run.task(task)], False):
        single["metric_for_best_model"], single["greater_is_better"] = "eval_average", True
    return best_step_config(single, task, run.task(task))


def group_config(raw: dict[str, Any], run: RunConfig, tasks: list[str]) -> dict[str, Any]:
    """The recipe of a group of tasks: only their entries, everything else as written (`max_steps` is set per
    seed)."""
    group = copy.deepcopy(raw)
    group["tasks"] = [copy.deepcopy(t) for t in raw["tasks"] if isinstance(t, dict) and t.get("name") in tasks]
    if best_metric_problem(group.get("metric_for_best_model"), [run.task(t) for t in tasks], False):
        group["metric_for_best_model"], group["greater_is_better"] = "eval_average", True
    return group


def _group_run(group: list[str], config: dict[str, Any], group_run: RunConfig, sizes: dict[str, int], seed: int,
               target: dict[str, int]) -> PlannedRun:
    """The group's run with `seed`: the fewest steps whose micro-batches hold the examples the all-in-one run gave
    the group's tasks together, its examples per task counted by the same walk (see `compare_groups`)."""
    args = group_run.training_arguments(seed=seed)
    total = sum(target[t] for t in group)
    steps = max(1, math.ceil(total / (args.train_batch_size * args.gradient_accumulation_steps)))
    sub = {t: sizes[t] for t in group}
    while True:
        examples, _ = multitask_examples(group_run, sub, seed, steps)
        if sum(examples.values()) >= total:
            break
        steps += 1
    return PlannedRun(group_name(group), GROUP, seed, list(group), {**config, "seed": seed, "max_steps": steps},
                      examples, steps)


def _finetune_run(comparison: Comparison, task: str, size: int, mt: PlannedRun) -> PlannedRun:
    """The fine-tune run of `task` after `mt`: its budget (see `compare_groups`), the single-task recipe, started
    from the all-in-one model (`init_from`, set when it runs: the folder is known then)."""
    args = comparison.run.training_arguments()
    batch, accumulation = args.train_batch_size, args.gradient_accumulation_steps
    budget = comparison.finetune
    target = finetune_examples(budget, mt.examples[task])
    steps = budget if target is None else single_task_steps(size, target, batch, accumulation)
    seen = batch * sum(micro_batches_per_epoch(math.ceil(size / batch), accumulation, steps))
    config = single_task_config(mt.config, comparison.run, task, steps)
    return PlannedRun(f"finetune-{task}", FINE_TUNED, mt.seed, [task], config, {task: seen}, steps,
                      starts_from=mt.key)


def plan_comparison(config_path: str, overrides: list[str], seeds: list[int], output_dir: str | Path,
                    alone: list[str] | None = None, groups: list[list[str]] | None = None,
                    finetune: int | float | None = None) -> Comparison:
    """Read and check the recipe and its data, and plan every run (nothing is written).

    `alone`: the tasks also trained alone (default: every task). The others are still trained in the multi-task
    run, and only the tasks trained alone get a verdict (e.g. "does QA help question generation?": `["qg"]`).
    `groups`: task groups, each trained as one more multi-task run per seed; `finetune`: a fine-tune run per task
    trained alone, started from the multi-task model (both: see `compare_groups`).

    Raises:
        ConfigError: a bad config or data (every problem), fewer than two tasks, a task without training or
            evaluation data, a task that the multi-task run never samples, bad groups or fine-tune budget.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {seeds}; give one or more different seeds, e.g. --seeds 1 2 3.")
    raw = read_recipe(config_path, overrides)
    config_dir = str(Path(config_path).resolve().parent)
    run = build_config(raw, config_dir=config_dir)
    names = [e.name for e in run.tasks]
    if len(names) < 2:
        raise ConfigError(f"tasks: compare needs at least two tasks, the config has {names}.")
    alone = list(names if alone is None else alone)
    unknown = [t for t in alone if t not in names]
    if unknown or not alone or len(set(alone)) != len(alone):
        raise ConfigError(f"--alone: {alone}; give one or more different tasks of the config: {', '.join(names)}.")
    grouped = check_groups(groups, names) if groups else []
    args = run.training_arguments()
    if grouped:
        check_group_sampling(run.argument("sampling_strategy"))
    if finetune is not None and run.sharing.adapters:
        raise ConfigError(f"--finetune: sharing {run.sharing.mode!r}: starting a run from a model with adapters is "
                          "not supported. Compare fine-tuning with sharing 'hard' (the default).")
    group_configs = [(g, group_config(raw, run, g)) for g in grouped]
    group_runs = []
    for group, config in group_configs:
        try:
            group_runs.append(build_config(config, config_dir=config_dir))
        except ConfigError as err:
            raise ConfigError(err.problems, where=f"{GROUPS_FLAG} {','.join(group)}") from None
    # Tokenized as the trainer tokenizes it: a question-answering row may be several features.
    prepared = prepare_data(run, tokenized_splits=("train",))
    problems = ProblemCollector()
    for name in names:
        for split, key in (("train", "data.train"), ("eval", "data.eval")):
            if split not in prepared.raw[name].splits:
                problems.add(f"tasks.{name}: no {split} split; compare trains and evaluates every task. Give "
                             f"'{key}' (or 'data.hub' with that split).")
    problems.raise_if_any()
    sizes = {n: len(prepared.train[n]) for n in names}
    comparison = Comparison(Path(output_dir), config_path, list(seeds), run, raw, groups=grouped, finetune=finetune)
    batch, accumulation = args.train_batch_size, args.gradient_accumulation_steps
    for seed in seeds:
        with_seed = {**raw, "seed": seed}
        examples, steps = multitask_examples(run, sizes, seed)
        mt = PlannedRun("mt", MULTI_TASK, seed, names, with_seed, examples, steps,
                        head_rates=head_rates(run, sizes, seed))
        comparison.runs.append(mt)
        for (group, config), group_run in zip(group_configs, group_runs):
            planned = _group_run(group, config, group_run, sizes, seed, examples)
            planned.head_rates = head_rates(group_run, {t: sizes[t] for t in group}, seed)
            comparison.runs.append(planned)
        for name in alone:
            if examples[name] == 0:
                raise ConfigError(f"tasks.{name}: the multi-task run never samples this task (sampling strategy "
                                  f"{args.sampling_strategy!r}, {steps} steps), so there is nothing to compare. Train "
                                  "longer or change the sampling.")
            single_steps = single_task_steps(sizes[name], examples[name], batch, accumulation)
            seen = batch * sum(micro_batches_per_epoch(math.ceil(sizes[name] / batch), accumulation, single_steps))
            comparison.runs.append(PlannedRun(
                f"single-{name}", SINGLE_TASK, seed, [name],
                single_task_config(with_seed, run, name, single_steps), {name: seen}, single_steps,
                head_rates=head_rates(run, {name: sizes[name]}, seed)))
        if finetune is not None:
            for name in alone:
                comparison.runs.append(_finetune_run(comparison, name, sizes[name], mt))
                comparison.runs[-1].head_rates = head_rates(run, {name: sizes[name]}, seed)
    return comparison


def check_folder(comparison: Comparison) -> bool:
    """Whether `output_dir` already holds this comparison (False: empty or new).

    Raises:
        ConfigError: the folder holds a comparison of another config, other seeds or other data, or something
            that is not a comparison.
    """
    folder = comparison.output_dir
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output_dir: {folder} is a file. Give a folder (new, or one holding this comparison).")
    plan_file = folder / PLAN_FILE
    if not plan_file.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise ConfigError(f"--output_dir: {folder} is not empty and holds no comparison ({PLAN_FILE} missing). "
                              "Give a new folder, or the folder of an earlier run of this comparison.")
        return False
    try:
        stored = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"--output_dir: {plan_file} cannot be read ({err}). Give another --output_dir.") from None
    if stored.get("config_hash") == comparison.config_hash:
        return True
    identity = comparison.identity
    before = stored.get("identity") or {}
    differ = []
    if before.get("seeds") != identity["seeds"]:
        differ.append(f"seeds {before.get('seeds')} there, {identity['seeds']} now")
    old_config, new_config = before.get("config") or {}, json.loads(json.dumps(identity["config"], default=str))
    keys = sorted(k for k in set(old_config) | set(new_config) if old_config.get(k) != new_config.get(k))
    if keys:
        differ.append(f"config keys that differ: {', '.join(keys)}")
    if not differ:
        differ.append("the same config and seeds, but other planned examples per task (did the data change?)")
    raise ConfigError(f"--output_dir: {folder} holds a comparison of a different config ({'; '.join(differ)}). "
                      "Give another --output_dir for this one, or delete that folder to start it over.")


def write_plan(comparison: Comparison) -> None:
    """The comparison's identity and runs, written once when the folder is new (atomically)."""
    comparison.output_dir.mkdir(parents=True, exist_ok=True)
    content = {"config_hash": comparison.config_hash, "config_file": str(comparison.config_path),
               "identity": comparison.identity,
               "runs": [{"run": r.key, "kind": r.kind, "tasks": r.tasks, "seed": r.seed, "examples": r.examples,
                         "max_steps": r.max_steps, **({"starts_from": r.starts_from} if r.starts_from else {})}
                        for r in comparison.runs]}
    write_json(comparison.output_dir / PLAN_FILE, content)


def write_json(path: Path, content: Any) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
