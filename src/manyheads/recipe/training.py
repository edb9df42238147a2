"""The `training` section: `MultiTaskTrainingArguments` fields, typed by `HfArgumentParser` (as trl's `TrlParser`).

Each value that is text (YAML reads `5e-5` as a string; command-line values are always text) goes through the
`type` and `choices` that `HfArgumentParser` derived from the field: `--eval_strategy no` stays the string
"no", `bf16: "false"` becomes False. Each problem is collected, so every error is reported at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import types
import typing
from typing import Any

from transformers import HfArgumentParser

from ..errors import ProblemCollector, shown
from ..training_args import RENAMED_ARGUMENTS, MultiTaskTrainingArguments
from .coerce import suggest

# Fields that also take `auto` (MultiTaskTrainingArguments resolves it), beside the type HfArgumentParser knows.
AUTO_FIELDS = ("bf16",)
# Annotated `str | None`, but TrainingArguments also reads a list of options there.
_LIST_TOO = ("fsdp",)


@functools.lru_cache(maxsize=1)
def _actions() -> dict[str, argparse.Action]:
    parser = HfArgumentParser(MultiTaskTrainingArguments)
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def training_fields() -> set[str]:
    return set(_actions())


@functools.lru_cache(maxsize=1)
def _scalar_fields() -> frozenset[str]:
    """Fields whose annotation holds only scalars (str, numbers, booleans, enums): no list or mapping fits them."""
    def scalar(hint: Any) -> bool:
        return hint in (str, int, float, bool, type(None)) or (isinstance(hint, type) and issubclass(hint, enum.Enum))

    hints = typing.get_type_hints(MultiTaskTrainingArguments)
    found = set()
    for item in dataclasses.fields(MultiTaskTrainingArguments):
        hint = hints.get(item.name)
        members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if item.init and all(scalar(m) for m in members) and item.name not in _LIST_TOO:
            found.add(item.name)
    return frozenset(found)


def _type_name(action: argparse.Action) -> str:
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    return getattr(action.type, "__name__", "a value").replace("string_to_bool", "true or false")


def _typed(key: str, value: Any, action: argparse.Action) -> Any:
    if key in AUTO_FIELDS and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"  # resolved by MultiTaskTrainingArguments for this machine
    choices = [str(c) for c in action.choices] if action.choices else None
    if isinstance(value, bool) and choices and "no" in choices and not value:
        value = "no"  # YAML 1.1 reads an unquoted `no` as false
    if isinstance(value, (list, tuple, dict, set)) and key in _scalar_fields():
        # Without this a list reached TrainingArguments as is: `run_name` built from nested YAML aliases (a few
        # hundred bytes) was then written out whole, gigabytes, by the run's logging and saved state.
        raise ValueError(f"'training.{key}': got {shown(value)}, expected {_type_name(action)}")
    if isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"'training.{key}': got {shown(value)}, expected {_type_name(action)}") from None
    if choices and value is not None and str(getattr(value, "value", value)) not in choices:
        raise ValueError(f"'training.{key}': got {shown(value)}, expected {_type_name(action)}")
    return value


def check_training(raw: Any, owned: dict[str, str], problems: ProblemCollector) -> dict[str, Any]:
    """The `training` section as typed values; problems for unknown, renamed, owned and mistyped keys."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(f"training: expected a mapping of TrainingArguments fields, got {shown(raw)}.")
        return {}
    actions = _actions()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in owned:
            problems.add(f"training.{key}: manyheads sets this itself; {owned[key]}.")
        elif key in RENAMED_ARGUMENTS:
            problems.add(f"training.{key}: this TrainingArguments field no longer exists; use "
                         f"{RENAMED_ARGUMENTS[key]} instead.")
        elif key not in actions:
            problems.add(f"training: unknown TrainingArguments field '{key}'.{suggest(key, actions)} "
                         "See transformers.TrainingArguments for valid fields.")
        else:
            try:
                out[key] = _typed(key, value, actions[key])
            except ValueError as err:
                problems.add(f"{err}. Fix the value in the config.")
    return out
