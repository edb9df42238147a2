"""`RunInfoCallback`: the recipe and task plan saved beside a run's outputs, for `manyheads report`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..callbacks.base import RUN_FILE, DiagnosticCallback
from ..tasks import task_settings


def run_info(run: Any, plan: list[dict[str, Any]] | None = None, args: Any = None) -> dict[str, Any]:
    """What a report needs to know about a run: its recipe (each task as its type, settings and data), the
    sampling plan and the training arguments."""
    config = dataclasses.asdict(dataclasses.replace(run, tasks=[]))
    config.pop("config_dir", None)
    config.update(config.pop("training"))  # in the recipe's shape: the argument fields at the top level
    config["tasks"] = [{"type": e.task.type, **task_settings(e.task),
                        "data": dataclasses.asdict(e.data) if e.data is not None else None} for e in run.tasks]
    info: dict[str, Any] = {"config": config}
    if plan is not None:
        info["plan"] = plan
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
