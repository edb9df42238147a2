"""Shared setup of the trainer tests: the review tasks and data through the Python API, a trainer that records
what it trained on, and comparisons of two runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback, set_seed

from manyheads import (
    Classification,
    MultiLabel,
    MultiTaskModel,
    MultiTaskTrainer,
    MultiTaskTrainingArguments,
    Regression,
)

from .conftest import COLORS, review_rows

REVIEW_TASKS = ("sentiment", "match", "colors", "score")

# The training settings of the trainer tests (conftest.base_config's `training` section, for the recipe door).
TRAINING = {"per_device_train_batch_size": 8, "max_steps": 12, "learning_rate": 1e-3, "logging_steps": 4,
            "report_to": "none", "save_strategy": "no", "use_cpu": True, "seed": 7, "dataloader_pin_memory": False}


def review_tasks(names: tuple[str, ...] = REVIEW_TASKS, **options: dict[str, Any]) -> list:
    """One task of each type plus a pair task over `review_rows` (the library twin of conftest.task_section);
    `options[name]` adds settings to that task."""
    make = {
        "sentiment": lambda **kw: Classification(name="sentiment", label="sentiment", max_length=32, **kw),
        "match": lambda **kw: Classification(name="match", text=["text", "other"], label="match", max_length=32,
                                             **kw),
        "colors": lambda **kw: MultiLabel(name="colors", label="colors", labels=list(COLORS), max_length=32, **kw),
        "score": lambda **kw: Regression(name="score", label="score", max_length=32, **kw),
    }
    return [make[name](**options.get(name, {})) for name in names]


def review_data(n: int, seed: int, names: tuple[str, ...] = REVIEW_TASKS) -> dict[str, Dataset]:
    """`{task: Dataset}` of `n` review rows (every task reads its own columns of the same rows)."""
    rows = review_rows(n, seed)
    data = Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]})
    return {name: data for name in names}


def training_args(output_dir: Path | str, **overrides: Any) -> MultiTaskTrainingArguments:
    return MultiTaskTrainingArguments(output_dir=str(output_dir), **{**TRAINING, **overrides})


def new_trainer(encoder: Any, tokenizer: Any, output_dir: Path | str, tasks: list | None = None,
                train: dict[str, Dataset] | None = None, eval_: dict[str, Dataset] | None = None,
                freeze: dict[str, Any] | None = None, sharing: Any = None, trainer_class: type = MultiTaskTrainer,
                trainer_kwargs: dict[str, Any] | None = None, **args: Any) -> MultiTaskTrainer:
    """A `MultiTaskTrainer` as a user builds one: tasks on `encoder` (heads seeded with the run's seed; `freeze`:
    `MultiTaskModel.freeze` arguments, `sharing`: adapters), raw datasets (default: 64 training rows for every
    task, no eval split), the tokenizer as processing_class; `args`: `MultiTaskTrainingArguments` fields."""
    arguments = training_args(output_dir, **args)
    tasks = tasks if tasks is not None else review_tasks()
    names = tuple(task.name for task in tasks)
    set_seed(arguments.seed)  # the heads (and adapters) start the same in every run of one test
    model = MultiTaskModel.from_encoder(encoder, tasks, sharing=sharing)
    if freeze:
        model.freeze(**freeze)
    return trainer_class(model=model, args=arguments,
                         train_dataset=train if train is not None else review_data(64, 1, names),
                         eval_dataset=eval_, processing_class=tokenizer, **(trainer_kwargs or {}))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logged_steps(trainer: MultiTaskTrainer) -> list[dict[str, float]]:
    """The training log entries (those with Trainer's `loss`)."""
    return [entry for entry in trainer.state.log_history if "loss" in entry]


class RecordingTrainer(MultiTaskTrainer):
    """Records (task, first tokens of each row) for every training micro-batch."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen = getattr(self, "seen", [])
            self.seen.append((inputs["task"], inputs["input_ids"][:, 1:4].tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "task_groups" in inputs:  # gradient aggregation: one sub-batch per task
            self.seen = getattr(self, "seen", [])
            self.seen.append([(t, b["input_ids"][:, 1:4].tolist()) for t, b in inputs["task_groups"].items()])
        return super().training_step(model, inputs, num_items_in_batch)


def assert_same_model_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bitwise-equal state dicts."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        assert torch.equal(value, state_b[name]), name


def count_optimizer_steps(monkeypatch) -> list[int]:
    """Optimizer steps of each `train()` call made after this (one entry per call), by wrapping the trainer."""
    counts: list[int] = []
    train = MultiTaskTrainer.train

    def counting_train(self, *args, **kwargs):
        self.add_callback(StepCounter(counts))
        return train(self, *args, **kwargs)

    monkeypatch.setattr(MultiTaskTrainer, "train", counting_train)
    return counts


class StepCounter(TrainerCallback):
    def __init__(self, counts: list[int]):
        self.counts = counts

    def on_train_begin(self, args, state, control, **kwargs):
        self.counts.append(0)

    def on_step_end(self, args, state, control, **kwargs):
        self.counts[-1] += 1


def assert_same_weights(folder_a: Path, folder_b: Path) -> None:
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def wait_for(condition, seconds: float, what: str, process: Any, output=lambda: "") -> None:
    """Poll `condition` until it holds; fail, with the server's `output()`, if the process exits or time runs out."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited ({process.returncode}) before {what}:\n{output()}"
        try:
            if condition():
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}:\n{output()}")
