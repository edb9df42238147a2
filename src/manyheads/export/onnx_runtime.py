"""Running a graph written by `manyheads.export.onnx`: the exported folder behind the interface
`MultiTaskPredictor` uses (`tasks`, `config`, `forward_all`), on ONNX Runtime.

onnx and onnxruntime are optional (`pip install "manyheads[onnx]"`): they are imported only when a graph is
exported or run, so `import manyheads` works without them.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..modeling.config import MultiTaskConfig
from ..tasks import Task, task_from_spec

MANIFEST = "manyheads_onnx.json"
FORMAT = ("manyheads-onnx", 1)  # the manifest's "format" and "version"
INSTALL_HINT = 'pip install "manyheads[onnx]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional ONNX package, or a one-line `ConfigError` with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the optional packages onnx, onnxruntime and onnxscript ({module} is "
                          f"not installed); install them with: {INSTALL_HINT}") from None


def output_name(task: str) -> str:
    return f"logits_{task}"


def labels_key(task: str) -> str:
    """The graph's metadata key (onnx `metadata_props`) holding the JSON label list of `task`'s output, in the
    order of its columns."""
    return f"manyheads.labels.{output_name(task)}"


def open_session(path: str, providers: Sequence[Any] = ("CPUExecutionProvider",)) -> Any:
    ort = require("onnxruntime", "ONNX inference")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the CLI's terminal is for results
    return ort.InferenceSession(path, sess_options=options, providers=list(providers))


def run_graph(session: Any, probe: dict[str, Any], names: list[str]) -> list[np.ndarray]:
    feed = {name: np.asarray(value, dtype=np.int64) for name, value in probe.items()}
    return session.run([output_name(n) for n in names], feed)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's `manyheads_onnx.json`, or a `ConfigError` saying how to make one."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ConfigError(f"MODEL_DIR: {folder} is not a manyheads ONNX export (no {MANIFEST}); write one with "
                          f"`manyheads export {folder} --format onnx --output DIR` and predict from DIR.")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as err:
        raise ConfigError(f"MODEL_DIR: {path} cannot be read ({err}); export the model again.") from None
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("version")) != FORMAT:
        raise ConfigError(f"MODEL_DIR: {path} is not a manyheads ONNX manifest of version {FORMAT[1]}; export "
                          "the model again with this version of manyheads.")
    return manifest


def providers_for_device(device: str | torch.device | None) -> list[Any]:
    """ONNX Runtime providers for a torch-style device: CPU unless a CUDA device is asked for."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise ConfigError(f"--device: {device} is not a device of the ONNX backend; use cpu or cuda[:N].")


class OnnxMultiTaskModel:
    """An exported folder behind the interface `MultiTaskPredictor` uses: `tasks`, `config` and `forward_all`.

    Args:
        folder: written by `export_onnx` (`manyheads export --format onnx`).
        file: the graph to run, a name in `folder` (default `model.onnx`; `model_int8.onnx` after
            `--quantize int8`) or a path.
        providers: ONNX Runtime execution providers (default: CPU only).
    """

    def __init__(self, folder: str | os.PathLike, file: str | None = None, providers: Sequence[Any] | None = None):
        ort = require("onnxruntime", "the ONNX backend")
        self.manifest = read_manifest(folder)
        self.config = MultiTaskConfig.from_pretrained(folder)
        self.tasks: dict[str, Task] = {spec["name"]: task_from_spec(spec) for spec in self.config.tasks}
        missing = [n for n in self.tasks if output_name(n) not in self.manifest["outputs"]]
        if missing:
            raise ConfigError(f"MODEL_DIR: config.json lists tasks {missing} that {MANIFEST} has no output for; the "
                              "folder was edited by hand: export the model again.")
        path = os.path.join(folder, file or self.manifest["files"]["fp32"])
        if not os.path.isfile(path):
            graphs = sorted(f for f in os.listdir(folder) if f.endswith(".onnx"))
            raise ConfigError(f"--onnx_file: {file} is not a file in {folder}; its graphs: {graphs}.")
        providers = list(providers or ["CPUExecutionProvider"])
        absent = [n for n in (p if isinstance(p, str) else p[0] for p in providers)
                  if n not in ort.get_available_providers()]
        if absent:  # ONNX Runtime itself would only warn and fall back to the CPU
            raise ConfigError(f"--device: ONNX Runtime provider(s) {absent} are not available here (available: "
                              f"{ort.get_available_providers()}); use --device cpu, or install onnxruntime-gpu "
                              "for CUDA.")
        self.file = path
        self.session = open_session(path, providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        problems = head_problems(self.session, self.tasks, self.manifest, folder)
        if problems:
            raise ConfigError(problems)

    def task_decoder(self, task: str) -> None:
        """An ONNX export holds heads only (no generation task), so no task has a decoder (see
        `MultiTaskModel.task_decoder`)."""
        return None

    def forward_all(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
                    tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Logits of every task in `tasks` (default: all) from one run of the graph, as numpy arrays."""
        ids = np.asarray(input_ids, dtype=np.int64)
        # As transformers does: no mask attends everywhere, no segment ids are segment 0.
        given = {"input_ids": ids,
                 "attention_mask": np.ones_like(ids) if attention_mask is None else attention_mask,
                 "token_type_ids": np.zeros_like(ids) if token_type_ids is None else token_type_ids}
        names = list(tasks) if tasks is not None else list(self.tasks)
        return dict(zip(names, run_graph(self.session, {n: given[n] for n in self.input_names}, names)))


def head_problems(session: Any, tasks: dict[str, Task], manifest: dict[str, Any],
                  folder: str | os.PathLike) -> list[str]:
    """One line per task whose labels in config.json do not fit the graph: a different number of labels than its
    output has columns, or (for graphs that record it) another label order. Either way the predictor would put
    the graph's scores under the wrong names and exit 0, so the folder is refused."""
    widths = {o.name: o.shape[-1] for o in session.get_outputs()}
    recorded = session.get_modelmeta().custom_metadata_map
    fix = f"export the model again (`manyheads export MODEL_DIR --format onnx --output {folder} --overwrite`)"
    problems = []
    for name, task in tasks.items():
        output = output_name(name)
        width = widths.get(output)
        if not isinstance(width, int):  # a symbolic axis: the width the export recorded
            width = (manifest["outputs"].get(output) or [None])[-1]
        labels = task.label_list
        if isinstance(width, int) and width != task.num_outputs:
            wants = f"{len(labels)} label(s) {labels}" if labels else f"{task.num_outputs} output column(s)"
            problems.append(f"config.json: task '{name}' has {wants} but the graph's output {output} has {width} "
                            f"column(s); config.json does not belong to this graph: {fix}.")
            continue
        if labels_key(name) in recorded:
            exported = json.loads(recorded[labels_key(name)])
            if exported != labels:
                problems.append(f"config.json: task '{name}' lists its labels as {labels} but the graph's output "
                                f"{output} was exported with the labels {exported}, in that order; predictions "
                                f"would carry the wrong names: {fix}, or restore that list in config.json.")
    return problems


def load_onnx_folder(folder: Any, tokenizer: Any = None, file: str | None = None,
                     device: str | torch.device | None = None) -> tuple[OnnxMultiTaskModel, Any]:
    """The graph and tokenizer of an exported folder, for `MultiTaskPredictor(folder, backend="onnx")`."""
    if not isinstance(folder, (str, os.PathLike)):
        raise ValueError("backend 'onnx' reads an exported folder: pass its path (export_onnx writes one).")
    model = OnnxMultiTaskModel(folder, file, providers_for_device(device))
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer
