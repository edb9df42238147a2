"""The YAML recipe: a file in, the library's objects out (task objects, `MultiTaskTrainingArguments`).

A recipe declares the encoder (`model`), a list of `tasks` (the task objects' settings plus a `data` section),
the `sampling`, `balancing`, `freeze` and `diagnostics` sections and a `training` section that holds any
`TrainingArguments` field. YAML gives values, command-line flags override them, unknown keys fail, and every
problem is reported at once (see `ConfigError`). Training arguments are typed by `HfArgumentParser`, as
trl's `TrlParser` does; the rest by the annotations of the dataclass they fill (`coerce.py`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..balancing import group_step_problems, weighting_problems
from ..errors import ConfigError, ProblemCollector, shown
from ..modeling.adapters import Sharing, no_adapter_problem
from ..tasks import TASK_TYPES, Task, resolve_task_type
from ..tasks.metrics import best_metric_problem
from ..training_args import RENAMED_ARGUMENTS, MultiTaskTrainingArguments
from .coerce import build_dataclass, coerce, field_hints, parse_scalar, suggest
from .loading import FORMATS as FILE_FORMATS
from .sections import RUN_ARGUMENTS, BalancingConfig, DiagnosticsConfig, FreezeConfig, SamplingConfig
from .training import check_training, training_fields

QUOTING = ("minimal", "none", "all", "nonnumeric")
SECTIONS = {"sampling": SamplingConfig, "freeze": FreezeConfig, "balancing": BalancingConfig,
            "diagnostics": DiagnosticsConfig, "sharing": Sharing}


def _owned_keys() -> dict[str, str]:
    """TrainingArguments fields the recipe sets from its own sections: naming them under `training` is an error
    that names the section key to use."""
    owned = {"train_sampling_strategy": "use the top-level 'sampling' section (strategy, temperature, group_by_length)",
             "label_names": "labels travel as 'labels' in every batch; remove it"}
    for (section, key), argument in RUN_ARGUMENTS.items():
        owned[argument] = f"use '{section}: {{{key}: ...}}'" if section else f"use the top-level key '{key}'"
    return owned


OWNED_TRAINING_KEYS = _owned_keys()


@dataclass
class DataConfig:
    """Where a task's data comes from: local files (CSV/TSV/JSON/JSONL/parquet/CoNLL/SQuAD) or a Hub dataset."""

    train: str | None = None
    eval: str | None = None
    test: str | None = None
    format: str | None = None  # inferred from the file extension when absent
    delimiter: str | None = None
    quoting: str = "minimal"
    encoding: str = "utf-8"
    header: bool = True
    column_names: list[str] | None = None
    tag_column: int = -1  # conll: which whitespace-separated column holds the tag (words are column 0)
    hub: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # Without an eval file: hold out the last `eval_fraction` of the train file's groups (rows sharing a
    # `split_by` value, e.g. a SQuAD article title) so no group is in both splits.
    split_by: str | None = None
    eval_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FILE_FORMATS:
            raise ValueError(f"'format' is {self.format!r}; valid choices: {', '.join(FILE_FORMATS)}")
        if self.quoting not in QUOTING:
            raise ValueError(f"'quoting' is {self.quoting!r}; valid choices: {', '.join(QUOTING)}")
        if self.train is None and self.hub is None:
            raise ValueError("neither 'train' (a file) nor 'hub' (a dataset name) is given; add one")
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise ValueError(f"'eval_fraction' is {self.eval_fraction}; it must be between 0 and 1")
        if self.eval_fraction is not None and self.eval is not None:
            raise ValueError("give either 'eval' (a file) or 'eval_fraction' (held out from train), not both")
        for key in ("max_train_samples", "max_eval_samples"):
            if (getattr(self, key) or 1) < 1:
                raise ValueError(f"'{key}' is {getattr(self, key)}; it must be >= 1")


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
    """A whole recipe: encoder, tasks with their data, sections and `TrainingArguments` fields."""

    model: str
    tasks: list[TaskEntry]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    sharing: Sharing = field(default_factory=Sharing)
    training: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    max_length: int = 128
    pad_to_multiple_of: int | None = None
    # Consecutive optimizer steps with a NaN/inf loss that are skipped before the run stops (exit code 3).
    max_nonfinite_steps: int = 3
    config_dir: str = "."

    def task(self, name: str) -> Task:
        return next(entry.task for entry in self.tasks if entry.name == name)

    def fresh_tasks(self) -> dict[str, Task]:
        """Copies of the task objects, for fitting: the recipe's own stay as the user wrote them."""
        return {entry.name: copy.deepcopy(entry.task) for entry in self.tasks}

    def section_arguments(self) -> dict[str, Any]:
        """The `MultiTaskTrainingArguments` fields that the recipe's sections and top-level keys set."""
        out = {}
        for (section, key), argument in RUN_ARGUMENTS.items():
            out[argument] = getattr(getattr(self, section), key) if section else getattr(self, key)
        return out

    def training_arguments(self, **extra: Any) -> MultiTaskTrainingArguments:
        """The run's `MultiTaskTrainingArguments`: the `training` section, the sections' fields and `extra`."""
        kwargs = {"output_dir": os.path.join("runs", "manyheads"), **self.training, **self.section_arguments(),
                  **extra}
        return MultiTaskTrainingArguments(**kwargs)


