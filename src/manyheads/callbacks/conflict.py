"""`GradientConflictCallback`: do the tasks pull the shared encoder the same way?

Every `every` optimizer steps, on one fixed probe batch per task, it computes each task's gradient on the
trainable parameters of the shared encoder, its norm, and the cosine similarity between every pair of tasks
(negative: the tasks conflict; see Yu et al., "Gradient Surgery for Multi-Task Learning", 2020).

How: `torch.autograd.grad` of each task's unweighted loss with respect to the encoder parameters, on the
unwrapped model, so `.grad` of the real parameters is never touched and no DDP hook fires. The model runs in
eval mode (dropout off) for the probes and is put back in its mode afterwards: with dropout the same batch
would give a different gradient at every measurement, and two identical tasks would not have cosine 1.
Memory: one flattened encoder gradient per task at a time of measurement, in one preallocated (tasks x
parameters) float32 matrix; the work beyond the backward passes is that matrix's Gram product. Cosines are
stored to 4 decimals, and above 16 tasks the trackers get per-task mean cosines instead of every pair. Under
DDP only the main process measures (the replicas are identical) and writes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging

from ..gradients import norms_and_cosines
from .base import CONFLICT_FILE, DiagnosticCallback, finite_or_none, unwrap

logger = logging.get_logger(__name__)

PAIR_SCALARS_UP_TO = 16  # tasks; more: per-task mean cosines and a summary go to the trackers, not every pair


def make_probe_batches(datasets: dict[str, Any], collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
                       size: int = 16, seed: int = 0) -> dict[str, dict[str, Any]]:
    """One fixed batch per task: `size` rows drawn once (seeded) from each tokenized dataset, collated.

    Args:
        datasets: tokenized datasets by task name, each row with its `task` column (e.g. `PreparedData.train`).
        collator: e.g. `MultiTaskCollator(tokenizer, tasks)`.
        size: rows per task (all rows of a smaller dataset).
        seed: which rows; a random draw rather than the first rows, which files often sort by label.
    """
    if size < 1:
        raise ValueError(f"make_probe_batches: size={size}; it must be >= 1")
    rng = random.Random(seed)
    batches = {}
    for name, dataset in datasets.items():
        rows = sorted(rng.sample(range(len(dataset)), min(size, len(dataset))))
        batches[name] = collator([dataset[i] for i in rows])
    return batches


def shared_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters of the shared encoder (everything but the heads of a model without `encoder`); task
    adapters (soft sharing) are not shared."""
    module = unwrap(model)
    if hasattr(module, "shared_parameters"):
        return module.shared_parameters()
    encoder = getattr(module, "encoder", None)
    if encoder is not None:
        return [(f"encoder.{n}", p) for n, p in encoder.named_parameters() if p.requires_grad]
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad and not n.startswith("heads.")]


@dataclass
class ConflictMeasurement:
    """Task gradients on the shared encoder at one step: norms, pairwise cosines (rows/columns in `tasks`
    order; NaN where a gradient is zero) and the probe losses."""

    step: int
    tasks: list[str]
    grad_norm: dict[str, float]
    cosine: list[list[float]]
    loss: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "tasks": self.tasks,
                "grad_norm": {k: finite_or_none(v) for k, v in self.grad_norm.items()},
                "cosine": [[finite_or_none(v) for v in row] for row in self.cosine],
                "loss": {k: finite_or_none(v) for k, v in self.loss.items()}}

    def scalars(self) -> dict[str, float]:
        """Tracker scalars: each task's norm and every pair's cosine; above `PAIR_SCALARS_UP_TO` tasks (pairs grow
        as the square: 19,900 at 200 tasks), each task's mean cosine with the others and the pairs' summary."""
        out = {f"conflict/grad_norm/{t}": v for t, v in self.grad_norm.items()}
        n = len(self.tasks)
        if n <= PAIR_SCALARS_UP_TO:
            for i, a in enumerate(self.tasks):
                for j in range(i + 1, n):
                    out[f"conflict/cosine/{a}/{self.tasks[j]}"] = self.cosine[i][j]
            return out
        matrix = torch.tensor(self.cosine, dtype=torch.float64)
        finite = torch.isfinite(matrix) & ~torch.eye(n, dtype=torch.bool)
        for i, task in enumerate(self.tasks):
            if finite[i].any():
                out[f"conflict/mean_cosine/{task}"] = float(matrix[i][finite[i]].mean())
        pairs = matrix[torch.triu(finite, diagonal=1)]
        if len(pairs):
            out.update({"conflict/cosine_min": float(pairs.min()), "conflict/cosine_median": float(pairs.median()),
                        "conflict/negative_pairs": float((pairs < 0).double().mean())})
        return out


