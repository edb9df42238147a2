"""`pooling: auto` from the checkpoint: a sentence-transformers folder says how its encoder was trained to pool.

Such a folder ships `modules.json` (the module list) and the Pooling module's `config.json` (e.g. `1_Pooling/
config.json` with `"pooling_mode_mean_tokens": true`). A head on an encoder trained as a mean-pooled sentence
encoder (all-MiniLM-L6-v2 and most sentence-transformers models) learns fastest from the same pooling; their
`pooler` layer was never trained for that objective. Where the folder says nothing, `auto` keeps its rule
(`pooler` when the encoder has one, else `cls`; see `heads.py`).

```python
tasks = [MultiLabel(name="emotions", ...)]
apply_checkpoint_pooling(tasks, "sentence-transformers/all-MiniLM-L6-v2")   # before MultiTaskModel.from_encoder
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from .base import SequenceTask, Task

MODULES_FILE = "modules.json"
# sentence-transformers Pooling modes with a head pooling of the same maths. `cls` there is the raw first token;
# ours adds dense + tanh (a fresh layer on the same token), still the token the encoder was trained to fill.
_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def _read_json(folder: str, name: str) -> Any:
    """A JSON file of a local folder or a Hub repository (cache first); None when it is absent or unreadable."""
    path = os.path.join(folder, name)
    if not os.path.isdir(folder):
        try:
            from transformers.utils import cached_file

            path = cached_file(folder, name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except (OSError, ValueError):
            return None
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def checkpoint_pooling(name_or_path: str | os.PathLike) -> str | None:
    """The head pooling (`mean`, `max` or `cls`) a sentence-transformers checkpoint was trained with, else None."""
    folder = str(name_or_path)
    modules = _read_json(folder, MODULES_FILE)
    if not isinstance(modules, list):
        return None
    pooling = next((m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling is None:
        return None
    config = _read_json(folder, f"{pooling.get('path') or ''}/config.json".lstrip("/"))
    if not isinstance(config, dict):
        return None
    modes = [mode for key, mode in _MODES.items() if config.get(key)]
    # One mode exactly; a mix (mean + max) or a mode with no equal here keeps `auto`'s own rule.
    on = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    return modes[0] if len(modes) == 1 and len(on) == 1 else None


def apply_checkpoint_pooling(tasks: Iterable[Task], name_or_path: str | os.PathLike) -> dict[str, str]:
    """Set `pooling` of the tasks left at `auto` to the checkpoint's own pooling, when its folder names one
    (before the heads are built, i.e. before `MultiTaskModel.from_encoder`). Returns {task: pooling} changed."""
    candidates = [t for t in tasks if isinstance(t, SequenceTask) and t.pooling == "auto"]
    mode = checkpoint_pooling(name_or_path) if candidates else None
    if mode is None:
        return {}
    for task in candidates:
        # Written into the setting, not `fitted`: the saved spec must rebuild the very same head.
        task.pooling = mode
    return {task.name: mode for task in candidates}