def _build_task(raw: Any, index: int, run_defaults: dict[str, Any], problems: ProblemCollector) -> TaskEntry | None:
    where = f"tasks[{index}]"
    if not isinstance(raw, dict):
        problems.add(f"{where}: expected a mapping with name, type, data, ..., got {shown(raw)}.")
        return None
    raw = dict(raw)
    name = raw.get("name", f"#{index}")
    where = f"tasks[{index}] ({name})"
    task_type = raw.pop("type", None)
    try:
        task_cls = resolve_task_type(str(task_type)) if task_type is not None else None
    except ValueError:
        task_cls = None
    if task_cls is None:
        problems.add(f"{where}.type: unknown task type {shown(task_type)}.{suggest(str(task_type), TASK_TYPES)} "
                     f"Valid types: {', '.join(TASK_TYPES)}, or the import path of a Task subclass.")
        return None
    hints = field_hints(task_cls)
    valid = sorted([*hints, "type", "data"])
    raw_data = raw.pop("data", None)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            problems.add(f"{where}: unknown key '{key}'.{suggest(str(key), valid)} Valid keys for type "
                         f"'{task_type}': {', '.join(valid)}.")
            continue
        try:
            kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
        except ValueError as err:
            problems.add(f"{err}. Fix the value in the config.")
    if "max_length" in hints:
        kwargs.setdefault("max_length", run_defaults["max_length"])
    if isinstance(kwargs.get("label_names"), str):
        kwargs["label_names"] = str(run_defaults["resolve"](kwargs["label_names"]))
    data = build_dataclass(DataConfig, raw_data, f"{where}.data", problems) if raw_data is not None else None
    if "name" not in kwargs:
        problems.add(f"{where}: required key 'name' is missing. Add 'name: ...'.")
        return None
    try:
        task = task_cls(**kwargs)
    except ConfigError as err:
        problems.problems.extend(f"{where}: {detail}" for detail in err.details)
        return None
    except (TypeError, ValueError) as err:
        problems.add(f"{where}: {err}")
        return None
    return TaskEntry(task, data, given=frozenset(k for k in raw if k in kwargs))


def build_config(raw: Any, config_dir: str = ".", overrides: list[str] | None = None) -> RunConfig:
    """Build and validate a `RunConfig` from parsed YAML plus `--key value` overrides.

    Raises:
        ConfigError: with every problem found, one line each.
    """
    problems = ProblemCollector()
    run = collect_config(raw, problems, config_dir, overrides)
    problems.raise_if_any()
    return run


def _path_resolver(raw: dict[str, Any], config_dir: str) -> Any:
    base = Path(str(raw["data_dir"])) if raw.get("data_dir") is not None else Path(config_dir)

    def resolve(path: str) -> Path:
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else base / candidate

    return resolve


def collect_config(raw: Any, problems: ProblemCollector, config_dir: str = ".",
                   overrides: list[str] | None = None) -> RunConfig | None:
    """Like `build_config` but records problems and returns what could be built (the valid tasks only),
    so `validate` can go on to check the data of those tasks and report everything at once."""
    if not isinstance(raw, dict):
        problems.add(f"config: expected a mapping at the top level, got {type(raw).__name__}.")
        return None
    raw = dict(raw)
    apply_overrides(raw, overrides or [], problems)
    raw_tasks = raw.pop("tasks", None)
    raw_training = raw.pop("training", None)
    try:
        max_length = coerce(raw.get("max_length", 128), int, "config.max_length")
    except ValueError:
        max_length = 128  # reported when the run itself is built
    defaults = {"max_length": max_length, "resolve": _path_resolver(raw, config_dir)}
    tasks: list[TaskEntry] = []
    if not isinstance(raw_tasks, list) or not raw_tasks:
        problems.add("tasks: at least one task is required, as a list under 'tasks:'.")
    else:
        tasks = [t for i, r in enumerate(raw_tasks) if (t := _build_task(r, i, defaults, problems)) is not None]
    names = [t.name for t in tasks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"tasks: the name '{dup}' is used by {names.count(dup)} tasks; task names must be unique. "
                     "Rename all but one of them.")
    before = len(problems.problems)
    training = check_training(raw_training, OWNED_TRAINING_KEYS, problems)
    # Sections are built on their own so that a bad one still leaves a usable run for the data checks.
    sections = {}
    if isinstance(raw.get("sharing"), str):
        raw["sharing"] = {"mode": raw["sharing"]}  # `sharing: lora`, the short form
    for key, section_cls in SECTIONS.items():
        built = build_dataclass(section_cls, raw.pop(key, None), f"config.{key}", problems)
        sections[key] = built if built is not None else section_cls()
    run = build_dataclass(RunConfig, {**raw, "tasks": []}, "config", problems, hidden=("config_dir",),
                          config_dir=config_dir, **sections)
    if run is None:
        return None
    arguments_ok = len(problems.problems) == before
    run.tasks = tasks
    run.training = training
    _check_best_metric(run, problems)
    _check_balancing(run, problems)
    adapter_problem = no_adapter_problem(run.sharing.mode, [e.name for e in tasks],
                                         [e.name for e in tasks if e.task.adapter is True])
    if adapter_problem and isinstance(raw_tasks, list) and len(tasks) == len(raw_tasks):  # all built: all seen
        problems.add(f"sharing: {adapter_problem}")
    if run.sharing.mode == "lora" and run.diagnostics.conflict_every:
        problems.add("diagnostics.conflict_every: gradient conflict is measured on the shared encoder, which "
                     "sharing 'lora' freezes (each task trains only its adapter). Set conflict_every: 0, or use "
                     "sharing 'hybrid'.")
    if arguments_ok:
        _check_training_arguments(run, problems)
    return run


