"""A recipe's top-level keys are `MultiTaskTrainingArguments` fields, parsed as trl's `TrlParser` parses them.

One `HfArgumentParser` over `MultiTaskTrainingArguments` and `RecipeArguments` (the encoder and the data folder)
types everything: each YAML value goes through the `type` and `choices` the parser derived from its field (PyYAML
reads `5e-5` as text), command-line flags are parsed by the same parser and override the YAML, and a key that is
no field fails with the valid keys listed. Only what `HfArgumentParser` cannot express is added here: `bf16: auto`,
YAML's unquoted `no`, and lists or mappings in scalar fields. Every problem is collected, not raised one by one.

Keys of earlier releases (`sampling:`, `balancing:`, `training:` sections) are read for one more release: each
logs one deprecation line naming the field to write instead (`DEPRECATED_KEYS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import functools
import logging
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..errors import ConfigError, ProblemCollector, shown
from ..training_args import RENAMED_ARGUMENTS, MultiTaskTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class RecipeArguments:
    """The recipe's own scalar keys: what the library takes as a constructor argument rather than a field."""

    model: str | None = field(default=None, metadata={
        "help": "The encoder: a Hub id or a folder written by save_pretrained (MultiTaskModel.from_encoder)."})
    data_dir: str | None = field(default=None, metadata={
        "help": "Folder that relative data paths start from (default: the config file's folder)."})
    max_length: int = field(default=128, metadata={"help": "max_length of every task that sets none."})
    init_from: str | None = field(default=None, metadata={
        "help": "A folder saved by 'manyheads train' (a MultiTaskModel) to start from: its encoder and the heads of "
                "the tasks it shares with this config replace the fresh ones (e.g. MT-DNN's fine-tuning)."})


# Mapping- or list-valued keys, built by `config.py` from their dataclass or task class.
SECTION_KEYS = ("tasks", "sharing", "freeze", "diagnostics")
# Old key -> the field that replaces it. Read for one release, with one deprecation line each.
DEPRECATED_KEYS: dict[str, str] = {
    "sampling.strategy": "sampling_strategy",
    "sampling.temperature": "sampling_temperature",
    "sampling.group_by_length": "group_by_length",
    "balancing.weighting": "loss_weighting",
    "balancing.weighting_kwargs": "loss_weighting_kwargs",
    "balancing.aggregator": "gradient_aggregator",
    "balancing.aggregator_kwargs": "gradient_aggregator_kwargs",
    "balancing.group_size": "task_group_size",
}
OLD_SECTIONS = ("sampling", "balancing", "training")
# Fields that also take `auto` (MultiTaskTrainingArguments resolves it for the machine).
AUTO_FIELDS = ("bf16",)
# Annotated `str | None`, but TrainingArguments also reads a list of options there.
_LIST_TOO = ("fsdp",)
# TrainingArguments fields that MultiTaskTrainer sets itself.
_REFUSED = {"label_names": "labels travel as 'labels' in every batch; remove it"}


def suggest(key: str, choices: typing.Iterable[str]) -> str:
    """A short "did you mean" hint for an unknown key, or "" when nothing is close."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class _Parser(HfArgumentParser):
    """`HfArgumentParser` whose errors are `ConfigError`s (collected by the caller) instead of an exit."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"command line: {message}")


def _or_auto(convert: Any) -> Any:
    def typed(text: str) -> Any:
        return "auto" if text.strip().lower() == "auto" else convert(text)
    typed.__name__ = getattr(convert, "__name__", "value")
    return typed


@functools.lru_cache(maxsize=1)
def _parser() -> _Parser:
    """The parser, with no defaults: a parsed namespace holds only the flags that were given."""
    parser = _Parser((MultiTaskTrainingArguments, RecipeArguments), allow_abbrev=False, add_help=False)
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
        if action.dest in AUTO_FIELDS and action.type is not None:
            action.type = _or_auto(action.type)
    return parser


