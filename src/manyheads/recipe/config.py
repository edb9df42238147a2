"""The YAML recipe: a file in, the library's objects out (task objects, `MultiTaskTrainingArguments`).

```yaml
model: sentence-transformers/all-MiniLM-L6-v2
tasks:
  - {name: sst2, type: classification, text: sentence, data: {train: sst2/train.tsv, eval: sst2/dev.tsv}}
output_dir: runs/sst2          # every other top-level key is a MultiTaskTrainingArguments field
sampling_strategy: temperature
max_steps: 600
```

Top-level keys are `MultiTaskTrainingArguments` fields plus `model`, `data_dir`, `max_length` and `init_from`
(a saved model to start from, see `build.build_model`), parsed by one
`HfArgumentParser` (YAML gives defaults, flags override them; see `arguments.py`). Each task entry is its task
class, picked by `type` (a `TASK_TYPES` name or an import path) and built from the entry's keys, plus a `data`
section (`loading.DataConfig`). `sharing`, `freeze` and `diagnostics` are the arguments of
`MultiTaskModel.from_encoder`, `MultiTaskModel.freeze` and the diagnostics callbacks. Every problem is reported at
once (`ConfigError`).

Many tasks in few lines (`task_groups.py`): a group entry `{group: {SETTINGS}, tasks: [...]}` gives its tasks shared
settings (task keys and `data:` keys, the `data` sections merged key by key; a task's own keys win), and one entry
expands to one task per file of a glob in `data.train`, or per Hub dataset of a list in `data.hub` (or
`data.hub_config`), named by a template (`{stem}`, `{parent}`, `{index}`; `{hub}`, `{config}`, `{index}`):

```yaml
tasks:
  - group: {type: classification, data: {quoting: none, max_train_samples: 1000}}
    tasks:
      - {name: sst2, text: sentence, data: {train: sst2/train.tsv, eval: sst2/dev.tsv}}
      - {name: rte, text: [sentence1, sentence2], data: {train: rte/train.tsv, eval: rte/dev.tsv}}
  - {name: "intent_{parent}", type: classification,
     data: {train: "intents/*/train.jsonl", eval: "intents/{parent}/dev.jsonl"}}
  - {name: "glue_{config}", type: classification, text: sentence, data: {hub: nyu-mll/glue, hub_config: [sst2, cola]}}
```

Each task so made is checked as a written one would be, and the messages name the entry it came from.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..balancing import AGGREGATORS, WEIGHTINGS, check_choice, choice_problems, group_step_problems, weighting_problems
from ..data.strategies import SAMPLING_STRATEGIES
from ..errors import ConfigError, ProblemCollector, shown
from ..modeling.adapters import Sharing, no_adapter_problem
from ..modeling.shared_heads import head_group_problems
from ..tasks import TASK_TYPES, Task, resolve_task_type
from ..tasks.metrics import best_metric_problem
from ..training_args import MultiTaskTrainingArguments
from .arguments import normalize, suggest
from .coerce import bind, build_dataclass, construct, field_hints
from .loading import DataConfig, DataRoot
from .sections import DiagnosticsConfig, FreezeConfig
from .task_groups import expand_tasks, flatten_groups

SECTIONS = {"freeze": FreezeConfig, "diagnostics": DiagnosticsConfig, "sharing": Sharing}
# The one default of output_dir: runs/<config file name>, or this for a config built in code.
DEFAULT_RUN_NAME = "manyheads"


def default_output_dir(config_path: str | os.PathLike | None = None) -> str:
    """`runs/<config name>` (`runs/manyheads` without a file): where a run goes when the config names no
    output_dir."""
    return os.path.join("runs", Path(config_path).stem if config_path else DEFAULT_RUN_NAME)


@dataclass
class TaskEntry:
    """One task of a recipe: the library's task object (settings only, never fitted here) and its data."""

    task: Task
    data: DataConfig | None = None
    # The task settings the config wrote out (the others are the defaults): `evaluate` applies only those.
    given: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.task.name


@dataclass
class RunConfig:
    """A whole recipe: the encoder, the tasks with their data, and the `MultiTaskTrainingArguments` fields."""

    model: str
    tasks: list[TaskEntry]
    # The MultiTaskTrainingArguments fields the config and command line set, typed; output_dir always.
    training: dict[str, Any] = field(default_factory=dict)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    sharing: Sharing = field(default_factory=Sharing)
    data_dir: str | None = None
    max_length: int = 128
    init_from: str | None = None  # a saved MultiTaskModel folder whose weights the built model starts from
    config_dir: str = "."

    @property
    def root(self) -> DataRoot:
        return DataRoot(self.data_dir, self.config_dir)

    def task(self, name: str) -> Task:
        return next(entry.task for entry in self.tasks if entry.name == name)

    def fresh_tasks(self) -> dict[str, Task]:
        """Copies of the task objects, for fitting: the recipe's own stay as the user wrote them."""
        return {entry.name: copy.deepcopy(entry.task) for entry in self.tasks}

    def argument(self, name: str) -> Any:
        """A `MultiTaskTrainingArguments` field as this run sets it (its default when the config does not)."""
        if name in self.training:
            return self.training[name]
        found = MultiTaskTrainingArguments.__dataclass_fields__[name]
        return found.default_factory() if found.default_factory is not dataclasses.MISSING else found.default

    def training_arguments(self, **extra: Any) -> MultiTaskTrainingArguments:
        """The run's `MultiTaskTrainingArguments`: the config's fields, then `extra`."""
        return MultiTaskTrainingArguments(**{"output_dir": default_output_dir(), **self.training, **extra})


