"""Diagnostics callbacks: update monitor, task-gradient conflict, task affinity (TAG) and stalled heads (they
observe, never change training). `StalledHeadsCallback` is added by `MultiTaskTrainer` itself.

From a recipe (`diagnostics:` section) `manyheads.recipe.build_trainer` adds them itself. From Python:

```python
from manyheads.callbacks import (GradientConflictCallback, UpdateMonitorCallback, attach_callbacks,
                                 make_probe_batches)
from manyheads.data.collator import MultiTaskCollator

probes = make_probe_batches(train_datasets, MultiTaskCollator(tokenizer, trainer.tasks), size=16)
attach_callbacks(trainer, [UpdateMonitorCallback(every=50), GradientConflictCallback(probes, every=100)])
```

`attach_callbacks` adds them and connects them to the trainer's trackers (`report_to`: TensorBoard, MLflow, ...);
`TaskAffinityCallback(every=100)` draws its own probe batches: pass it in `MultiTaskTrainer(..., callbacks=[...])`.
`trainer.add_callback` works too, but then only their files get the numbers.
"""

from __future__ import annotations

from .affinity import (
    AFFINITY_FILE,
    AFFINITY_SUMMARY,
    AffinityMeasurement,
    TaskAffinityCallback,
    default_every,
    measure_affinity,
)
from .affinity_groups import recommend_groupings
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
from .best_heads import BEST_FILE, BestHeadsCallback
from .conflict import ConflictMeasurement, GradientConflictCallback, make_probe_batches, measure_conflict
from .stalled_heads import STALLED_FILE, StalledHeadsCallback
from .update_monitor import UpdateMonitorCallback, parameter_groups

__all__ = [
    "AFFINITY_FILE",
    "AFFINITY_SUMMARY",
    "AffinityMeasurement",
    "BEST_FILE",
    "BestHeadsCallback",
    "TaskAffinityCallback",
    "default_every",
    "measure_affinity",
    "recommend_groupings",
    "CONFLICT_FILE",
    "DIAGNOSTICS_DIR",
    "MONITOR_FILE",
    "RUN_FILE",
    "STALLED_FILE",
    "ConflictMeasurement",
    "DiagnosticCallback",
    "GradientConflictCallback",
    "StalledHeadsCallback",
    "UpdateMonitorCallback",
    "attach_callbacks",
    "diagnostics_dir",
    "make_probe_batches",
    "measure_conflict",
    "parameter_groups",
    "reporting_callbacks",
]
