"""`UpdateMonitorCallback`: how far each parameter group moves per optimizer step, and how large its gradient is.

Per group (embeddings, each encoder layer's attention and feed-forward parts, the rest of the encoder, each
task head; optionally every tensor) it records ||Δθ||, ||Δθ|| / ||θ|| and ||g|| on every `every`-th optimizer
step. A relative update far above ~1e-3 means the learning rate is too high for that group, far below means it
barely trains (see Karpathy's "update/data ratio" heuristic).

How it measures without keeping a copy of the model between measurements: only on a measured step,
`on_pre_optimizer_step` (after gradient clipping, so ||g|| is the clipped gradient the optimizer uses) takes
the gradient and parameter norms and a snapshot of the trainable parameters (on CPU by default, so it
never costs accelerator memory); `on_optimizer_step` diffs the parameters against it and drops the snapshot.
Both hooks run once per optimizer step, so gradient accumulation is measured once per step, on the
accumulated gradient. Under DDP only the main process measures and writes (the replicas are identical);
parameters sharded by FSDP/DeepSpeed ZeRO-3 would give per-shard numbers and are not supported.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import logging

from ..modeling.adapters import adapter_of, is_adapter_parameter
from .base import MONITOR_FILE, DiagnosticCallback, unwrap

logger = logging.get_logger(__name__)

CSV_COLUMNS = ("step", "group", "kind", "param_norm", "update_norm", "relative_update", "grad_norm")
# A layer's parameter whose path names attention (BERT `attention.*`, ModernBERT `attn.*`, `attn_norm`) belongs to
# its attention part; the rest (feed-forward and its norms) to `ffn`.
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


def parameter_groups(model: Any) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Trainable parameters of a `MultiTaskModel` by group, in model order.

    Groups: `embeddings`, `layer.<i>.attention` and `layer.<i>.ffn` (everything else in layer i: feed-forward
    and its norms), `encoder.other` (pooler, final norm), `adapter.<task>` (soft sharing: every LoRA weight of
    the task's adapter), `head.<task>`. A model without `encoder` and `heads`
    is grouped by its top-level modules.
    """
    module = unwrap(model)
    encoder, heads = getattr(module, "encoder", None), getattr(module, "heads", None)
    groups: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
    if encoder is None or heads is None:
        for name, param in module.named_parameters():
            if param.requires_grad:
                groups.setdefault(name.split(".")[0], []).append((name, param))
        return groups
    embeddings = getattr(encoder, "embeddings", None)
    embedding_ids = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    layer_of: dict[int, tuple[int, str]] = {}
    try:
        layers = module.encoder_layers()
    except (AttributeError, ValueError):  # an encoder without a recognisable layer stack
        layers = []
    for index, layer in enumerate(layers):
        for sub, param in layer.named_parameters():
            layer_of[id(param)] = (index, sub)
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("heads."):
            group = "head." + name[len("heads."):].split(".")[0]
        elif name.startswith("decoders."):
            group = "decoder." + name[len("decoders."):].split(".")[0]
        elif is_adapter_parameter(name):
            group = f"adapter.{adapter_of(name)}"
        elif id(param) in embedding_ids:
            group = "embeddings"
        elif id(param) in layer_of:
            index, sub = layer_of[id(param)]
            group = f"layer.{index}.{'attention' if _ATTENTION.search(sub) else 'ffn'}"
        else:
            group = "encoder.other"
        groups.setdefault(group, []).append((name, param))
    return groups


@dataclass
class _Snapshot:
    step: int
    names: list[str]
    groups: list[str]
    params: list[torch.nn.Parameter]
    before: list[torch.Tensor]
    param_norms: torch.Tensor
    grad_norms: torch.Tensor


def _norms(tensors: Iterable[torch.Tensor | None], device: torch.device) -> torch.Tensor:
    """L2 norm of each tensor (0 for a missing gradient) as one vector, so that reading them is one host sync.

    `tensors` may be a generator: each tensor is dropped once its norm is taken (diffs never pile up).
    """
    zero = torch.zeros((), device=device)
    return torch.stack([torch.linalg.vector_norm(t.detach().float()).to(device) if t is not None else zero
                        for t in tensors])


def _group_norm(values: dict[str, float], members: dict[str, list[int]], norms: list[float]) -> None:
    for group, indices in members.items():
        values[group] = math.sqrt(sum(norms[i] ** 2 for i in indices))


class UpdateMonitorCallback(DiagnosticCallback):
    """Update norm, relative update and gradient norm per parameter group every `every` optimizer steps.

    Writes `<output_dir>/diagnostics/update_monitor.csv` (columns `step, group, kind, param_norm, update_norm,
    relative_update, grad_norm`; `kind` is `group` or `tensor`) and sends `monitor/relative_update/<group>`,
    `monitor/update_norm/<group>` and `monitor/grad_norm/<group>` to the trackers (groups only).

    Args:
        every: measure every N optimizer steps; None = the Trainer's logging steps.
        per_tensor: also record every parameter tensor (in the CSV file only).
        band: (low, high) of the healthy relative update; outside it for `patience` measurements in a row,
            a warning names the group and suggests the learning-rate change.
        patience: measurements in a row outside `band` before the warning.
        output_dir: folder of the CSV; default `<TrainingArguments.output_dir>/diagnostics`.
        snapshot_device: where the pre-step copy of the parameters lives; "cpu" spares accelerator memory,
            None keeps it on the parameters' device (faster on GPU, costs one model copy there).
        log_to_trackers: send the group scalars to the trackers (TensorBoard, MLflow, ...; see `attach_callbacks`).

    Attributes:
        history: one `{"step": s, "groups": {group: {param_norm, update_norm, relative_update, grad_norm}}}` per
            measurement.
        warnings: the band warnings emitted so far.
    """

    def __init__(self, every: int | None = None, per_tensor: bool = False,
                 band: tuple[float, float] | list[float] = (1e-6, 1e-2), patience: int = 3,
                 output_dir: str | None = None, snapshot_device: str | None = "cpu", log_to_trackers: bool = True):
        super().__init__(output_dir, log_to_trackers)
        low, high = band
        if every is not None and every < 1:
            raise ValueError(f"UpdateMonitorCallback: every={every}; it must be >= 1 (or None for logging_steps)")
        if not 0 <= low < high:
            raise ValueError(f"UpdateMonitorCallback: band={list(band)}; give (low, high) with 0 <= low < high")
        if patience < 1:
            raise ValueError(f"UpdateMonitorCallback: patience={patience}; it must be >= 1")
        self.every = every
        self.per_tensor = per_tensor
        self.band = (float(low), float(high))
        self.patience = patience
        self.snapshot_device = snapshot_device
        self.history: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._every = every or 1
        self._snapshot: _Snapshot | None = None
        self._unpublished: dict[str, float] = {}
        self._streaks: dict[str, tuple[str, int, int]] = {}  # group -> (side, count, first step)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # TrainerState holds the resolved logging interval (a ratio like 0.1 is already turned into steps).
        self._every = self.every or max(1, int(state.logging_steps or 500))
        self._snapshot = None
        self.start_file(args, state, MONITOR_FILE)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step + 1  # the step being taken: global_step counts completed steps
        if model is None or not state.is_world_process_zero or step % self._every:
            return
        self._snapshot = self.take_snapshot(model, step)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        record, tensors = self.measure(snapshot)
        if record is None:
            logger.info("manyheads: no parameter changed at step %d (optimizer step skipped); not recorded",
                        snapshot.step)
            return
        self.history.append(record)
        self._write(args, record, tensors)
        self._check_band(record)
        # An idle group (no gradient, no update: a head whose task had no micro-batch in this step) would put
        # a misleading 0 on the trackers' charts; it stays in the CSV file.
        self._unpublished = {f"monitor/{key}/{group}": values[key] for group, values in record["groups"].items()
                             if not _idle(values) for key in ("relative_update", "update_norm", "grad_norm")}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Here global_step has become the measured step: the trackers file the scalars under it.
        scalars, self._unpublished = self._unpublished, {}
        self.publish(args, state, control, scalars, **kwargs)

    # ----- measurement -----
    @torch.no_grad()
    def take_snapshot(self, model: Any, step: int) -> _Snapshot | None:
        """Gradient and parameter norms now, and a copy of the trainable parameters to diff after the step
        (None when nothing is trainable)."""
        names, groups, params = [], [], []
        for group, members in parameter_groups(model).items():
            for name, param in members:
                names.append(name)
                groups.append(group)
                params.append(param)
        if not params:
            return None
        device = params[0].device
        before = [p.detach().to(self.snapshot_device or p.device, copy=True) for p in params]
        return _Snapshot(step=step, names=names, groups=groups, params=params, before=before,
                         param_norms=_norms(params, device), grad_norms=_norms([p.grad for p in params], device))

    @torch.no_grad()
    def measure(self, snapshot: _Snapshot) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Per-group record (None when no parameter moved) and per-tensor rows of one measured step.

        Consumes the snapshot: its copy is overwritten by the diff and released.
        """
        device = snapshot.param_norms.device
        # The diff is taken in place in the snapshot (dropped right after): no second model-sized allocation.
        updates = _norms((old.to(p.device).float().sub_(p.detach())
                          for p, old in zip(snapshot.params, snapshot.before)), device)
        snapshot.before = []
        update = updates.tolist()
        if not any(update):
            return None, []
        param = snapshot.param_norms.tolist()
        grad = snapshot.grad_norms.tolist()
        members: dict[str, list[int]] = {}
        for index, group in enumerate(snapshot.groups):
            members.setdefault(group, []).append(index)
        norms: dict[str, dict[str, float]] = {"param_norm": {}, "update_norm": {}, "grad_norm": {}}
        for key, values in (("param_norm", param), ("update_norm", update), ("grad_norm", grad)):
            _group_norm(norms[key], members, values)
        groups = {g: _row(norms["param_norm"][g], norms["update_norm"][g], norms["grad_norm"][g]) for g in members}
        tensors = [{"group": name, **_row(p, u, g)} for name, p, u, g in zip(snapshot.names, param, update, grad)]
        return {"step": snapshot.step, "groups": groups}, tensors

    # ----- output -----
    def _write(self, args: Any, record: dict[str, Any], tensors: list[dict[str, Any]]) -> None:
        path = self.path(args, MONITOR_FILE)
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        rows = [{"group": g, "kind": "group", **v} for g, v in record["groups"].items()]
        if self.per_tensor:
            rows += [{**t, "kind": "tensor"} for t in tensors]
        with open(path, "a", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({"step": record["step"], **row})

    def _check_band(self, record: dict[str, Any]) -> None:
        low, high = self.band
        step = record["step"]
        for group, values in record["groups"].items():
            if _idle(values):
                continue  # e.g. the head of a task not sampled this step: no evidence either way
            ratio = values["relative_update"]
            side = "above" if ratio > high else "below" if ratio < low else None
            if side is None or not math.isfinite(ratio):
                self._streaks.pop(group, None)
                continue
            previous = self._streaks.get(group)
            count, first = (previous[1] + 1, previous[2]) if previous and previous[0] == side else (1, step)
            self._streaks[group] = (side, count, first)
            if count == self.patience:  # once per excursion; a new one after the group comes back in the band
                self._warn(group, side, ratio, first, step)

    def _warn(self, group: str, side: str, ratio: float, first: int, step: int) -> None:
        low, high = self.band
        advice = ("the learning rate looks too high for it: lower learning_rate (e.g. 10x), or add warmup"
                  if side == "above" else
                  "it barely trains: raise learning_rate (e.g. 10x), or freeze it on purpose (freeze: ...)")
        message = (f"manyheads: parameter group '{group}' has a relative update ||update||/||param|| {side} "
                   f"[{low:.0e}, {high:.0e}] for {self.patience} measurements in a row (steps {first}-{step}, "
                   f"last {ratio:.2e}); {advice}. The band is diagnostics.relative_update_band.")
        self.warnings.append(message)
        logger.warning(message)


def _row(param_norm: float, update_norm: float, grad_norm: float) -> dict[str, float]:
    relative = update_norm / param_norm if param_norm > 0 else (math.inf if update_norm > 0 else 0.0)
    return {"param_norm": param_norm, "update_norm": update_norm, "relative_update": relative,
            "grad_norm": grad_norm}


def _idle(values: dict[str, float]) -> bool:
    return values["update_norm"] == 0 and values["grad_norm"] == 0