@functools.lru_cache(maxsize=1)
def _actions() -> dict[str, argparse.Action]:
    """Each field's action (the one that takes a value, not its `--no_*` complement)."""
    actions: dict[str, argparse.Action] = {}
    for action in _parser()._actions:
        if not isinstance(action, argparse._StoreFalseAction):
            actions.setdefault(action.dest, action)
    return actions


def argument_fields() -> list[str]:
    """The keys the parser knows: every `MultiTaskTrainingArguments` field plus `RecipeArguments`'."""
    return list(_actions())


@functools.lru_cache(maxsize=1)
def _scalar_fields() -> frozenset[str]:
    """Fields whose annotation holds only scalars (str, numbers, booleans, enums): no list or mapping fits them."""
    def scalar(hint: Any) -> bool:
        return hint in (str, int, float, bool, type(None)) or (isinstance(hint, type) and issubclass(hint, enum.Enum))

    found = set()
    for cls in (MultiTaskTrainingArguments, RecipeArguments):
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            hint = hints.get(item.name)
            members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            if item.init and all(scalar(m) for m in members) and item.name not in _LIST_TOO:
                found.add(item.name)
    return frozenset(found)


def _expected(action: argparse.Action) -> str:
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    return getattr(action.type, "__name__", "a value").replace("string_to_bool", "true or false")


def typed_value(key: str, value: Any) -> Any:
    """A YAML value through its field's `type` and `choices`, as if it were written on the command line.

    Raises:
        ValueError: naming the key, the value and what the field takes.
    """
    action = _actions()[key]
    if value is None:
        return None
    if isinstance(value, bool) and action.choices and "no" in map(str, action.choices) and not value:
        value = "no"  # YAML 1.1 reads an unquoted `no` as false
    if isinstance(value, (list, tuple, dict, set)):
        if key in _scalar_fields():
            # A list reaching TrainingArguments as is was written out whole by the run's logging and saved state.
            raise ValueError(f"'{key}': got {shown(value)}, expected {_expected(action)}")
        return value
    if action.type is not None and not (isinstance(value, bool) and action.type is str):
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"'{key}': got {shown(value)}, expected {_expected(action)}") from None
    if action.choices and str(getattr(value, "value", value)) not in map(str, action.choices):
        raise ValueError(f"'{key}': got {shown(value)}, expected {_expected(action)}")
    return value


def _deprecated(old: str, new: str) -> None:
    logger.warning("config: '%s' is deprecated and will be removed in the next release; write %s instead.",
                   old, new)


def upgrade(raw: dict[str, Any], problems: ProblemCollector) -> dict[str, Any]:
    """Old keys (`sampling:`, `balancing:`, `training:`) rewritten as the fields that replace them, one
    deprecation line each. A field given both ways is a problem."""
    out = {k: v for k, v in raw.items() if k not in OLD_SECTIONS or not isinstance(v, dict)}
    for section in OLD_SECTIONS:
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        if section == "training" and values:
            _deprecated("training:", "its keys at the top level (they are MultiTaskTrainingArguments fields)")
        for key, value in values.items():
            new = key if section == "training" else DEPRECATED_KEYS.get(f"{section}.{key}")
            if new is None:
                moved = {k.split(".")[1]: v for k, v in DEPRECATED_KEYS.items() if k.startswith(f"{section}.")}
                problems.add(f"config.{section}: unknown key '{key}'.{suggest(str(key), moved)} This deprecated "
                             f"section takes {', '.join(moved)}; write the fields instead, at the top level: "
                             f"{', '.join(moved.values())}.")
                continue
            if section != "training":
                _deprecated(f"{section}.{key}", f"'{new}' at the top level")
            if new in out:
                problems.add(f"config: '{new}' is given both at the top level and as '{section}.{key}'. Keep the "
                             "top-level key.")
                continue
            out[new] = value
    return out


