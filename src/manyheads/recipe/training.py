"""The `training` section: `MultiTaskTrainingArguments` fields, typed by `HfArgumentParser` (as trl's `TrlParser`).

Each value that is text (YAML reads `5e-5` as a string; command-line values are always text) goes through the
`type` and `choices` that `HfArgumentParser` derived from the field: `--eval_strategy no` stays the string
"no", `bf16: "false"` becomes False. Each problem is collected, so every error is reported at once.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from transformers import HfArgumentParser

from ..errors import ProblemCollector, shown
from ..training_args import RENAMED_ARGUMENTS, MultiTaskTrainingArguments
from .coerce import suggest


@functools.lru_cache(maxsize=1)
def _actions() -> dict[str, argparse.Action]:
    parser = HfArgumentParser(MultiTaskTrainingArguments)
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def training_fields() -> set[str]:
    return set(_actions())


def _type_name(action: argparse.Action) -> str:
    if action.choices:
        return "one of " + ", ".join(map(str, action.choices))
    return getattr(action.type, "__name__", "a value").replace("string_to_bool", "true or false")


def _typed(key: str, value: Any, action: argparse.Action) -> Any:
    choices = [str(c) for c in action.choices] if action.choices else None
    if isinstance(value, bool) and choices and "no" in choices and not value:
        value = "no"  # YAML 1.1 reads an unquoted `no` as false
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
