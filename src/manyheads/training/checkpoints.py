"""Checkpoint completeness: a checkpoint folder counts only once a marker file is written after everything else.

Trainer writes `checkpoint-N/` file by file; a crash (kill -9, node loss) in the middle leaves a folder that
looks like a checkpoint but cannot be loaded. manyheads writes `MARKER` last (with fsync), and resuming from
"latest" takes the newest folder that has it, warning about any newer incomplete one.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

MARKER = "manyheads_complete"
BALANCING_STATE = "balancing.pt"
# The optimizer of a learnable weighting when the user supplied the main optimizer (see MultiTaskTrainer).
BALANCING_OPTIMIZER_STATE = "balancing_optimizer.pt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def mark_complete(folder: str) -> None:
    """Flush every file of `folder` to disk, then write the marker (written to a temp name and renamed)."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
    tmp = os.path.join(folder, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("complete\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, os.path.join(folder, MARKER))
    _fsync_dir(folder)


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def checkpoints(output_dir: str) -> list[str]:
    """`checkpoint-N` folders of `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir)
             if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint; newer incomplete ones are skipped with a warning."""
    for folder in reversed(checkpoints(output_dir)):
        if is_complete(folder):
            return folder
        warnings.warn(f"manyheads: {folder} is incomplete (interrupted while saving); skipping it.", stacklevel=2)
    return None


def save_balancing(folder: str, weighting: Any, optimizer: Any = None) -> None:
    """The loss weighting's state (and the optimizer of its parameters, when it has its own) into a checkpoint."""
    import torch

    torch.save(weighting.state_dict(), os.path.join(folder, BALANCING_STATE))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(folder, BALANCING_OPTIMIZER_STATE))


def load_balancing(folder: str, weighting: Any, optimizer: Any, device: Any) -> bool:
    """Restore what `save_balancing` wrote (either file may be missing: a checkpoint of another set-up); whether
    the weighting's state was there."""
    import torch

    path, found = os.path.join(folder, BALANCING_STATE), False
    if os.path.isfile(path):
        weighting.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        found = True
    path = os.path.join(folder, BALANCING_OPTIMIZER_STATE)
    if optimizer is not None and os.path.isfile(path):
        optimizer.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return found