def _check_training_arguments(run: RunConfig, problems: ProblemCollector) -> None:
    """TrainingArguments' own cross-field checks (e.g. load_best_model_at_end needs matching save and eval
    strategies), run now so that they fail before data loading rather than as a traceback at build time.
    Building the arguments writes nothing (the Trainer creates output_dir later)."""
    try:
        run.training_arguments()
    except Exception as err:  # ValueError mostly; ImportError for a missing backend (deepspeed, ...)
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        problems.add(f"training: {text.rstrip('.')}. Fix these fields in the 'training' section "
                     "(see transformers.TrainingArguments).")


def _check_balancing(run: RunConfig, problems: ProblemCollector) -> None:
    """Method kwargs against the constructor; combinations a method cannot serve, with the fix."""
    balancing, training = run.balancing, run.training
    weights = {entry.name: entry.task.weight for entry in run.tasks}
    found = weighting_problems(balancing.weighting, balancing.weighting_kwargs, weights, balancing.aggregator)
    if balancing.aggregator is not None:
        untrained = [e.name for e in run.tasks if e.data is None or (e.data.train is None and e.data.hub is None)]
        if untrained:
            found.append(f"aggregator '{balancing.aggregator}' needs a training batch of every task, but {untrained} "
                         "have no training data. Give them 'data.train' or remove them.")
        sharded = next((key for key in ("fsdp", "deepspeed") if training.get(key)), None)
        found += group_step_problems(balancing.aggregator, balancing.aggregator_kwargs, len(run.tasks),
                                     group_size=balancing.group_size,
                                     fp16=bool(training.get("fp16")), sharded=sharded,
                                     encoder_frozen=run.freeze.encoder, sharing=run.sharing.mode)
    for message in found:
        problems.add(f"balancing: {message}")


def apply_overrides(raw: dict[str, Any], overrides: list[str], problems: ProblemCollector) -> None:
    """`--max_steps 20 --output_dir x --sampling.strategy uniform` onto the parsed YAML. Values of
    TrainingArguments fields stay text (typed later by their field: `--eval_strategy no` stays "no"); others are
    read as YAML scalars."""
    if len(overrides) % 2:
        problems.add(f"command line: flags come in '--key value' pairs, got {' '.join(overrides)!r}.")
        return
    training_keys = training_fields()
    top_keys = set(field_hints(RunConfig)) - {"tasks", "training", "config_dir"}
    for flag, text in zip(overrides[::2], overrides[1::2]):
        key = flag.lstrip("-").replace("-", "_")
        section, _, sub = key.partition(".")
        if sub and section == "training":
            raw["training"] = {**(raw.get("training") or {}), sub: text}
        elif sub and section in SECTIONS:
            raw[section] = {**(raw.get(section) or {}), sub: parse_scalar(text)}
        elif key in top_keys:
            raw[key] = parse_scalar(text)
        elif key in training_keys:
            raw["training"] = {**(raw.get("training") or {}), key: text}
        else:
            problems.add(
                f"command line: unknown flag '--{key}'.{suggest(key, list(training_keys) + list(top_keys))} "
                "Flags are TrainingArguments fields or top-level config keys."
            )


def _check_best_metric(run: RunConfig, problems: ProblemCollector) -> None:
    problem = best_metric_problem(run.training.get("metric_for_best_model"), [e.task for e in run.tasks], False)
    if problem:
        problems.add(f"training.{problem}")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file, apply `--key value` overrides and validate it.

    Raises:
        ConfigError: every problem, one line each (a YAML syntax error is one problem with its line).
    """
    raw, config_dir = read_yaml(path)
    return build_config(raw, config_dir=config_dir, overrides=overrides)


def read_yaml(path: str | os.PathLike) -> tuple[Any, str]:
    """Parsed YAML and the file's folder; a missing file or a syntax error is a one-line ConfigError."""
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
    return raw, str(path.parent.resolve())


__all__ = ["FILE_FORMATS", "DataConfig", "RENAMED_ARGUMENTS", "RunConfig", "TaskEntry", "apply_overrides",
           "build_config", "collect_config", "load_config", "read_yaml"]
