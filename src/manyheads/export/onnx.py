"""Export the shared encoder and every head of a `MultiTaskModel` as ONE ONNX graph (run by `onnx_runtime.py`).

An exported folder (`manyheads export MODEL_DIR --format onnx --output DIR [--quantize int8]`):
```
model.onnx            fp32 graph. Inputs: input_ids, attention_mask (+ token_type_ids when the tokenizer makes
                      them), int64 [batch, sequence]. One output per task, `logits_<task>`: [batch, outputs] for a
                      pooled task, [batch, sequence, outputs] for a token or span task. Batch and sequence are
                      dynamic axes. (A model over ~1.5 GiB also gets model.onnx.data: protobuf's 2 GiB limit.)
model_int8.onnx       with --quantize int8: the same graph, weights quantized to int8 by ONNX Runtime
                      (`quantize_dynamic`, QInt8 per channel, reduce_range); activations are quantized on the
                      fly.
config.json           the model's MultiTaskConfig, holding only the exported tasks: settings, labels, fitted state.
                      Each graph also records each task's label list in its metadata (`metadata_props`,
                      `manyheads.labels.logits_<task>`), so loading refuses a config.json whose labels were
                      reordered or replaced since the export.
manyheads_onnx.json   what makes the folder a manyheads ONNX export: format version, opset, graph inputs and
                      outputs, the files, and the numbers of the export-time checks
tokenizer files       as `AutoTokenizer.save_pretrained` writes them
```
The exporter is `torch.onnx.export(dynamo=True)` (torch.export), torch's default since 2.9. The TorchScript
exporter (`dynamo=False`) also gives equal logits on BERT, but it is deprecated and traces Python control flow
once: transformers' mask creation and SDPA branch on tensor values (its TracerWarnings say these become
constants); torch.export records them as guards instead or fails loudly.

Every export is checked against PyTorch on generated batches of several sizes and lengths (some padded) before
anything takes the output's name; the folder is built beside the output and moved into place only then.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..modeling.model import MultiTaskModel
from ..tasks import Task
from .onnx_runtime import FORMAT, MANIFEST, labels_key, open_session, output_name, require, run_graph

MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
OPSET = 18  # the dynamo exporter's lowest opset
TOLERANCE = 1e-4  # max |ONNX - PyTorch| of fp32 logits
# Above this the weights go to model.onnx.data: one protobuf file cannot exceed 2 GiB.
_EXTERNAL_DATA_BYTES = 3 << 29
# (batch, sequence) of the generated checks; the first is also the example the graph is traced with (neither
# axis 0 or 1 there, or torch.export would specialise it). The longest check uses the position limit.
_PROBE_SHAPES = [(2, 8), (1, 3), (3, 17), (4, None)]


class OnnxExportError(ConfigError):
    """The ONNX graph cannot be built, or does not reproduce the PyTorch model's logits."""


@dataclass
class OnnxExport:
    """What `export_onnx` wrote and measured.

    Attributes:
        folder: the output folder.
        tasks: the exported tasks, in graph output order.
        max_diff: per task, max |ONNX fp32 - PyTorch| of the logits over the generated check batches.
        int8: per task (with `quantize="int8"`), `max_diff` against fp32 ONNX, `agreement`: the share of rows
            (tokens, for token and span tasks) whose decision is the fp32 graph's, and `decision`, what is compared:
            `"arg-max"` over the outputs, or `"thresholds"` for a task that decides per label at its thresholds
            (multilabel: the whole label set must match).
    """

    folder: str
    tasks: list[str]
    files: dict[str, str]
    max_diff: dict[str, float]
    int8: dict[str, dict[str, float]] = field(default_factory=dict)


@runtime_checkable
class ThresholdDecisions(Protocol):
    """A task that decides per output at thresholds (multilabel) rather than by arg-max: `predicted(logits)` gives
    its 0/1 decisions at `decision_thresholds()`."""

    def decision_thresholds(self) -> np.ndarray: ...

    def predicted(self, predictions: np.ndarray) -> np.ndarray: ...


class _AllHeads(nn.Module):
    """`forward_all` with a fixed task list and a tuple output, as the exporter wants it."""

    def __init__(self, model: MultiTaskModel, tasks: list[str]):
        super().__init__()
        self.model = model
        self.tasks = tasks

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        logits = self.model.forward_all(input_ids, attention_mask, token_type_ids, tasks=self.tasks)
        return tuple(logits[name] for name in self.tasks)


