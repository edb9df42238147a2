"""Turning YAML / command-line values into dataclasses, with every problem collected.

PyYAML reads `5e-5` as a string and the command line gives only strings, so values are coerced to the
annotated type of the field they fill. Unknown keys are errors with a "did you mean" hint, never dropped.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError, ProblemCollector, shown

_MISSING = object()


def suggest(key: str, choices: typing.Iterable[str]) -> str:
    """A short "did you mean" hint for an unknown key, or "" when nothing is close."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def parse_scalar(text: str) -> Any:
    """Parse a command-line value the way YAML would (`true`, `3`, `[a, b]`, `null`)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce `value` to the type `hint`; raise ValueError with a message naming `key` on failure."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and str in args and any(typing.get_origin(a) is list for a in args):
            return value  # `list[str] | str`: a string is the str member (a file name), not a one-item list
        errors = []
        # Try the non-string members first so that "5e-5" becomes a float, not stays a string.
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return coerce(value, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"'{key}': got {shown(value)}, expected {_type_name(hint)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ValueError(f"'{key}': got {shown(value)}, valid choices are {list(choices)}")
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"'{key}': got {shown(value)}, expected a list")
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"'{key}': got {shown(value)}, expected a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        # Only the words true/false: a quoted "yes" or "1" is text the user may not mean as a switch.
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"'{key}': got {shown(value)}, expected true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"'{key}': got {shown(value)}, expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"'{key}': got {shown(value)}, expected an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"'{key}': got {shown(value)}, expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"'{key}': got {shown(value)}, expected a number") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"'{key}': got {shown(value)}, expected a string")
    if dataclasses.is_dataclass(hint):
        raise TypeError("use build_dataclass for nested dataclasses")
    return value


def field_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass' init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(hint: Any) -> Any:
    """`X | None` -> `X` when X is a dataclass, so nested sections are built field by field."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return hint


def build_dataclass(cls: type, raw: Any, where: str, problems: ProblemCollector,
                    hidden: tuple[str, ...] = (), **fixed: Any) -> Any:
    """Build `cls` from a mapping, coercing every field; record problems instead of raising.

    Returns None when the mapping cannot produce an instance (a required field is missing or wrong).
    `fixed` fills fields that are built elsewhere; `hidden` names those of them the user can never set
    (for example the config file's folder), so they are neither accepted nor suggested.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(f"{where}: expected a mapping of keys, got {shown(raw)}.")
        return None
    hints = field_hints(cls)
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    kwargs: dict[str, Any] = dict(fixed)
    ok = True
    for key, value in raw.items():
        if key not in hints or key in fixed:
            valid = sorted(k for k in hints if k not in hidden)
            problems.add(
                f"{where}: unknown key '{key}'.{suggest(str(key), valid)} Valid keys: {', '.join(valid)}."
            )
            ok = False
            continue
        nested = _unwrap_optional(hints[key])
        if dataclasses.is_dataclass(nested):
            built = build_dataclass(nested, value, f"{where}.{key}", problems)
            ok = ok and built is not None
            kwargs[key] = built
            continue
        try:
            kwargs[key] = coerce(value, nested, f"{where}.{key}")
        except ValueError as err:
            problems.add(f"{err}. Fix the value in the config.")
            ok = False
    for key in sorted(required - set(kwargs)):
        problems.add(f"{where}: required key '{key}' is missing. Add '{key}: ...'.")
        ok = False
    if not ok:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as err:  # several problems, each its own line under this key
        for detail in err.details:
            problems.add(f"{where}: {detail}")
        return None
    except ValueError as err:
        problems.add(f"{where}: {err}")
        return None
