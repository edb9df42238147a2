"""Diagnostics callbacks: update monitor, task-gradient conflict, and the run info `manyheads report` reads.

From a config (`diagnostics:` section) `build_trainer` adds them itself. From Python:

```python
from manyheads.callbacks import (GradientConflictCallback, UpdateMonitorCallback, attach_callbacks,
                                 make_probe_batches)
from manyheads.data.collator import MultiTaskCollator

probes = make_probe_batches(train_datasets, MultiTaskCollator(tokenizer, trainer.tasks), size=16)
attach_callbacks(trainer, [UpdateMonitorCallback(every=50), GradientConflictCallback(probes, every=100)])
```

`attach_callbacks` adds them and connects them to the trainer's trackers (`report_to`: TensorBoard, MLflow, ...);
`trainer.add_callback` works too, but then only their files get the numbers.
"""

from __future__ import annotations

from typing import Any

from .base import (
    CONFLICT_FILE,
    DIAGNOSTICS_DIR,
    MONITOR_FILE,
    RUN_FILE,
    DiagnosticCallback,
    attach_callbacks,
    diagnostics_dir,
    reporting_callbacks,
)
from .conflict import ConflictMeasurement, GradientConflictCallback, make_probe_batches, measure_conflict
from .run_info import RunInfoCallback, run_info
from .update_monitor import UpdateMonitorCallback, parameter_groups

__all__ = [
    "CONFLICT_FILE",
    "DIAGNOSTICS_DIR",
    "MONITOR_FILE",
    "RUN_FILE",
    "ConflictMeasurement",
    "DiagnosticCallback",
    "GradientConflictCallback",
    "RunInfoCallback",
    "UpdateMonitorCallback",
    "attach_callbacks",
    "build_callbacks",
    "diagnostics_dir",
    "make_probe_batches",
    "measure_conflict",
    "parameter_groups",
    "reporting_callbacks",
    "run_info",
]


def build_callbacks(run: Any, prepared: Any, args: Any) -> list[DiagnosticCallback]:
    """The callbacks a `RunConfig` asks for (`run.diagnostics`), plus the run info that is always written.

    Args:
        run: the `RunConfig`.
        prepared: its `PreparedData` (tokenized training sets for the probe batches, the task plan).
        args: the run's `TrainingArguments` (batch size and seed).
    """
    diagnostics = run.diagnostics
    callbacks: list[DiagnosticCallback] = [RunInfoCallback(run_info(run, prepared, args))]
    if diagnostics.update_monitor:
        callbacks.append(UpdateMonitorCallback(
            every=diagnostics.monitor_every, per_tensor=diagnostics.monitor_per_tensor,
            band=tuple(diagnostics.relative_update_band), patience=diagnostics.band_patience))
    if diagnostics.conflict_every and prepared.train:
        from ..data.collator import MultiTaskCollator

        collator = MultiTaskCollator(prepared.tokenizer, prepared.tasks, run.pad_to_multiple_of)
        probes = make_probe_batches(prepared.train, collator, diagnostics.probe_batch_size, seed=args.seed)
        callbacks.append(GradientConflictCallback(probes, every=diagnostics.conflict_every))
    return callbacks