def _split_flags(flags: list[str], raw: dict[str, Any], problems: ProblemCollector) -> list[str]:
    """Flags for the parser; `--section.key value` flags applied to `raw` (old ones as their new field)."""
    out: list[str] = []
    index = 0
    while index < len(flags):
        flag = flags[index]
        name, eq, inline = flag.partition("=")
        key = name.lstrip("-").replace("-", "_")
        if not (flag.startswith("--") and "." in key):
            out.append(flag)
            index += 1
            continue
        if eq:
            text, index = inline, index + 1
        elif index + 1 < len(flags):
            text, index = flags[index + 1], index + 2
        else:
            problems.add(f"command line: '{flag}' needs a value.")
            break
        section, _, sub = key.partition(".")
        if key in DEPRECATED_KEYS or section == "training":
            new = DEPRECATED_KEYS.get(key, sub)
            _deprecated(f"--{key}", f"'--{new}'")
            out += [f"--{new}", text]
        elif section in ("freeze", "diagnostics", "sharing") and isinstance(raw.get(section) or {}, dict):
            raw[section] = {**(raw.get(section) or {}), sub: _yaml_scalar(text)}
        else:
            problems.add(f"command line: unknown flag '--{key}'. Flags are MultiTaskTrainingArguments fields, "
                         f"{', '.join('--' + k for k in dataclasses.asdict(RecipeArguments()))}, or "
                         "--freeze.KEY / --diagnostics.KEY / --sharing.KEY.")
    return out


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _unknown_key(key: str, where: str) -> str:
    known = [*SECTION_KEYS, *argument_fields()]
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    multitask = [f.name for f in dataclasses.fields(MultiTaskTrainingArguments) if f.name not in inherited]
    recipe = [*dataclasses.asdict(RecipeArguments()), *SECTION_KEYS]
    return (f"{where}: unknown key '{key}'.{suggest(key, known)} Valid keys: {', '.join(recipe)}, the multi-task "
            f"fields {', '.join(multitask)}, and any transformers.TrainingArguments field.")


def normalize(raw: dict[str, Any], flags: list[str] | None, problems: ProblemCollector) -> dict[str, Any]:
    """The recipe in its current shape with the command line applied: typed argument fields at the top level,
    sections as given. Old keys are upgraded (one deprecation line each); every problem goes to `problems`."""
    raw = upgrade(raw, problems)
    parser_flags = _split_flags(list(flags or []), raw, problems)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTION_KEYS:
            out[key] = value
        elif key in _REFUSED:
            problems.add(f"{key}: manyheads sets this itself; {_REFUSED[key]}.")
        elif key in RENAMED_ARGUMENTS:
            problems.add(f"{key}: this TrainingArguments field no longer exists; use {RENAMED_ARGUMENTS[key]} "
                         "instead.")
        elif key not in _actions():
            problems.add(_unknown_key(str(key), "config"))
        else:
            try:
                out[key] = typed_value(key, value)
            except ValueError as err:
                problems.add(f"{err}. Fix the value in the config.")
    try:
        given, unknown = _parser().parse_known_args(parser_flags)
    except ConfigError as err:
        problems.extend(err)
        return out
    for index, flag in enumerate(unknown):
        if not flag.startswith("-"):
            if index == 0 or not unknown[index - 1].startswith("-"):  # not the value of an unknown flag
                problems.add(f"command line: unexpected value {flag!r}; each flag takes one value (write a list "
                             "in the config file).")
            continue
        key = flag.split("=")[0].lstrip("-").replace("-", "_")
        if key in RENAMED_ARGUMENTS:
            problems.add(f"command line: --{key} no longer exists in transformers; use {RENAMED_ARGUMENTS[key]}.")
        else:
            problems.add(f"command line: unknown flag '--{key}'.{suggest(key, _actions())} Flags are "
                         "MultiTaskTrainingArguments fields and the keys model, data_dir, max_length.")
    for key, value in vars(given).items():
        if key in _REFUSED:
            problems.add(f"command line: --{key}: manyheads sets this itself; {_REFUSED[key]}.")
        else:
            out[key] = value
    return out


__all__ = ["AUTO_FIELDS", "DEPRECATED_KEYS", "RecipeArguments", "SECTION_KEYS", "argument_fields", "normalize",
           "suggest", "typed_value", "upgrade"]
