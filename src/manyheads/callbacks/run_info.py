"""`RunInfoCallback`: the run's config and task plan saved beside its outputs, for `manyheads report`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .base import RUN_FILE, DiagnosticCallback


def run_info(run: Any, prepared: Any = None, args: Any = None) -> dict[str, Any]:
    """What a report needs to know about a run: its `RunConfig`, the sampling plan and the TrainingArguments."""
    info: dict[str, Any] = {"config": dataclasses.asdict(run)}
    info["config"].pop("config_dir", None)
    if prepared is not None and args is not None:
        from ..build import plan_table

        info["plan"] = plan_table(run, prepared, args.per_device_train_batch_size, args.world_size)
    if args is not None:
        info["training_arguments"] = args.to_dict()
    return info


class RunInfoCallback(DiagnosticCallback):
    """Writes `info` (see `run_info`) to `<output_dir>/diagnostics/run.json` when training starts (main process)."""

    def __init__(self, info: dict[str, Any], output_dir: str | None = None):
        super().__init__(output_dir, log_to_trackers=False)
        self.info = info

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            with open(self.path(args, RUN_FILE), "w", encoding="utf-8") as handle:
                json.dump(self.info, handle, indent=2, default=str)
