"""Naming user classes by import path, as a config file does (`my_package.module.MyWeighting`)."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """`package.module.Name` -> the object.

    Raises:
        ImportError / AttributeError: the module or the name does not exist.
    """
    module, _, name = path.rpartition(".")
    if not module:
        raise ImportError(f"{path!r} is not an import path (package.module.Name)")
    return getattr(importlib.import_module(module), name)
