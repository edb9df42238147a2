"""Resume from a checkpoint gives bitwise the same weights, task sequence and per-task losses."""

import os

import pytest
import torch

from manyheads.recipe import build_config, build_trainer
from manyheads.trainer import MultiTaskTrainer
from manyheads.training.checkpoints import mark_complete

from .conftest import base_config, make_encoder, make_tokenizer


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


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-dropout")
    make_encoder(dropout=0.1).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def run_config(model_dir, data_dir, out, train_file, **training):
    # Logging every step: a logging window that straddles the checkpoint is split by a resume (for
    # Trainer's own `loss` as much as for the per-task losses), so windows must align to compare logs.
    raw = base_config(model_dir, data_dir, out, save_strategy="steps", logging_steps=1, **training)
    for task in raw["tasks"]:
        task["data"] = {"train": train_file}
    strategy = training.pop("strategy", None)
    raw["training"].pop("strategy", None)
    if strategy:
        raw["sampling"] = {"strategy": strategy}
    for section in ("balancing", "freeze"):
        if section in training:
            raw[section] = raw["training"].pop(section)
    return build_config(raw)


def train(config, resume=None):
    trainer = build_trainer(config, trainer_class=RecordingTrainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


CASES = {
    # name: (train file, training overrides, checkpoint step)
    "mid_epoch": ("train.jsonl", {"max_steps": 12, "save_steps": 4}, 4),
    "epoch_2_accumulation_temperature": ("small.jsonl", {"max_steps": 10, "save_steps": 6,
                                                         "gradient_accumulation_steps": 2,
                                                         "strategy": "temperature"}, 6),
    "uniform": ("small.jsonl", {"max_steps": 9, "save_steps": 5, "strategy": "uniform"}, 5),
    "round_robin": ("small.jsonl", {"max_steps": 9, "save_steps": 3, "strategy": "round_robin"}, 3),
    "frozen_layers": ("train.jsonl", {"max_steps": 8, "save_steps": 3, "freeze": {"embeddings": True, "layers": 1}},
                      3),
    # Learnable and history-based weightings: their state travels in the checkpoint (balancing.pt).
    "uncertainty": ("small.jsonl", {"max_steps": 10, "save_steps": 6, "gradient_accumulation_steps": 2,
                                    "balancing": {"weighting": "uncertainty"}}, 6),
    "dwa": ("small.jsonl", {"max_steps": 12, "save_steps": 5, "balancing": {"weighting": "dwa",
                                                                          "weighting_kwargs": {"period": 2}}}, 5),
    "gradnorm": ("small.jsonl", {"max_steps": 9, "save_steps": 4, "balancing": {"weighting": "gradnorm"}}, 4),
    "rlw": ("small.jsonl", {"max_steps": 8, "save_steps": 3, "balancing": {"weighting": "rlw"}}, 3),
    "upgrad": ("small.jsonl", {"max_steps": 8, "save_steps": 3, "gradient_accumulation_steps": 2,
                               "balancing": {"aggregator": "upgrad"}}, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_exact(case, dropout_model_dir, data_dir, tmp_path):
    train_file, overrides, step = CASES[case]
    full = train(run_config(dropout_model_dir, data_dir, tmp_path / "full", train_file, **overrides))
    checkpoint = tmp_path / "full" / f"checkpoint-{step}"
    assert checkpoint.is_dir()
    resumed = train(run_config(dropout_model_dir, data_dir, tmp_path / "resumed", train_file, **overrides),
                    resume=str(checkpoint))
    assert resumed.state.global_step == full.state.global_step
    # Same sequence of (task, examples) after the checkpoint as in the uninterrupted run.
    accumulation = overrides.get("gradient_accumulation_steps", 1)
    assert resumed.seen == full.seen[step * accumulation:]
    # Bitwise-equal weights on CPU (dropout on: the RNG state is restored too).
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name, value in full_state.items():
        assert torch.equal(value, resumed_state[name]), name
    # Same balancing state (learnable log-variances, loss histories) and optimizer state.
    for name, value in full.weighting.state_dict().items():
        other = resumed.weighting.state_dict()[name]
        if isinstance(value, torch.Tensor):  # NaN marks "not seen yet" in histories: compare it as a value
            assert torch.allclose(value, other, rtol=0, atol=0, equal_nan=True), name
        else:
            assert value == other, name
    full_opt, resumed_opt = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert full_opt.keys() == resumed_opt.keys()
    for key in full_opt:
        for name, value in full_opt[key].items():
            assert torch.equal(value, resumed_opt[key][name]), (key, name)
    # Same logged per-task losses for the steps after the resume.
    def task_losses(trainer):
        return [{k: v for k, v in e.items() if k.startswith("loss_")} for e in trainer.state.log_history
                if "loss" in e and e["step"] > step]
    assert task_losses(resumed) == task_losses(full)


def test_cli_resume_latest(tiny_model_dir, data_dir, tmp_path):
    from manyheads.cli.train import resolve_resume

    out = tmp_path / "run"
    assert resolve_resume("latest", str(out)) is None
    for step in (4, 12):
        os.makedirs(out / f"checkpoint-{step}")
        mark_complete(str(out / f"checkpoint-{step}"))
    assert resolve_resume("latest", str(out)).endswith("checkpoint-12")
    # A newer checkpoint without the completeness marker (interrupted save) is skipped with a warning.
    os.makedirs(out / "checkpoint-16")
    with pytest.warns(UserWarning, match="checkpoint-16 is incomplete"):
        assert resolve_resume("latest", str(out)).endswith("checkpoint-12")
    assert resolve_resume(None, str(out)) is None
