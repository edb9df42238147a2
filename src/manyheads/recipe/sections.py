"""The optional sections of a recipe: sampling, freeze, balancing and diagnostics.

Each is a dataclass whose `__post_init__` rejects a bad value with the key, the value and the valid choices,
using the library's own checks (so the rules live once). `RUN_ARGUMENTS` maps each section key that is a
`MultiTaskTrainingArguments` field to that field: the recipe keeps its sections, the library its flat fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..balancing import check_choice, choice_problems
from ..data.strategies import SAMPLING_STRATEGIES, resolve_strategy

# (section, key) -> MultiTaskTrainingArguments field; top-level keys have section None.
RUN_ARGUMENTS: dict[tuple[str | None, str], str] = {
    ("sampling", "strategy"): "sampling_strategy",
    ("sampling", "temperature"): "sampling_temperature",
    ("sampling", "group_by_length"): "group_by_length",
    ("balancing", "weighting"): "loss_weighting",
    ("balancing", "weighting_kwargs"): "loss_weighting_kwargs",
    ("balancing", "aggregator"): "gradient_aggregator",
    ("balancing", "aggregator_kwargs"): "gradient_aggregator_kwargs",
    ("balancing", "group_size"): "task_group_size",
    (None, "max_nonfinite_steps"): "max_nonfinite_steps",
    (None, "pad_to_multiple_of"): "pad_to_multiple_of",
}


@dataclass
class SamplingConfig:
    """Which task each micro-batch comes from: `strategy` (proportional, temperature, uniform, round_robin, or an
    import path), `temperature` for temperature sampling, `group_by_length` within each task."""

    strategy: str = "proportional"
    temperature: float = 2.0
    group_by_length: bool = True

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, SAMPLING_STRATEGIES)
        if self.strategy == "temperature" or self.temperature <= 0:
            resolve_strategy("temperature", self.temperature)  # its own check of T


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
    """How tasks share the encoder's updates: a loss `weighting` or a gradient `aggregator` (not both); see
    `manyheads.balancing`. `*_kwargs` are the method's constructor arguments, checked against its signature."""

    weighting: str | None = None  # None: 'static' when a task sets `weight`, else 'equal'
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator: str | None = None
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    group_size: int | None = None  # tasks per task-group step; None = all tasks

    def __post_init__(self) -> None:
        problems = choice_problems(self.weighting, self.aggregator, self.group_size)
        if problems:
            raise ValueError(problems[0])


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
