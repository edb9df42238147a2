"""Run configuration: YAML in, validated dataclasses out.

A config declares the encoder (`model`), a list of `tasks`, the `sampling` strategy, `freeze` options and a
`training` section that holds any `transformers.TrainingArguments` field. YAML gives values, command-line
flags override them, unknown keys fail, and every problem is reported at once (see `ConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .coerce import build_dataclass, coerce, field_hints, parse_scalar, suggest
from .config_sections import (
    BalancingConfig,
    DiagnosticsConfig,
    FreezeConfig,
    SamplingConfig,
)
from .errors import ConfigError, ProblemCollector
from .tasks import TASK_TYPES

FILE_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "conll", "squad")
QUOTING = ("minimal", "none", "all", "nonnumeric")
# TrainingArguments fields that manyheads drives itself: setting them would be silently overridden.
OWNED_TRAINING_KEYS = {
    "train_sampling_strategy": "use the top-level 'sampling' section (strategy, temperature, group_by_length)",
    "group_by_length": "use 'sampling: {group_by_length: true}'",
    "label_names": "labels travel as 'labels' in every batch; remove it",
}


@dataclass
class DataConfig:
    """Where a task's data comes from: local files (CSV/TSV/JSON/JSONL/parquet) or a Hub dataset."""

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
class TaskConfig:
    """One task: its name, type, data, columns and labels. Type-specific keys live in `options`."""

    name: str
    type: str
    data: DataConfig | None = None
    text: list[str] = field(default_factory=lambda: ["text"])
    label: str | None = "label"
    labels: list[str] | None = None
    max_length: int | None = None
    weight: float = 1.0
    main_metric: str | None = None
    options: Any = None  # an instance of TASK_TYPES[type].Options

    def spec(self) -> dict[str, Any]:
        """What the saved model needs to rebuild this task (no data paths)."""
        out = {k: getattr(self, k) for k in ("name", "type", "text", "label", "labels", "max_length",
                                             "weight", "main_metric")}
        out["options"] = dataclasses.asdict(self.options) if self.options is not None else {}
        return out

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TaskConfig:
        spec = dict(spec)
        options_cls = TASK_TYPES[spec["type"]].Options
        spec["options"] = options_cls(**spec.get("options", {}))
        return cls(**spec)


@dataclass
class RunConfig:
    """A whole run: encoder, tasks, sampling, freezing and `TrainingArguments` fields."""

    model: str
    tasks: list[TaskConfig]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    training: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    max_length: int = 128
    pad_to_multiple_of: int | None = None
    # Consecutive optimizer steps with a NaN/inf loss that are skipped before the run stops (exit code 3).
    max_nonfinite_steps: int = 3
    config_dir: str = "."

    def task(self, name: str) -> TaskConfig:
        return next(t for t in self.tasks if t.name == name)

    def training_arguments(self, **extra: Any):
        """The `TrainingArguments` of this run (imported lazily: it pulls in torch)."""
        from transformers import TrainingArguments

        kwargs = {"output_dir": os.path.join("runs", "manyheads"), **self.training, **extra}
        return TrainingArguments(**kwargs)


SECTIONS = {"sampling": SamplingConfig, "freeze": FreezeConfig, "balancing": BalancingConfig,
            "diagnostics": DiagnosticsConfig}


def _training_hints() -> dict[str, Any]:
    from transformers import TrainingArguments

    return field_hints(TrainingArguments)


def _check_training(raw: Any, problems: ProblemCollector) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(f"training: expected a mapping of TrainingArguments fields, got {raw!r}.")
        return {}
    hints = _training_hints()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in OWNED_TRAINING_KEYS:
            problems.add(f"training.{key}: manyheads sets this itself; {OWNED_TRAINING_KEYS[key]}.")
        elif key not in hints:
            problems.add(
                f"training: unknown TrainingArguments field '{key}'.{suggest(key, hints)} "
                "See transformers.TrainingArguments for valid fields."
            )
        else:
            try:
                out[key] = coerce(value, hints[key], f"training.{key}")
            except ValueError as err:
                problems.add(f"{err}. Fix the value in the config.")
    return out


def _build_task(raw: Any, index: int, problems: ProblemCollector) -> TaskConfig | None:
    where = f"tasks[{index}]"
    if not isinstance(raw, dict):
        problems.add(f"{where}: expected a mapping with name, type, data, ..., got {raw!r}.")
        return None
    raw = dict(raw)
    name = raw.get("name", f"#{index}")
    where = f"tasks[{index}] ({name})"
    task_type = raw.get("type")
    if task_type not in TASK_TYPES:
        problems.add(
            f"{where}.type: unknown task type {task_type!r}.{suggest(str(task_type), TASK_TYPES)} "
            f"Valid types: {', '.join(TASK_TYPES)}."
        )
        return None
    task_cls = TASK_TYPES[task_type]
    common = set(field_hints(TaskConfig)) - {"options"}
    option_keys = set(field_hints(task_cls.Options))
    valid = sorted(common | option_keys)
    for key in [k for k in raw if k not in common and k not in option_keys]:
        raw.pop(key)
        problems.add(f"{where}: unknown key '{key}'.{suggest(str(key), valid)} Valid keys for type "
                     f"'{task_type}': {', '.join(valid)}.")
    option_raw = {k: raw.pop(k) for k in list(raw) if k in option_keys}
    if isinstance(raw.get("text"), str):
        raw["text"] = [raw["text"]]
    options = build_dataclass(task_cls.Options, option_raw, where, problems)
    task = build_dataclass(TaskConfig, raw, where, problems)
    if task is None or options is None:
        return None
    task.options = options
    for message in task_cls.check_config(task):
        problems.add(f"{where}: {message}")
    return task


