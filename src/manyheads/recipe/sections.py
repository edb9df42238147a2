"""The recipe's sections that are constructor arguments, not `MultiTaskTrainingArguments` fields: `freeze`
(`MultiTaskModel.freeze`) and `diagnostics` (the diagnostics callbacks). `sharing` is the library's `Sharing`.

Each is a dataclass whose `__post_init__` rejects a bad value with the key, the value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FreezeConfig:
    """Parameters kept fixed: the whole encoder, its embeddings, or its first `layers` layers."""

    encoder: bool = False
    embeddings: bool = False
    layers: int = 0

    def __post_init__(self) -> None:
        if self.layers < 0:
            raise ValueError(f"'layers' is {self.layers}; it must be >= 0")


@dataclass
class DiagnosticsConfig:
    """What the run measures besides losses and metrics (see `manyheads.callbacks`).

    `update_monitor`: per parameter group, ||update||, ||update||/||param|| and ||grad|| every
    `monitor_every` optimizer steps (default: logging_steps); warns when a group's relative update stays
    outside `relative_update_band` for `band_patience` measurements in a row.
    `conflict_every`: every N optimizer steps, each task's gradient norm on the shared encoder and the
    pairwise cosine similarities, on a fixed probe batch of `probe_batch_size` examples per task (0 = off).
    """

    update_monitor: bool = False
    monitor_every: int | None = None
    monitor_per_tensor: bool = False
    relative_update_band: list[float] = field(default_factory=lambda: [1e-6, 1e-2])
    band_patience: int = 3
    conflict_every: int = 0
    probe_batch_size: int = 16

    def __post_init__(self) -> None:
        low, high = (list(self.relative_update_band) + [None, None])[:2]
        if len(self.relative_update_band) != 2 or not 0 <= low < high:
            raise ValueError(f"'relative_update_band' is {self.relative_update_band}; give [low, high] with "
                             "0 <= low < high, e.g. [1.0e-6, 1.0e-2]")
        for key in ("monitor_every", "band_patience", "probe_batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"'{key}' is {value}; it must be >= 1")
        if self.conflict_every < 0:
            raise ValueError(f"'conflict_every' is {self.conflict_every}; it must be >= 0 (0 = off)")