def _probes(model: MultiTaskModel, input_names: list[str]) -> list[dict[str, torch.Tensor]]:
    """Seeded batches of random token ids; the last row of each is padded, and the second half of every row
    is segment 1 (a pair)."""
    encoder = model.config.encoder_config()
    longest = min(getattr(encoder, "max_position_embeddings", None) or 128, 128)
    generator = torch.Generator().manual_seed(0)
    probes = []
    for batch, length in _PROBE_SHAPES:
        length = length or longest
        ids = torch.randint(1, encoder.vocab_size, (batch, length), generator=generator)
        mask = torch.ones_like(ids)
        if batch > 1:
            mask[-1, max(1, length // 2):] = 0
        types = torch.zeros_like(ids)
        types[:, length // 2:] = 1
        values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        probes.append({name: values[name] for name in input_names})
    return probes


def _static_logits_problem(name: str, task: Task, value: Any, batch: int, length: int) -> str | None:
    """Why a head's output is not a static logits tensor that one graph output can hold (None when it is)."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and (
            (value.ndim == 2 and value.shape[0] == batch) or (value.ndim == 3 and value.shape[:2] == (batch, length))):
        return None
    what = f"a tensor of shape {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
    return (f"task '{name}' (type '{task.type}') cannot be exported to ONNX: its head returns {what}, not static "
            "logits ([batch, outputs] or [batch, sequence, outputs]); generation or other dynamic outputs have no "
            "single-graph export. Leave it out: name the others with --task.")


def _select_tasks(model: MultiTaskModel, tasks: Sequence[str] | None) -> list[str]:
    """The graph's outputs: one per head (a dataset that shares a head is exported as its head)."""
    heads = model.prediction_tasks()
    names = list(dict.fromkeys(model.head_of(n) if n in model.tasks else n for n in tasks)) if tasks else list(heads)
    for name in names:
        if name not in heads:
            raise ConfigError(f"--task: unknown task {name!r}; this model has {list(model.tasks)}.")
        if model.task_decoder(name) is not None:
            raise ConfigError(f"--task: task {name!r} generates text, which the ONNX export does not cover (one "
                              "graph of encoder and heads); leave it out with --task, and export it as a stock "
                              "seq2seq folder with `manyheads export --task NAME`.")
        if model.head_of(model.task_of(name)) not in model.heads:
            raise ConfigError(f"--task: task {name!r} has no head (its labels are unknown: the model was saved "
                              "before training fitted them); train it, or leave it out with --task.")
    return names


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporter's and quantizer's notes about themselves, which say nothing about the user's model."""
    # torch.onnx logs the torchvision ops it skips; torch.export warns that the inputs' axes share names (all are
    # [batch, sequence]) and about a deprecation of its own. quantize_dynamic advises "pre-processing" on the root
    # logger, but that (symbolic shape inference) fails on dynamo graphs of transformers encoders.
    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")

    exporter, root = logging.getLogger("torch.onnx"), logging.getLogger()
    level = exporter.level
    exporter.setLevel(logging.ERROR)
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in (".*axis name.*will not be used.*", ".*LeafSpec.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        exporter.setLevel(level)
        root.removeFilter(drop)


def export_onnx(model: MultiTaskModel | str | os.PathLike, output_dir: str | os.PathLike, tokenizer: Any = None,
                tasks: Sequence[str] | None = None, quantize: str | None = None) -> OnnxExport:
    """Write the encoder and the heads of `tasks` (default: all) as one ONNX graph into `output_dir`.

    Args:
        model: a `MultiTaskModel`, or the folder it was saved to (with its tokenizer).
        output_dir: the folder to write (created; an existing folder keeps its other files).
        tokenizer: required with an in-memory model.
        tasks: the tasks to export, in this order.
        quantize: `"int8"` also writes `model_int8.onnx` (ONNX Runtime dynamic quantization).

    Raises:
        ConfigError: the ONNX packages are missing, `output_dir` is a file, a task is unknown or has no static
            logits; `OnnxExportError` when the graph's logits differ from PyTorch's by more than 1e-4 (then
            nothing is written under `output_dir`).
    """
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "ONNX export")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize: got {quantize!r}; valid: int8 (or leave it out for fp32 only).")
    output = os.path.abspath(output_dir)
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output: {output_dir} is a file; export writes a folder (graph, config, tokenizer). "
                          "Give a new or existing folder.")
    if os.path.isfile(os.path.join(output, "model.safetensors")):
        raise ConfigError(f"--output: {output_dir} holds a PyTorch model (model.safetensors), whose config.json the "
                          "export would replace; give a new folder.")
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = MultiTaskModel.from_pretrained(model)
    if tokenizer is None:
        raise ConfigError("tokenizer: pass the tokenizer together with an in-memory model (export_onnx(model, "
                          "output_dir, tokenizer=...)).")
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # the user's model stays where it is; the checks run on CPU
    names = _select_tasks(model, tasks)
    was_training = model.training
    try:
        return _export(model.eval(), tokenizer, names, output, quantize)
    finally:
        model.train(was_training)


def _export(model: MultiTaskModel, tokenizer: Any, names: list[str], output: str, quantize: str | None) -> OnnxExport:
    """Check the heads, then build, check and quantize the graph in a staging folder moved to `output` at the end."""
    inputs = ["input_ids", "attention_mask"] + [n for n in ["token_type_ids"] if n in tokenizer.model_input_names]
    probes = _probes(model, inputs)
    heads = model.prediction_tasks()
    wrapper = _AllHeads(model, names).eval()
    with torch.no_grad():
        expected = [[v.float().numpy() if isinstance(v, torch.Tensor) else v for v in wrapper(**probe)]
                    for probe in probes]
    for probe, values in zip(probes, expected):
        for name, value in zip(names, values):
            problem = _static_logits_problem(name, heads[name], value, *probe["input_ids"].shape)
            if problem:
                raise ConfigError(problem)
    # Graph output shapes: a pooled task's [batch, outputs], a token or span task's [batch, sequence, outputs].
    shapes = {output_name(n): ["batch", "sequence"][:v.ndim - 1] + [v.shape[-1]] for n, v in zip(names, expected[0])}
    os.makedirs(os.path.dirname(output), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".partial", dir=os.path.dirname(output))
    try:
        result = OnnxExport(folder=output, tasks=names, files={"fp32": MODEL_FILE}, max_diff={})
        large = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
        graph = _export_graph(wrapper, probes[0], inputs, os.path.join(staging, MODEL_FILE), large)
        labels = {n: heads[n].label_list for n in names}
        _record_labels(graph, labels)
        result.max_diff = _compare(open_session(graph), probes, expected, names)
        worst = max(result.max_diff, key=result.max_diff.get)
        if result.max_diff[worst] > TOLERANCE:
            raise OnnxExportError(
                f"task '{worst}': the ONNX graph's logits differ from PyTorch's by {result.max_diff[worst]:.3g} "
                f"(max abs over {len(probes)} generated batches; tolerance {TOLERANCE:g}), so nothing was written "
                f"to {output}. The exporter does not reproduce an operation of this encoder "
                f"({model.config.encoder.get('model_type')}) or head; leave the task out with --task.")
        if quantize == "int8":
            result.files["int8"] = INT8_FILE
            result.int8 = _quantize(graph, os.path.join(staging, INT8_FILE), probes, heads, names, large)
            _record_labels(os.path.join(staging, INT8_FILE), labels)  # whether or not the quantizer kept them
        _write_metadata(staging, model, tokenizer, inputs, shapes, result)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _export_graph(wrapper: _AllHeads, example: dict[str, torch.Tensor], inputs: list[str], path: str,
                  large: bool) -> str:
    from torch.export import Dim

    batch, sequence = Dim("batch"), Dim("sequence")
    outputs = [output_name(name) for name in wrapper.tasks]
    try:
        with _quiet():
            torch.onnx.export(wrapper, (), path, kwargs=example, input_names=inputs, output_names=outputs,
                              dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
                              opset_version=OPSET, dynamo=True, external_data=large, verbose=False)
    except Exception as err:  # torch.export raises many types (unsupported op, data-dependent branch, guard)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OnnxExportError(f"the encoder ({wrapper.model.config.encoder.get('model_type')}) with tasks "
                              f"{wrapper.tasks} cannot be exported to ONNX by torch.export: {first}") from None
    return path


def _record_labels(path: str, labels: dict[str, list[str]]) -> None:
    """Write each task's label list into the graph's metadata (onnx `metadata_props`): config.json can be edited
    after the export, and only the graph itself can say which label each output column belongs to."""
    onnx = require("onnx", "ONNX export")
    graph = onnx.load(path, load_external_data=False)  # the weights of a large model stay in their .data file
    values = {labels_key(name): json.dumps(names) for name, names in labels.items() if names}
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key not in values]
    del graph.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, path)