def _build_task(raw: Any, where: str, run_defaults: dict[str, Any], problems: ProblemCollector) -> TaskEntry | None:
    if not isinstance(raw, dict):
        problems.add(f"{where}: expected a mapping with name, type, data, ... (or a group: {{group: {{...}}, tasks: "
                     f"[...]}}), got {shown(raw)}.")
        return None
    raw = dict(raw)
    if "name" in raw and not where.endswith(")"):  # an expanded entry's `where` names it already
        where = f"{where} ({raw['name']})"
    task_type = raw.pop("type", None)
    try:
        task_cls = resolve_task_type(str(task_type)) if task_type is not None else None
    except ValueError:
        task_cls = None
    if task_cls is None:
        problems.add(f"{where}.type: unknown task type {shown(task_type)}.{suggest(str(task_type), TASK_TYPES)} "
                     f"Valid types: {', '.join(TASK_TYPES)}, or the import path of a Task subclass.")
        return None
    raw_data = raw.pop("data", None)
    data = build_dataclass(DataConfig, raw_data, f"{where}.data", problems) if raw_data is not None else None
    kwargs = bind(task_cls, raw, where, problems, also_valid=("type", "data"))
    if kwargs is None:
        return None
    if "max_length" in field_hints(task_cls):
        kwargs.setdefault("max_length", run_defaults["max_length"])
    if isinstance(kwargs.get("label_names"), str):
        kwargs["label_names"] = str(run_defaults["resolve"](kwargs["label_names"]))
    task = construct(task_cls, kwargs, where, problems)
    if task is None:
        return None
    return TaskEntry(task, data, given=frozenset(k for k in raw if k in kwargs))


def build_config(raw: Any, config_dir: str = ".", overrides: list[str] | None = None,
                 config_path: str | os.PathLike | None = None) -> RunConfig:
    """Build and validate a `RunConfig` from parsed YAML plus command-line flags (`--max_steps 20`).

    Raises:
        ConfigError: with every problem found, one line each.
    """
    problems = ProblemCollector()
    run = collect_config(raw, problems, config_dir, overrides, config_path)
    problems.raise_if_any()
    return run


def path_resolver(raw: dict[str, Any], config_dir: str) -> Any:
    base = Path(str(raw["data_dir"])) if raw.get("data_dir") is not None else Path(config_dir)

    def resolve(path: str) -> Path:
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else base / candidate

    return resolve


def collect_config(raw: Any, problems: ProblemCollector, config_dir: str = ".",
                   overrides: list[str] | None = None, config_path: str | os.PathLike | None = None
                   ) -> RunConfig | None:
    """Like `build_config` but records problems and returns what could be built (the valid tasks only),
    so `validate` can go on to check the data of those tasks and report everything at once."""
    if not isinstance(raw, dict):
        problems.add(f"config: expected a mapping at the top level, got {type(raw).__name__}.")
        return None
    raw = normalize(raw, overrides, problems)
    raw_tasks = raw.pop("tasks", None)
    defaults = {"max_length": raw.get("max_length") or 128, "resolve": path_resolver(raw, config_dir)}
    tasks: list[TaskEntry] = []
    expanded: list[tuple[str, Any]] = []
    if not isinstance(raw_tasks, list) or not raw_tasks:
        problems.add("tasks: at least one task is required, as a list under 'tasks:'.")
    else:
        expanded = expand_tasks(raw_tasks, problems, defaults["resolve"])
        tasks = [t for where, r in expanded if (t := _build_task(r, where, defaults, problems)) is not None]
    names = [t.name for t in tasks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"tasks: the name '{dup}' is used by {names.count(dup)} tasks; task names must be unique. "
                     "Rename all but one of them.")
    if isinstance(raw.get("sharing"), str):
        raw["sharing"] = {"mode": raw["sharing"]}  # `sharing: lora`, the short form
    sections = {}
    for key, section_cls in SECTIONS.items():
        built = build_dataclass(section_cls, raw.pop(key, None), f"config.{key}", problems)
        sections[key] = built if built is not None else section_cls()
    model = raw.pop("model", None)
    if model is None:
        problems.add("config: required key 'model' is missing. Add 'model: ...' (a Hub id or a local folder).")
        return None
    scalars = {key: raw.pop(key) for key in ("data_dir", "max_length", "init_from") if key in raw}
    raw.setdefault("output_dir", default_output_dir(config_path))
    run = RunConfig(model=str(model), tasks=tasks, training=raw, config_dir=config_dir, **scalars, **sections)
    before = len(problems.problems)
    _check_multitask_fields(run, problems)
    _check_best_metric(run, problems)
    _check_balancing(run, problems)
    adapter_problem = no_adapter_problem(run.sharing.mode, [e.name for e in tasks],
                                         [e.name for e in tasks if e.task.adapter is True])
    if adapter_problem and isinstance(raw_tasks, list) and len(tasks) == len(expanded):  # all built: all seen
        problems.add(f"sharing: {adapter_problem}")
    for problem in head_group_problems({e.name: e.task for e in tasks}, run.sharing.adapters):
        problems.add(f"tasks: {problem}")  # datasets sharing a head: of one type, on one encoder
    if run.sharing.mode == "lora" and run.diagnostics.conflict_every:
        problems.add("diagnostics.conflict_every: gradient conflict is measured on the shared encoder, which "
                     "sharing 'lora' freezes (each task trains only its adapter). Set conflict_every: 0, or use "
                     "sharing 'hybrid'.")
    if len(problems.problems) == before:
        _check_training_arguments(run, problems)
    return run