def build_config(raw: Any, config_dir: str = ".", overrides: list[str] | None = None) -> RunConfig:
    """Build and validate a `RunConfig` from parsed YAML plus `--key value` overrides.

    Raises:
        ConfigError: with every problem found, one line each.
    """
    problems = ProblemCollector()
    run = collect_config(raw, problems, config_dir, overrides)
    problems.raise_if_any()
    return run


def collect_config(raw: Any, problems: ProblemCollector, config_dir: str = ".",
                   overrides: list[str] | None = None) -> RunConfig | None:
    """Like `build_config` but records problems and returns what could be built (the valid tasks only),
    so `validate` can go on to check the data of those tasks and report everything at once."""
    if not isinstance(raw, dict):
        problems.add(f"config: expected a mapping at the top level, got {type(raw).__name__}.")
        return None
    raw = dict(raw)
    _apply_overrides(raw, overrides or [], problems)
    raw_tasks = raw.pop("tasks", None)
    raw_training = raw.pop("training", None)
    tasks: list[TaskConfig] = []
    if not isinstance(raw_tasks, list) or not raw_tasks:
        problems.add("tasks: at least one task is required, as a list under 'tasks:'.")
    else:
        tasks = [t for i, r in enumerate(raw_tasks) if (t := _build_task(r, i, problems)) is not None]
    names = [t.name for t in tasks]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"tasks: the name '{dup}' is used by {names.count(dup)} tasks; task names must be unique. "
                     "Rename all but one of them.")
    before = len(problems.problems)
    training = _check_training(raw_training, problems)
    training_ok = len(problems.problems) == before
    # Sections are built on their own so that a bad one still leaves a usable run for the data checks.
    sections = {}
    for key, section_cls in SECTIONS.items():
        built = build_dataclass(section_cls, raw.pop(key, None), f"config.{key}", problems)
        sections[key] = built if built is not None else section_cls()
    run = build_dataclass(RunConfig, {**raw, "tasks": []}, "config", problems, hidden=("config_dir",),
                          config_dir=config_dir, **sections)
    if run is None:
        return None
    run.tasks = tasks
    run.training = training
    for task in run.tasks:
        if task.max_length is None:
            task.max_length = run.max_length
    _check_best_metric(run, problems)
    _check_balancing(run, problems)
    if training_ok:
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
    from .balancing import check_balancing

    for message in check_balancing(run):
        problems.add(f"balancing: {message}")


def _apply_overrides(raw: dict[str, Any], overrides: list[str], problems: ProblemCollector) -> None:
    """`--max_steps 20 --output_dir x --sampling.strategy uniform` onto the parsed YAML."""
    if len(overrides) % 2:
        problems.add(f"command line: flags come in '--key value' pairs, got {' '.join(overrides)!r}.")
        return
    training_keys = _training_hints()
    top_keys = set(field_hints(RunConfig)) - {"tasks", "training", "config_dir"}
    for flag, text in zip(overrides[::2], overrides[1::2]):
        key = flag.lstrip("-").replace("-", "_")
        value = parse_scalar(text)
        section, _, sub = key.partition(".")
        if sub and (section in SECTIONS or section == "training"):
            raw.setdefault(section, {})
            raw[section] = {**(raw[section] or {}), sub: value}
        elif key in top_keys:
            raw[key] = value
        elif key in training_keys:
            raw["training"] = {**(raw.get("training") or {}), key: value}
        else:
            problems.add(
                f"command line: unknown flag '--{key}'.{suggest(key, list(training_keys) + list(top_keys))} "
                "Flags are TrainingArguments fields or top-level config keys."
            )


def _check_best_metric(run: RunConfig, problems: ProblemCollector) -> None:
    metric = run.training.get("metric_for_best_model")
    if metric is None:
        return
    valid = valid_metric_names(run.tasks)
    name = metric[len("eval_"):] if metric.startswith("eval_") else metric
    if name not in valid:
        problems.add(
            f"training.metric_for_best_model: {metric!r} names no metric of this run.{suggest(name, valid)} "
            f"Valid: {', '.join('eval_' + v for v in sorted(valid))}."
        )


def valid_metric_names(tasks: list[TaskConfig]) -> set[str]:
    """Metric names (without the `eval_` prefix) that an evaluation of these tasks reports."""
    names = {"average", "loss"}
    for task in tasks:
        names.add(f"{task.name}_loss")
        names.update(f"{task.name}_{m}" for m in TASK_TYPES[task.type].metric_names(task))
    return names


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
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}. Fix the YAML at that line.") from None
    return raw, str(path.parent.resolve())