def _compare(session: Any, probes: list[dict[str, torch.Tensor]], expected: list[list[np.ndarray]],
             names: list[str]) -> dict[str, float]:
    """Per task, max |graph - expected| over the probes."""
    diff = dict.fromkeys(names, 0.0)
    for probe, wanted in zip(probes, expected):
        for name, got, want in zip(names, run_graph(session, probe, names), wanted):
            if got.shape != want.shape:
                raise OnnxExportError(f"task '{name}': the ONNX output has shape {list(got.shape)}, PyTorch's "
                                      f"{list(want.shape)}; the export lost a dynamic axis.")
            diff[name] = max(diff[name], float(np.abs(got - want).max()))
    return diff


def _quantize(source: str, target: str, probes: list[dict[str, torch.Tensor]], tasks: dict[str, Task],
              names: list[str], large: bool) -> dict[str, dict[str, Any]]:
    """Write the int8 graph and measure it against the fp32 graph on the probes."""
    quantization = require("onnxruntime.quantization", "--quantize int8")
    with _quiet():
        # Per-channel weight scales, and 7-bit weight range (reduce_range): ONNX Runtime's advice for CPUs without
        # VNNI, where 8-bit products saturate. On the demo model per-tensor 8-bit lost 2.7 accuracy points on
        # sentiment; this setting lost none (bench/serve.py).
        quantization.quantize_dynamic(source, target, weight_type=quantization.QuantType.QInt8, per_channel=True,
                                      reduce_range=True, use_external_data_format=large)
    fp32, int8 = open_session(source), open_session(target)
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        same = total = 0
        diff = 0.0
        for probe in probes:
            a, b = run_graph(fp32, probe, [name])[0], run_graph(int8, probe, [name])[0]
            diff = max(diff, float(np.abs(a - b).max()))
            real = probe["attention_mask"].numpy().astype(bool) if a.ndim == 3 else np.ones(len(a), bool)
            same += int(decisions_agree(tasks[name], a, b)[real].sum())
            total += int(real.sum())
        decision = "thresholds" if isinstance(tasks[name], ThresholdDecisions) else "arg-max"
        report[name] = {"max_diff": diff, "agreement": same / total, "decision": decision}
    return report


