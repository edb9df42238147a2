"""The optional sections of a run config: sampling, freeze, balancing and diagnostics.

Each is a dataclass whose `__post_init__` rejects a bad value with the key, the value and the valid choices;
`config.py` builds them (and reports every problem at once) and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SAMPLING_STRATEGIES = ("proportional", "temperature", "uniform", "round_robin")


@dataclass
class SamplingConfig:
    """Which task each micro-batch comes from.

    `proportional` draws tasks in proportion to their size (one pass over all data per epoch),
    `temperature` in proportion to size**(1/T) (T=1 is proportional, large T tends to uniform),
    `uniform` equally, `round_robin` in a fixed cycle.
    """

    strategy: str = "proportional"
    temperature: float = 2.0
    group_by_length: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in SAMPLING_STRATEGIES:
            raise ValueError(
                f"'strategy' is {self.strategy!r}; valid choices: {', '.join(SAMPLING_STRATEGIES)}"
            )
        if self.temperature <= 0:
            raise ValueError(f"'temperature' is {self.temperature}; it must be > 0 (1 = proportional)")


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
class BalancingConfig:
    """How tasks share the encoder's updates: a loss `weighting` or a gradient `aggregator` (not both).

    `weighting` acts on each one-task micro-batch's loss (equal, static, uncertainty, dwa, rlw, gradnorm);
    `aggregator` switches to task-group steps (one micro-batch of each of `group_size` tasks per step) and
    combines the tasks' gradients on the shared encoder (upgrad, mgda, pcgrad, cagrad, imtl_g, nash_mtl, mean).
    `*_kwargs` are the method's constructor arguments, checked against its signature.
    """

    weighting: str | None = None  # None: 'static' when a task sets `weight`, else 'equal'
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator: str | None = None
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    group_size: int | None = None  # tasks per task-group step; None = all tasks

    def __post_init__(self) -> None:
        from .balancing import AGGREGATORS, WEIGHTINGS

        if self.weighting is not None and self.weighting not in WEIGHTINGS:
            raise ValueError(f"'weighting' is {self.weighting!r}; valid choices: {', '.join(WEIGHTINGS)}")
        if self.aggregator is not None and self.aggregator not in AGGREGATORS:
            raise ValueError(f"'aggregator' is {self.aggregator!r}; valid choices: {', '.join(AGGREGATORS)}")
        if self.aggregator is not None and self.weighting not in (None, "equal"):
            raise ValueError(f"'weighting: {self.weighting}' and 'aggregator: {self.aggregator}' both rewrite the "
                             "update; choose one (remove 'weighting' to use the aggregator)")
        if self.group_size is not None and self.group_size < 2:
            raise ValueError(f"'group_size' is {self.group_size}; a task group needs >= 2 tasks")
        if self.group_size is not None and self.aggregator is None:
            raise ValueError("'group_size' applies to task-group steps; set 'aggregator' too, or remove it")


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
