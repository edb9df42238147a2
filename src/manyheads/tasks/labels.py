"""Label values as stored in data files, turned into the names a task trains on.

Labels are kept as strings so that 0/1 columns and named labels behave the same. Two options cover common
files: `label_names` maps integer labels to names (GLUE's 0/1, a dataset's class indices, "4" in "4,27"), and
`label_separator` splits a delimited string ("4,27") into a list for multi-label tasks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import shown


def label_key(value: Any) -> str:
    """A label as a string: 1.0 and 1 are "1"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def sorted_labels(values: list[Any]) -> list[str]:
    """Inferred label order: numeric labels by value (0, 1, 2, 10), names alphabetically."""
    keys = {label_key(v) for v in values if v is not None}
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


def read_label_names(value: list[str] | str | os.PathLike | None) -> list[str] | None:
    """`label_names` as a list: given as one, or a file with one name per line (blank lines ignored)."""
    if value is None or isinstance(value, list):
        return None if value is None else [str(v) for v in value]
    path = Path(os.path.expanduser(str(value)))
    if not path.is_file():
        raise ValueError(f"label_names: file not found: {path}. Give a list of names or a file with one name "
                         "per line.")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class LabelReader:
    """Maps raw label cells to label names (`label_names` for integers, `label_separator` for strings)."""

    def __init__(self, names: list[str] | None = None, separator: str | None = None):
        self.names = names
        self.separator = separator

    def name(self, value: Any) -> str:
        """One label's name; raises ValueError for an index outside `label_names`."""
        key = label_key(value).strip() if isinstance(value, str) else label_key(value)
        if self.names is None:
            return key
        try:
            index = int(key)
        except ValueError:
            return key  # already a name
        if not 0 <= index < len(self.names):
            raise ValueError(f"label index {index} is outside label_names (0..{len(self.names) - 1})")
        return self.names[index]

    def many(self, value: Any) -> list[str]:
        """A multi-label cell (a list, or a delimited string with `separator`) as label names."""
        if isinstance(value, str) and self.separator is not None:
            value = [part for part in value.split(self.separator) if part.strip()]
        if not isinstance(value, list):
            raise TypeError(f"expected a list of labels, got {shown(value)}")
        return [self.name(v) for v in value]