def measure_conflict(model: Any, probe_batches: dict[str, dict[str, Any]], step: int = 0) -> ConflictMeasurement:
    """Each task's gradient on the shared encoder for its probe batch; the model is left as it was."""
    module = unwrap(model)
    params = [p for _, p in shared_parameters(module)]
    if not params:
        raise ValueError("no trainable parameter in the shared encoder (is it frozen?); gradient conflict needs "
                         "one: unfreeze it or set diagnostics.conflict_every: 0")
    device = params[0].device
    was_training = module.training
    module.eval()  # dropout off: the same probe gives the same gradient each time
    # One row per task, filled in place: no per-task flat copy and no stacked copy of them all on top.
    stacked = torch.zeros(len(probe_batches), sum(p.numel() for p in params), dtype=torch.float32, device=device)
    losses = {}
    try:
        for row, (task, batch) in zip(stacked, probe_batches.items()):
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.enable_grad():
                loss = module(**inputs).loss
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            losses[task] = float(loss.detach())
            offset = 0
            for grad, param in zip(grads, params):
                if grad is not None:  # an unused parameter keeps its zeros
                    row[offset:offset + param.numel()].copy_(grad.reshape(-1))
                offset += param.numel()
            del grads, loss
    finally:
        module.train(was_training)
    norms, cosine = norms_and_cosines(stacked @ stacked.T, zero="nan")  # NaN for a task with a zero gradient
    del stacked
    tasks = list(probe_batches)
    # Cosines to 4 decimals: plenty for a value in [-1, 1], and a 200-task matrix stays a small JSON line.
    return ConflictMeasurement(step=step, tasks=tasks, grad_norm=dict(zip(tasks, norms.tolist())),
                               cosine=[[round(v, 4) for v in row] for row in cosine.tolist()], loss=losses)


class GradientConflictCallback(DiagnosticCallback):
    """Per-task gradient norms on the shared encoder and their pairwise cosines, every `every` optimizer steps.

    Writes one JSON line per measurement to `<output_dir>/diagnostics/gradient_conflict.jsonl`
    (`{"step", "tasks", "grad_norm": {task: norm}, "cosine": [[...]], "loss": {task: probe loss}}`) and sends
    `conflict/grad_norm/<task>` and `conflict/cosine/<task_a>/<task_b>` to the trackers (above 16 tasks
    `conflict/mean_cosine/<task>`, `conflict/cosine_min`, `conflict/cosine_median` and `conflict/negative_pairs`
    instead of every pair).

    Args:
        probe_batches: one collated batch per task (see `make_probe_batches`), fixed for the whole run.
        every: measure every N optimizer steps.
        output_dir: folder of the file; default `<TrainingArguments.output_dir>/diagnostics`.
        log_to_trackers: send the scalars to the trackers (TensorBoard, MLflow, ...; see `attach_callbacks`).

    Attributes:
        history: the `ConflictMeasurement`s so far.
    """

    def __init__(self, probe_batches: dict[str, dict[str, Any]], every: int, output_dir: str | None = None,
                 log_to_trackers: bool = True):
        super().__init__(output_dir, log_to_trackers)
        if every < 1:
            raise ValueError(f"GradientConflictCallback: every={every}; it must be >= 1")
        if not probe_batches:
            raise ValueError("GradientConflictCallback: probe_batches is empty; give one batch per task")
        self.probe_batches = probe_batches
        self.every = every
        self.history: list[ConflictMeasurement] = []
        self._disabled = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_file(args, state, CONFLICT_FILE)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # After the optimizer step and zero_grad: the probes see the updated weights, and .grad is not read.
        if (model is None or self._disabled or not state.is_world_process_zero
                or state.global_step % self.every):
            return
        try:
            measurement = measure_conflict(model, self.probe_batches, state.global_step)
        except ValueError as err:
            self._disabled = True
            logger.warning("manyheads: gradient conflict switched off: %s", err)
            return
        self.history.append(measurement)
        self.append_jsonl(args, CONFLICT_FILE, measurement.to_json())
        self.publish(args, state, control, measurement.scalars(), model=model, **kwargs)
