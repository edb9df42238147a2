"""`TaskAffinityCallback`: which tasks help which, measured during one multi-task run (TAG).

Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning", NeurIPS 2021. The inter-task
affinity of task i onto task j at a step is

    A[i][j] = 1 - L_j(theta_s - lr * grad_{theta_s} L_i) / L_j(theta_s)

where theta_s are the shared parameters (`model.shared_parameters()`: the encoder, never the heads or a task's
adapter), the heads stay as they are, and each L is a task's unweighted loss on its own fixed probe batch. Positive:
a step on task i alone would have lowered task j's loss. The lookahead is a plain SGD step, as in the paper, with
the learning rate the optimizer gives each shared parameter's group at that step (the encoder group's; per group
under layer-wise rates), whatever the optimizer really is (AdamW's step has another size and direction).
Averaged over the measurements, the matrix feeds `recommend_groupings` (`affinity_groups`).

How: at `on_step_end` (after the optimizer step and `zero_grad`), on the unwrapped model in eval mode (dropout off,
so no draw from the training RNG), for each task i one forward and `torch.autograd.grad` (so no `.grad` and no DDP
hook is touched), the lookahead applied in place, N forwards without gradients, then the shared parameters copied
back bit for bit from a snapshot (in a `finally`). The optimizer is only read. Cost per measurement: N forward and
backward passes plus N^2 forwards on the probe batches, against 1 forward and backward per training step; the
default `every` (`default_every`) keeps the estimated overhead under 25% of the run. Under DDP every rank measures
on its own probe rows (seed + rank) and the matrix is the mean over ranks; the main process writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging

from ..errors import ConfigError
from .affinity_groups import recommend_groupings
from .base import DiagnosticCallback, finite_or_none, unwrap
from .conflict import make_probe_batches, shared_parameters

logger = logging.get_logger(__name__)

AFFINITY_FILE = "affinity.jsonl"
AFFINITY_SUMMARY = "affinity.json"
OVERHEAD = 0.25  # the share of a run's time the default `every` allows the measurements


def default_every(num_tasks: int, probe_batch_size: int = 16, train_batch_size: int = 16,
                  overhead: float = OVERHEAD) -> int:
    """Steps between measurements so that they cost about `overhead` of training (at least 50).

    One measurement is N forward+backward passes and N^2 forwards on probe batches; a training step is one
    forward+backward (about 3 forwards) on `train_batch_size` rows (per device, times the accumulation steps). So a
    measurement costs about N (N + 3) / 3 training steps (9.3 for 4 tasks, 29 for 8, 60 for 12), times
    probe / train rows when the probe batch is the larger (a smaller one is not counted cheaper: small batches on
    a GPU cost about the same as large ones).
    """
    rows = max(1.0, probe_batch_size / max(1, train_batch_size))
    return max(50, math.ceil(num_tasks * (num_tasks + 3) / 3 * rows / overhead))


def affinity_problem(model: Any) -> str | None:
    """Why lookahead affinity cannot be measured on `model`, or None."""
    module = unwrap(model)
    sharing = getattr(module, "sharing", None)
    if getattr(sharing, "mode", None) == "lora":
        return ("sharing: 'lora' gives every task its own adapter on a frozen encoder, so no parameter is shared and "
                "a step on one task cannot change another's loss (every affinity would be 0). Measure affinity on a "
                "run with sharing: hard or hybrid.")
    if not shared_parameters(module):
        return ("the shared encoder has no trainable parameter (frozen), so a step on one task cannot change "
                "another's loss. Unfreeze the encoder (freeze.encoder: false) to measure affinity.")
    return None


@dataclass
class AffinityMeasurement:
    """One step's N x N matrix (`matrix[i][j]`: task i onto task j, in `tasks` order) and the probe losses."""

    step: int
    tasks: list[str]
    matrix: list[list[float]]
    loss: dict[str, float]
    lr: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "tasks": self.tasks, "lr": self.lr,
                "matrix": [[finite_or_none(v) for v in row] for row in self.matrix],
                "loss": {k: finite_or_none(v) for k, v in self.loss.items()}}


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def parameter_rates(optimizer: Any, params: list[torch.nn.Parameter]) -> list[float]:
    """The learning rate of each of `params` in `optimizer` now (0 for a parameter it does not hold)."""
    rate = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    return [rate.get(id(p), 0.0) for p in params]


