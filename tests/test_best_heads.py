"""`best_head_per_task`: each task's head comes from the evaluation where its main metric was best; the encoder is
the last step's; the choice survives a resume; best_heads.json names each head's step."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from manyheads import MultiTaskTrainingArguments

from .run_helpers import new_trainer, review_data

TASKS = ("sentiment", "match", "colors", "score")
MAIN = {"sentiment": ("accuracy", True), "match": ("accuracy", True), "colors": ("micro_f1", True),
        "score": ("pearson", True)}
SETTINGS = dict(max_steps=24, eval_strategy="steps", eval_steps=4, learning_rate=3e-3, logging_steps=4)


class HeadsAtEvaluations(TrainerCallback):
    """A copy of every task's own parameters at each evaluation (added before the trainer's own callbacks run)."""

    def __init__(self):
        self.copies: dict[int, dict[str, torch.Tensor]] = {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.copies[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()
                                          if n.startswith("heads.")}


def run(new_encoder, tokenizer, folder, **args):
    trainer = new_trainer(new_encoder(), tokenizer, folder, eval_=review_data(24, 2), **{**SETTINGS, **args})
    seen = HeadsAtEvaluations()
    trainer.add_callback(seen)
    return trainer, seen


def test_each_task_keeps_its_best_evaluations_head_and_the_encoder_is_the_last_steps(new_encoder, tokenizer,
                                                                                       tmp_path):
    trainer, seen = run(new_encoder, tokenizer, tmp_path / "best", best_head_per_task=True)
    trainer.train()
    plain, _ = run(new_encoder, tokenizer, tmp_path / "plain")
    plain.train()

    evaluations = [e for e in trainer.state.log_history if "eval_average" in e]
    assert [e["step"] for e in evaluations] == [4, 8, 12, 16, 20, 24]
    expected = {}
    for task, (metric, _) in MAIN.items():
        values = [(e[f"eval_{task}_{metric}"], e["step"]) for e in evaluations]
        best = max(v for v, _ in values)
        expected[task] = next(step for v, step in values if v == best)  # the first step reaching the best
    written = json.loads((tmp_path / "best" / "best_heads.json").read_text())["heads"]
    assert {task: entry["step"] for task, entry in written.items()} == expected
    assert any(step != 24 for step in expected.values())  # the test means something: some head is not the last
    params = dict(trainer.model.named_parameters())
    for task, step in expected.items():
        for name, value in seen.copies[step].items():
            if name.startswith(f"heads.{task}."):
                assert torch.equal(params[name], value), (task, name)
    # The callback only reads during training: the encoder ends as in the same run without the option.
    for name, value in plain.model.named_parameters():
        if name.startswith("encoder."):
            assert torch.equal(params[name], value), name
    assert written["colors"]["metric"] == "micro_f1"
    # An evaluation after training (the user's) does not replace the picks, even one that scores higher.
    from manyheads.callbacks import BestHeadsCallback

    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, BestHeadsCallback))
    picked = json.dumps(callback.best)
    perfect = {f"eval_{task}_{metric}": 1.0 for task, (metric, _) in MAIN.items()}
    trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, metrics=perfect)
    assert json.dumps(callback.best) == picked
    # The saved model's card names each head's step.
    trainer.save_model()
    card = (tmp_path / "best" / "README.md").read_text()
    assert "## Heads from their best evaluation" in card and '"best_head_per_task": true' in card
    for task, (metric, _) in MAIN.items():
        assert f"| {task} | {task} | {expected[task]} | {metric} | {written[task]['value']:.4f} |" in card
    plain.save_model()
    assert "best evaluation" not in (tmp_path / "plain" / "README.md").read_text()


def test_a_resumed_run_picks_the_same_heads(new_encoder, tokenizer, tmp_path):
    full, _ = run(new_encoder, tokenizer, tmp_path / "full", best_head_per_task=True)
    full.train()
    first, _ = run(new_encoder, tokenizer, tmp_path / "cut", best_head_per_task=True, save_strategy="steps",
                   save_steps=12, max_steps=24)
    # Stop after the checkpoint at step 12, as a killed run would.

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 12

    first.add_callback(Stop())
    first.train()
    assert (tmp_path / "cut" / "checkpoint-12" / "best_heads.safetensors").is_file()
    resumed, _ = run(new_encoder, tokenizer, tmp_path / "cut", best_head_per_task=True, save_strategy="steps",
                     save_steps=12)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-12"))
    assert json.loads((tmp_path / "cut" / "best_heads.json").read_text()) == \
        json.loads((tmp_path / "full" / "best_heads.json").read_text())
    theirs = dict(full.model.named_parameters())
    for name, value in resumed.model.named_parameters():
        assert torch.equal(theirs[name], value), name


def test_it_needs_evaluations_during_training(tmp_path):
    with pytest.raises(ValueError, match=r"'best_head_per_task' is True but 'eval_strategy' is 'no'.*Set "
                                         r"eval_strategy to 'steps' or 'epoch'"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), best_head_per_task=True)


def test_datasets_sharing_a_head_pick_its_step_by_the_mean_of_their_main_metrics(new_encoder, tokenizer, tmp_path):
    from manyheads import Classification

    tasks = [Classification(name=name, label="sentiment", max_length=32, head="polarity") for name in ("a", "b")]
    data = review_data(64, 1, ("a", "b"))
    trainer = new_trainer(new_encoder(), tokenizer, tmp_path, tasks=tasks, train=data,
                          eval_={"a": review_data(24, 2, ("a",))["a"], "b": review_data(24, 3, ("b",))["b"]},
                          best_head_per_task=True, **SETTINGS)
    trainer.train()
    written = json.loads((tmp_path / "best_heads.json").read_text())["heads"]
    assert list(written) == ["polarity"] and written["polarity"]["tasks"] == ["a", "b"]
    evaluations = {e["step"]: e for e in trainer.state.log_history if "eval_average" in e}
    means = {step: (e["eval_a_accuracy"] + e["eval_b_accuracy"]) / 2 for step, e in evaluations.items()}
    assert written["polarity"]["value"] == pytest.approx(max(means.values()))
    assert means[written["polarity"]["step"]] == max(means.values())
