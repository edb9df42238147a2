"""Resume from a checkpoint gives bitwise the same weights, task sequence and per-task losses."""

import copy

import pytest
import torch

from .conftest import make_encoder
from .run_helpers import RecordingTrainer, assert_same_model_state, new_trainer, review_data


@pytest.fixture(scope="module")
def _dropout_encoder():
    return make_encoder(dropout=0.1)


def train(encoder, tokenizer, out, rows, resume=None, **args):
    # Logging every step: a logging window that straddles the checkpoint is split by a resume (for
    # Trainer's own `loss` as much as for the per-task losses), so windows must align to compare logs.
    trainer = new_trainer(copy.deepcopy(encoder), tokenizer, out, train=review_data(*rows),
                          trainer_class=RecordingTrainer, save_strategy="steps", logging_steps=1, **args)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


TRAIN, SMALL = (64, 1), (10, 3)  # review rows (count, seed): 8 batches of each task, or 2 (several epochs)
CASES = {
    # name: (rows, arguments, checkpoint step)
    "mid_epoch": (TRAIN, {"max_steps": 12, "save_steps": 4}, 4),
    "epoch_2_accumulation_temperature": (SMALL, {"max_steps": 10, "save_steps": 6, "gradient_accumulation_steps": 2,
                                                 "sampling_strategy": "temperature"}, 6),
    "uniform": (SMALL, {"max_steps": 9, "save_steps": 5, "sampling_strategy": "uniform"}, 5),
    "round_robin": (SMALL, {"max_steps": 9, "save_steps": 3, "sampling_strategy": "round_robin"}, 3),
    "frozen_layers": (TRAIN, {"max_steps": 8, "save_steps": 3, "freeze": {"embeddings": True, "layers": 1}}, 3),
    # Learnable and history-based weightings: their state travels in the checkpoint (balancing.pt).
    "uncertainty": (SMALL, {"max_steps": 10, "save_steps": 6, "gradient_accumulation_steps": 2,
                            "loss_weighting": "uncertainty"}, 6),
    "dwa": (SMALL, {"max_steps": 12, "save_steps": 5, "loss_weighting": "dwa",
                    "loss_weighting_kwargs": {"period": 2}}, 5),
    "gradnorm": (SMALL, {"max_steps": 9, "save_steps": 4, "loss_weighting": "gradnorm"}, 4),
    "rlw": (SMALL, {"max_steps": 8, "save_steps": 3, "loss_weighting": "rlw"}, 3),
    "upgrad": (SMALL, {"max_steps": 8, "save_steps": 3, "gradient_accumulation_steps": 2,
                       "gradient_aggregator": "upgrad"}, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_exact(case, _dropout_encoder, tokenizer, tmp_path):
    rows, args, step = CASES[case]
    full = train(_dropout_encoder, tokenizer, tmp_path / "full", rows, **args)
    checkpoint = tmp_path / "full" / f"checkpoint-{step}"
    assert checkpoint.is_dir()
    resumed = train(_dropout_encoder, tokenizer, tmp_path / "resumed", rows, resume=str(checkpoint), **args)
    assert resumed.state.global_step == full.state.global_step
    # Same sequence of (task, examples) after the checkpoint as in the uninterrupted run.
    accumulation = args.get("gradient_accumulation_steps", 1)
    assert resumed.seen == full.seen[step * accumulation:]
    # Bitwise-equal weights on CPU (dropout on: the RNG state is restored too).
    assert_same_model_state(full.model, resumed.model)
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