def _check_multitask_fields(run: RunConfig, problems: ProblemCollector) -> None:
    """The multi-task fields' choices, each reported (MultiTaskTrainingArguments stops at the first)."""
    try:
        check_choice("sampling_strategy", run.argument("sampling_strategy"), SAMPLING_STRATEGIES)
    except ValueError as err:
        problems.add(str(err))
    for message in choice_problems(run.argument("loss_weighting"), run.argument("gradient_aggregator"),
                                   run.argument("task_group_size")):
        problems.add(message)


def _check_training_arguments(run: RunConfig, problems: ProblemCollector) -> None:
    """MultiTaskTrainingArguments' own checks (e.g. load_best_model_at_end needs matching save and eval
    strategies), run now so that they fail before data loading rather than as a traceback at build time.
    Building the arguments writes nothing (the Trainer creates output_dir later)."""
    try:
        run.training_arguments()
    except Exception as err:  # ValueError mostly; ImportError for a missing backend (deepspeed, ...)
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        problems.add(f"arguments: {text.rstrip('.')}. Fix these fields (see manyheads.MultiTaskTrainingArguments).")


def _check_balancing(run: RunConfig, problems: ProblemCollector) -> None:
    """Method kwargs against the constructor; combinations a method cannot serve, with the fix."""
    weighting, aggregator = run.argument("loss_weighting"), run.argument("gradient_aggregator")
    if not (weighting is None or weighting in WEIGHTINGS or "." in str(weighting)):
        return  # an unknown name: reported by _check_multitask_fields
    if not (aggregator is None or aggregator in AGGREGATORS or "." in str(aggregator)):
        return
    weights = {entry.name: entry.task.weight for entry in run.tasks}
    found = weighting_problems(weighting, run.argument("loss_weighting_kwargs"), weights, aggregator)
    if aggregator is not None:
        untrained = [e.name for e in run.tasks if e.data is None or (e.data.train is None and e.data.hub is None)]
        if untrained:
            found.append(f"gradient_aggregator '{aggregator}' needs a training batch of every task, but {untrained} "
                         "have no training data. Give them 'data.train' or remove them.")
        sharded = next((key for key in ("fsdp", "deepspeed") if run.training.get(key)), None)
        found += group_step_problems(aggregator, run.argument("gradient_aggregator_kwargs"), len(run.tasks),
                                     group_size=run.argument("task_group_size"),
                                     fp16=bool(run.training.get("fp16")), sharded=sharded,
                                     encoder_frozen=run.freeze.encoder, sharing=run.sharing.mode)
    for message in found:
        problems.add(f"balancing: {message}")


def _check_best_metric(run: RunConfig, problems: ProblemCollector) -> None:
    problem = best_metric_problem(run.training.get("metric_for_best_model"), [e.task for e in run.tasks], False)
    if problem:
        problems.add(problem)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file, apply `--key value` overrides and validate it.

    Raises:
        ConfigError: every problem, one line each (a YAML syntax error is one problem with its line).
    """
    raw, config_dir = read_yaml(path)
    return build_config(raw, config_dir=config_dir, overrides=overrides, config_path=path)


def read_yaml(path: str | os.PathLike) -> tuple[Any, str]:
    """Parsed YAML and the file's folder; a missing file or a syntax error is a one-line ConfigError. Task groups
    and Hub lists come expanded to plain task entries when they hold no mistake (`task_groups.flatten_groups`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Check the path.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}). Save "
                          "the config as UTF-8.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}. Fix the YAML at that line.") from None
    return flatten_groups(raw), str(path.parent.resolve())


__all__ = ["DEFAULT_RUN_NAME", "DataConfig", "RunConfig", "TaskEntry", "build_config", "collect_config",
           "default_output_dir", "load_config", "read_yaml"]
