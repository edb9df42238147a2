"""Binding a YAML mapping to a dataclass (a task class, `DataConfig`, `Sharing`, ...), every problem collected.

What `HfArgumentParser` cannot type: these fields are unions of lists and strings (`text: str | list[str]`) or
mappings. Each value is checked against the field's annotation (PyYAML reads `5e-5` as a string); unknown keys
are errors listing the valid ones, never dropped. The arguments' fields are typed by the parser (`arguments.py`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from ..errors import ConfigError, ProblemCollector, shown
from .arguments import suggest

_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as the type `hint`.

    Raises:
        ValueError: naming `key`, the value and the expected type.
    """
    origin = typing.get_origin(hint)
    wrong = ValueError(f"'{key}': got {shown(value)}, expected "
                       f"{_EXPECTED.get(hint) or getattr(hint, '__name__', None) or str(hint).replace('typing.', '')}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and str in args and any(typing.get_origin(a) is list for a in args):
            return value  # `list[str] | str`: a string is the str member (a file name), not a one-item list
        # The non-string members first, so that "5e-5" becomes a float rather than staying a string.
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return coerce(value, arg, key)
            except ValueError:
                continue
        raise wrong
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        values = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"'{key}': got {shown(value)}, expected a list")
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(values)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"'{key}': got {shown(value)}, expected a mapping")
        return dict(value)
    if hint not in _EXPECTED:
        return value
    if hint is bool:
        # Only the words true/false: a quoted "yes" or "1" is text the user may not mean as a switch.
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, bool):
            return value
        raise wrong
    if isinstance(value, bool) or (hint is str and not isinstance(value, (str, int, float))):
        raise wrong
    if hint is int and isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise wrong
    try:
        return hint(value)
    except (TypeError, ValueError):
        raise wrong from None


def field_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass' init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def bind(cls: type, raw: dict[str, Any], where: str, problems: ProblemCollector,
         also_valid: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The keys of `raw` as `cls`' constructor arguments, each coerced to its field's annotation; None (the
    problems recorded) when a key is unknown (listed with the valid ones), mistyped or a required one is missing."""
    hints = field_hints(cls)
    kwargs: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        if key not in hints:
            valid = sorted([*hints, *also_valid])
            problems.add(f"{where}: unknown key '{key}'.{suggest(str(key), valid)} Valid keys: {', '.join(valid)}.")
            ok = False
            continue
        try:
            kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
        except ValueError as err:
            problems.add(f"{err}. Fix the value in the config.")
            ok = False
    for f in dataclasses.fields(cls):
        required = f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in raw:
            problems.add(f"{where}: required key '{f.name}' is missing. Add '{f.name}: ...'.")
            ok = False
    return kwargs if ok else None


def construct(cls: type, kwargs: dict[str, Any] | None, where: str, problems: ProblemCollector) -> Any:
    """`cls(**kwargs)`, its own checks' errors recorded under `where`; None when it refuses (or kwargs is None)."""
    if kwargs is None:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as err:  # several problems, each its own line under this key
        problems.problems.extend(f"{where}: {detail}" for detail in err.details)
    except (TypeError, ValueError) as err:
        problems.add(f"{where}: {err}")
    return None


def build_dataclass(cls: type, raw: Any, where: str, problems: ProblemCollector) -> Any:
    """`cls` built from a mapping (None: empty), every problem recorded; None when it cannot be built."""
    if raw is not None and not isinstance(raw, dict):
        problems.add(f"{where}: expected a mapping of keys, got {shown(raw)}.")
        return None
    return construct(cls, bind(cls, raw or {}, where, problems), where, problems)