def measure_affinity(model: Any, probe_batches: dict[str, dict[str, Any]], lr: float | list[float],
                     step: int = 0, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> AffinityMeasurement:
    """The lookahead affinity matrix on `probe_batches`; the model is left exactly as it was.

    Args:
        model: a `MultiTaskModel` (wrapped or not).
        probe_batches: one collated batch per task (`make_probe_batches`).
        lr: the lookahead's learning rate, one for all shared parameters or one per parameter of
            `shared_parameters(model)`.
        step: recorded with the measurement.
        reduce: averages a tensor over ranks (DDP); None on one process.

    Raises:
        ConfigError: nothing is shared (`sharing: lora`, or a frozen encoder).
    """
    problem = affinity_problem(model)
    if problem:
        raise ConfigError(f"TaskAffinityCallback: {problem}")
    module = unwrap(model)
    params = [p for _, p in shared_parameters(module)]
    rates = [float(lr)] * len(params) if isinstance(lr, (int, float)) else list(lr)
    device = params[0].device
    tasks = list(probe_batches)
    inputs = {task: _on(batch, device) for task, batch in probe_batches.items()}
    # Losses stay on the device until the end: no host sync per forward.
    before = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    after = torch.zeros(len(tasks), len(tasks), dtype=torch.float64, device=device)
    was_training = module.training
    snapshot = [p.detach().clone() for p in params]  # one copy of the shared weights, on their device
    moved = False
    module.eval()  # dropout off: the same probe gives the same loss, and the training RNG stream is not drawn from
    try:
        with torch.no_grad():
            for i, task in enumerate(tasks):
                with torch.enable_grad():
                    loss = module(**inputs[task]).loss
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                before[i] = loss.detach()
                moved = True
                for param, grad, rate in zip(params, grads, rates):
                    if grad is not None:
                        param.add_(grad, alpha=-rate)
                del grads, loss
                for j, other in enumerate(tasks):
                    after[i, j] = module(**inputs[other]).loss
                for param, saved in zip(params, snapshot):  # bit for bit: a copy, not a step back
                    param.copy_(saved)
                moved = False
    finally:
        if moved:  # an error mid-lookahead: the weights go back all the same
            with torch.no_grad():
                for param, saved in zip(params, snapshot):
                    param.copy_(saved)
        module.train(was_training)
    matrix = 1.0 - after / before[None, :]  # row i: the step on task i; column j: the loss it changes
    if reduce is not None:
        matrix, before = reduce(matrix), reduce(before)
    matrix, before = matrix.cpu(), before.cpu()
    return AffinityMeasurement(step=step, tasks=tasks, matrix=matrix.tolist(),
                               loss=dict(zip(tasks, before.tolist())), lr=rates[0] if rates else 0.0)


def summarize(history: list[dict[str, Any]] | list[AffinityMeasurement]) -> dict[str, Any] | None:
    """`affinity.json`: the mean matrix over the measurements, their steps, and the recommended groupings."""
    records = [r.to_json() if isinstance(r, AffinityMeasurement) else r for r in history]
    if not records:
        return None
    tasks = records[-1]["tasks"]
    records = [r for r in records if r["tasks"] == tasks]
    stacked = torch.tensor([[[math.nan if v is None else v for v in row] for row in r["matrix"]] for r in records],
                           dtype=torch.float64)
    mean = stacked.nanmean(dim=0)
    return {"tasks": tasks, "measurements": len(records), "steps": [r["step"] for r in records],
            "matrix": [[finite_or_none(v) for v in row] for row in mean.tolist()],
            "definition": "matrix[i][j] = 1 - L_j(shared - lr * grad L_i) / L_j(shared), mean over measurements",
            "groupings": recommend_groupings(mean.numpy(), tasks)}


class TaskAffinityCallback(DiagnosticCallback):
    """Lookahead inter-task affinity (TAG, Fifty et al. 2021) every `every` optimizer steps.

    Writes one JSON line per measurement to `<output_dir>/diagnostics/affinity.jsonl`
    (`{"step", "tasks", "lr", "matrix": [[...]], "loss": {task: probe loss}}`), and at the end of training
    `affinity.json` (`{"tasks", "measurements", "steps", "matrix": mean, "groupings": [...]}`, see `summarize`).
    Sends `affinity/<task_i>/<task_j>` to the trackers for up to 16 tasks.

    ```python
    trainer = MultiTaskTrainer(model, args, train_dataset=..., processing_class=tokenizer,
                               callbacks=[TaskAffinityCallback(every=100)])
    ```

    Args:
        every: steps between measurements; default `default_every(tasks, probe rows, training rows per step)`,
            about a quarter of the run's time.
        start: the first step measured (default `every`); then every `every` steps.
        measurements: stop after this many (default: until the end of training).
        probe_batches: one collated batch per task; default: `probe_batch_size` rows per task drawn at train begin
            from the trainer's tokenized training sets (seed `args.seed` + rank).
        probe_batch_size: rows per task of the drawn probe batches.
        output_dir: folder of the files; default `<TrainingArguments.output_dir>/diagnostics`.
        log_to_trackers: send the values to the trackers (see `attach_callbacks`).

    Attributes:
        history: the `AffinityMeasurement`s so far.
    """

    def __init__(self, every: int | None = None, start: int | None = None, measurements: int | None = None,
                 probe_batches: dict[str, dict[str, Any]] | None = None, probe_batch_size: int = 16,
                 output_dir: str | None = None, log_to_trackers: bool = True):
        super().__init__(output_dir, log_to_trackers)
        for key, value in (("every", every), ("start", start), ("measurements", measurements),
                           ("probe_batch_size", probe_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"TaskAffinityCallback: {key}={value!r}; give an integer >= 1"
                                 + (" (or leave it out)" if key != "probe_batch_size" else ""))
        self.every, self.start, self.measurements = every, start, measurements
        self.probe_batches = probe_batches
        self.probe_batch_size = probe_batch_size
        self.history: list[AffinityMeasurement] = []
        self._zero_lr_warned = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, train_dataloader: Any = None,
                       **kwargs: Any) -> None:
        problem = affinity_problem(model) if model is not None else None
        if problem:
            raise ConfigError(f"TaskAffinityCallback: {problem}")
        if self.probe_batches is None:
            datasets = getattr(getattr(train_dataloader, "dataset", None), "datasets", None)
            collator = getattr(train_dataloader, "collate_fn", None)
            if not datasets or collator is None:
                raise ValueError("TaskAffinityCallback: no probe_batches and no multi-task training set to draw "
                                 "them from; train with MultiTaskTrainer or pass probe_batches=make_probe_batches"
                                 "(datasets, collator)")
            self.probe_batches = make_probe_batches(datasets, collator, self.probe_batch_size,
                                                    seed=args.seed + args.process_index)
        if self.every is None:
            probe_rows = max(len(batch["input_ids"]) for batch in self.probe_batches.values())
            step_rows = args.per_device_train_batch_size * args.gradient_accumulation_steps
            self.every = default_every(len(self.probe_batches), probe_rows, step_rows)
        if self.start is None:
            self.start = self.every
        self.start_file(args, state, AFFINITY_FILE)
        self.start_file(args, state, AFFINITY_SUMMARY)  # an earlier run's summary must not pass for this one's

    def due(self, step: int) -> bool:
        return (step >= self.start and (step - self.start) % self.every == 0
                and (self.measurements is None or len(self.history) < self.measurements))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kwargs: Any) -> None:
        # Every rank reaches here at the same step (the schedule is shared): the reduce below is collective.
        if model is None or optimizer is None or self.probe_batches is None or not self.due(state.global_step):
            return
        rates = parameter_rates(optimizer, [p for _, p in shared_parameters(model)])
        if not any(rates):  # a schedule at 0 (warmup start, end of decay): the lookahead would not move
            if not self._zero_lr_warned:
                logger.warning("manyheads: task affinity not measured at step %d: the learning rate is 0",
                               state.global_step)
                self._zero_lr_warned = True
            return
        reduce = None
        if args.world_size > 1:
            from accelerate.utils import reduce as accelerate_reduce

            def reduce(tensor: torch.Tensor) -> torch.Tensor:
                return accelerate_reduce(tensor, reduction="mean")
        measurement = measure_affinity(model, self.probe_batches, rates, state.global_step, reduce)
        self.history.append(measurement)
        if not state.is_world_process_zero:
            return
        self.append_jsonl(args, AFFINITY_FILE, measurement.to_json())
        if len(measurement.tasks) <= 16:
            scalars = {f"affinity/{a}/{b}": v for a, row in zip(measurement.tasks, measurement.matrix)
                       for b, v in zip(measurement.tasks, row) if a != b}
            self.publish(args, state, control, scalars, model=model, optimizer=optimizer, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.write_summary(args)

    def write_summary(self, args: Any) -> dict[str, Any] | None:
        """`affinity.json` from every measurement in `affinity.jsonl` (a resumed run's earlier ones included)."""
        path = os.path.join(self.folder(args), AFFINITY_FILE)
        records: dict[int, dict[str, Any]] = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        records[record["step"]] = record  # a step measured twice (resume): the last one
        summary = summarize([records[s] for s in sorted(records)])
        if summary is not None:
            with open(self.path(args, AFFINITY_SUMMARY), "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=1)
        return summary
