"""Helpers for tests that run `manyheads train` end to end and compare runs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback


def count_optimizer_steps(monkeypatch) -> list[int]:
    """Optimizer steps of each `train()` call made after this (one entry per call), by wrapping the trainer."""
    from manyheads.trainer import MultiTaskTrainer

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
