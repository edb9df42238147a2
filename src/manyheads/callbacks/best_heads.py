"""`BestHeadsCallback`: each task keeps its head from the evaluation where its main metric was best.

In a multi-task run the tasks peak at different steps (a small task early, before the shared encoder drifts
towards the large ones; a large task late), and `load_best_model_at_end` can only pick one step for all of them.
With `best_head_per_task=True` (MultiTaskTrainingArguments) `MultiTaskTrainer` adds this callback: at every
evaluation it keeps a CPU copy of the parameters only a task updates (its head, and its LoRA adapter under
`sharing: lora`/`hybrid`, `MultiTaskModel.task_parameters`) when the task's main metric is its best so far;
when training ends it puts every task's best copy back into the model, and writes `best_heads.json` (task ->
the step its parameters come from, the metric and its value) into `output_dir`. The shared encoder stays the
last step's (or, with `load_best_model_at_end`, the best checkpoint's, which Trainer loads first): the heads
picked from earlier steps read features of an encoder that has moved on since, so a task whose best step is
early can score below its logged best (re-evaluate to see it).

Datasets that share a head (`Task.head`) are one unit: the mean of their main metrics picks its step. Each
checkpoint holds the copies (`best_heads.safetensors`, `best_heads.json`), so a resumed run picks as the
uninterrupted one would. Under DDP every rank sees the same gathered metrics and keeps the same copies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.utils import logging

from ..tasks import higher_is_better, main_metric_of
from .base import unwrap

logger = logging.get_logger(__name__)

BEST_FILE = "best_heads.json"
BEST_WEIGHTS = "best_heads.safetensors"


class BestHeadsCallback(TrainerCallback):
    """Keeps each task's best head (see the module docstring). `resumed_from` returns the checkpoint the run
    resumed from, if any (the trainer's), to read the copies kept until then."""

    def __init__(self, resumed_from: Callable[[], str | None] | None = None):
        self.resumed_from = resumed_from or (lambda: None)
        self.best: dict[str, dict[str, Any]] = {}  # unit -> {"step", "metric", "value", "tasks"}
        self.weights: dict[str, torch.Tensor] = {}  # parameter name -> CPU copy, for every unit in `best`
        self.training = False  # evaluations after train() (the user's) must not replace the picks

    @staticmethod
    def units(model: Any) -> dict[str, list[str]]:
        """Head name -> the tasks it serves (one task per unit unless datasets share a head)."""
        return dict(unwrap(model).head_groups)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.best, self.weights, self.training = {}, {}, True
        folder = self.resumed_from()
        if folder and os.path.isfile(os.path.join(folder, BEST_FILE)):
            self.best = json.loads(open(os.path.join(folder, BEST_FILE), encoding="utf-8").read())["heads"]
            if self.best:
                self.weights = load_file(os.path.join(folder, BEST_WEIGHTS))

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, metrics: Any = None,
                    **kwargs: Any) -> None:
        if model is None or not metrics or not self.training:
            return
        module = unwrap(model)
        for unit, tasks in self.units(module).items():
            metric = main_metric_of(module.tasks[tasks[0]])
            values = [metrics.get(f"eval_{task}_{metric}") for task in tasks]
            if any(value is None for value in values):  # an evaluation of some other split, or of some tasks
                continue
            value = sum(values) / len(values)
            kept = self.best.get(unit)
            better = higher_is_better(module.tasks[tasks[0]], metric)
            if kept is not None and not (value > kept["value"] if better else value < kept["value"]):
                continue
            self.best[unit] = {"step": state.global_step, "metric": metric, "value": value, "tasks": tasks}
            for task in tasks:
                for name, parameter in module.task_parameters(task):
                    self.weights[name] = parameter.detach().to("cpu", copy=True).contiguous()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            self._write(folder, with_weights=True)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.training = False
        if model is None or not self.best:
            return
        module = unwrap(model)
        parameters = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in self.weights.items():
                parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))
        if args.should_save:
            self._write(args.output_dir, with_weights=False)
        picked = ", ".join(f"{unit} (step {entry['step']})" for unit, entry in self.best.items())
        encoder = "the best checkpoint's" if args.load_best_model_at_end else "the last step's"
        logger.warning("manyheads: best_head_per_task: each head is its task's best evaluation's: %s; the encoder "
                       "is %s. Details in %s.", picked, encoder, BEST_FILE)

    def _write(self, folder: str, with_weights: bool) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, BEST_FILE), "w", encoding="utf-8") as out:
            json.dump({"heads": self.best}, out, indent=2)
        if with_weights and self.weights:
            save_file(self.weights, os.path.join(folder, BEST_WEIGHTS))
