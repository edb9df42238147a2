"""Before `--resume` loads anything: the checkpoint must belong to this recipe and be readable.

A checkpoint of other tasks, other labels or another encoder would either fail deep inside Trainer's loading
with a traceback, or (labels in another order) load and train the wrong thing silently.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import AutoConfig

from ..training.checkpoints import BALANCING_OPTIMIZER_STATE, BALANCING_STATE
from .build import PreparedData, damaged_weight_files, torch_file_problem
from .config import RunConfig

# Encoder config fields whose difference means another architecture or size.
_ENCODER_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# Training state that Trainer (and MultiTaskTrainer) read back with torch.load on resume: rng_state.pth, or one
# rng_state_<rank>.pth per process of a distributed run.
_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", BALANCING_STATE, BALANCING_OPTIMIZER_STATE)


def _state_problems(checkpoint: str) -> list[str]:
    """The checkpoint's training-state files that torch.load would fail on, deep inside Trainer's resume."""
    found = []
    for name in sorted(os.listdir(checkpoint)):
        rng = name.startswith("rng_state") and name.endswith(".pth")  # numpy's generator state among tensors
        if name in _STATE_FILES or rng:
            problem = torch_file_problem(os.path.join(checkpoint, name), numpy=rng)
            found += [problem] if problem else []
    return [f"--resume: {problem}. Resume from an earlier checkpoint (--resume PATH), or start over (--overwrite)."
            for problem in found]


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def resume_problems(checkpoint: str, run: RunConfig, prepared: PreparedData) -> list[str]:
    """Why `checkpoint` cannot continue this run: unreadable files, other tasks, labels or encoder."""
    where = f"--resume: {checkpoint}"
    problems = damaged_weight_files(checkpoint) + _state_problems(checkpoint)
    try:
        config = _read_json(os.path.join(checkpoint, "config.json"))
        _read_json(os.path.join(checkpoint, "trainer_state.json"))
    except (OSError, ValueError) as err:
        return problems + [f"{where}: cannot read {getattr(err, 'filename', None) or 'its JSON files'} ({err}); "
                           "the checkpoint is damaged. Give an older checkpoint with --resume PATH."]
    saved = {spec.get("name"): spec for spec in config.get("tasks") or []}
    names = [entry.name for entry in run.tasks]
    if list(saved) != names:
        return problems + [f"{where}: the checkpoint has tasks {list(saved)}, the config {names}. Resume with the "
                           "config it was trained with, or start a new run (--overwrite or another --output_dir)."]
    for name, task in prepared.tasks.items():
        spec = saved[name]
        labels = (spec.get("fitted") or {}).get("labels") or spec.get("labels") or []
        if spec.get("type") != task.type:
            problems.append(f"{where}: task '{name}' is {spec.get('type')!r} in the checkpoint, {task.type!r} in the "
                            "config.")
        elif list(labels) != task.label_list:
            problems.append(f"{where}: task '{name}' has labels {labels} in the checkpoint but {task.label_list} from "
                            "this config and data; the head's outputs would mean other labels. Use the same data "
                            "and labels, or start a new run.")
    try:
        encoder = AutoConfig.from_pretrained(run.model).to_dict()
    except Exception:  # the encoder folder is checked (and reported) elsewhere
        return problems
    differ = [key for key in _ENCODER_FIELDS if (config.get("encoder") or {}).get(key) != encoder.get(key)]
    if differ:
        problems.append(f"{where}: the checkpoint's encoder differs from model {run.model!r} in {', '.join(differ)}. "
                        "Resume with the encoder it was trained from.")
    return problems