def decisions_agree(task: Task, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row (per token for token and span tasks), whether logits `a` and `b` lead `task` to the same decision:
    the same label set at the task's thresholds for a multilabel head, whose arg-max decides nothing; else the
    same arg-max."""
    if isinstance(task, ThresholdDecisions):
        return (task.predicted(a) == task.predicted(b)).all(-1)
    return a.argmax(-1) == b.argmax(-1)


def _write_metadata(folder: str, model: MultiTaskModel, tokenizer: Any, inputs: list[str],
                    shapes: dict[str, list], result: OnnxExport) -> None:
    model.sync_config()
    heads = model.prediction_tasks()
    config = copy.deepcopy(model.config)
    # One task per graph output, named as the output: a shared head is written as its first task, renamed.
    config.tasks = [{**heads[name].spec(), "name": name, "head": None} for name in result.tasks]
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = {
        "format": FORMAT[0], "version": FORMAT[1], "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "inputs": {name: ["batch", "sequence"] for name in inputs},
        "outputs": shapes,
        "files": result.files,
        "checks": {"fp32_max_diff": result.max_diff, "int8": result.int8},
    }
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)


def _publish(staging: str, output: str) -> None:
    """Move the checked files into `output`; graph files an earlier export left there (an int8 graph not made
    this time) are removed, so the folder never pairs a new config with an old graph."""
    if not os.path.exists(output):
        os.replace(staging, output)
        return
    for stale in (MODEL_FILE, INT8_FILE, MODEL_FILE + ".data", INT8_FILE + ".data"):
        path = os.path.join(output, stale)
        if os.path.isfile(path) and not os.path.exists(os.path.join(staging, stale)):
            os.remove(path)
    for entry in os.listdir(staging):
        os.replace(os.path.join(staging, entry), os.path.join(output, entry))
    os.rmdir(staging)
