"""What the diagnostics callbacks share: their folder in the run, rank-0 writing, and scalars for the trackers.

The callbacks observe and never touch training state. Their scalars go to the experiment trackers the
Trainer reports to (TensorBoard, MLflow, ...: its reporting-integration callbacks) at the step they were
measured, through those callbacks' own `on_log`: so they do not crowd the console log line or
`trainer_state.json`, and a measurement between two logging steps is not lost. `attach_callbacks(trainer,
callbacks)` connects them to the trainer's trackers (`build_trainer` does it); added with `add_callback` they
only write their files.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import INTEGRATION_TO_CALLBACK

DIAGNOSTICS_DIR = "diagnostics"
MONITOR_FILE = "update_monitor.csv"
CONFLICT_FILE = "gradient_conflict.jsonl"
RUN_FILE = "run.json"


def diagnostics_dir(output_dir: str) -> str:
    """The folder of a run (its `output_dir`) where the diagnostics callbacks write their files."""
    return os.path.join(output_dir, DIAGNOSTICS_DIR)


def unwrap(model: Any) -> Any:
    """The model inside DDP / accelerate / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: they are written as null."""
    return value if math.isfinite(value) else None


class DiagnosticCallback(TrainerCallback):
    """Base of the diagnostics callbacks.

    Args:
        output_dir: folder of its files; default `<TrainingArguments.output_dir>/diagnostics`.
        log_to_trackers: send its scalars to the trackers given by `send_to` (see `attach_callbacks`).
    """

    def __init__(self, output_dir: str | None = None, log_to_trackers: bool = True):
        self.output_dir = output_dir
        self.log_to_trackers = log_to_trackers
        self.trackers: list[TrainerCallback] = []
        self._folder: str | None = None

    def send_to(self, trackers: Iterable[TrainerCallback]) -> None:
        """The reporting-integration callbacks (TensorBoard, MLflow, ...) that receive this callback's scalars."""
        self.trackers = list(trackers)

    def folder(self, args: Any) -> str:
        if self._folder is None:
            self._folder = self.output_dir or diagnostics_dir(args.output_dir)
        return self._folder

    def path(self, args: Any, name: str) -> str:
        folder = self.folder(args)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, name)

    def start_file(self, args: Any, state: Any, name: str) -> None:
        """At train begin: a fresh run (global step 0) starts the file anew, so an overwritten run's rows do not
        mix in; a resumed run keeps appending (a reader keeps the last row of a step measured twice)."""
        if state.is_world_process_zero and state.global_step == 0:
            path = os.path.join(self.folder(args), name)
            if os.path.isfile(path):
                os.remove(path)

    def append_jsonl(self, args: Any, name: str, record: dict[str, Any]) -> None:
        # One line per measurement, appended: a resumed run continues the same file.
        with open(self.path(args, name), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def publish(self, args: Any, state: Any, control: Any, scalars: dict[str, float], **kwargs: Any) -> None:
        """Hand `scalars` to each tracker as one log at `state.global_step` (call it from `on_step_end`, where the
        global step is the measured one). Trackers keep their own rules: only the main process writes."""
        scalars = {k: v for k, v in scalars.items() if math.isfinite(v)}
        if not (self.log_to_trackers and scalars):
            return
        for tracker in self.trackers:
            tracker.on_log(args, state, control, logs=dict(scalars), **kwargs)


def reporting_callbacks(callbacks: Iterable[TrainerCallback]) -> list[TrainerCallback]:
    """The reporting integrations among `callbacks` (those `report_to` adds: TensorBoard, MLflow, W&B, ...)."""
    kinds = tuple(INTEGRATION_TO_CALLBACK.values())
    return [cb for cb in callbacks if isinstance(cb, kinds)]


def attach_callbacks(trainer: Any, callbacks: Iterable[TrainerCallback]) -> None:
    """Add `callbacks` to `trainer`, the diagnostics ones connected to its trackers (`TrainingArguments.report_to`)."""
    trackers = reporting_callbacks(trainer.callback_handler.callbacks)
    for callback in callbacks:
        if isinstance(callback, DiagnosticCallback):
            callback.send_to(trackers)
        trainer.add_callback(callback)
