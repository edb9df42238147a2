"""Non-finite losses: each skips its update with a warning naming the task and step; `max_nonfinite_steps`
consecutive ones stop `manyheads train` with exit code 3 and one error line, the last checkpoint intact."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file

from manyheads.cli.main import main
from manyheads.tasks.regression import Regression as RegressionTask
from manyheads.training.checkpoints import is_complete

from .conftest import base_config


def poison(monkeypatch, calls: set[int]) -> None:
    """The regression loss becomes NaN on the given training calls (1-based; evaluation is left alone)."""
    loss = RegressionTask.loss
    seen = [0]

    def poisoned(self, logits, labels):
        value = loss(self, logits, labels)
        if not torch.is_grad_enabled():
            return value
        seen[0] += 1
        return value * float("nan") if seen[0] in calls else value

    monkeypatch.setattr(RegressionTask, "loss", poisoned)


def write_config(tmp_path, tiny_model_dir, data_dir):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "run", max_steps=12, save_strategy="steps",
                      save_steps=2)
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] == "score"]  # every step is the poisoned task's
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def skipped_steps(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]


def test_consecutive_nonfinite_losses_stop_with_exit_code_3(tmp_path, tiny_model_dir, data_dir, monkeypatch,
                                                            caplog, capsys):
    poison(monkeypatch, calls=set(range(5, 100)))  # from step 5 on
    config = write_config(tmp_path, tiny_model_dir, data_dir)
    assert main(["train", str(config)]) == 3
    warnings = skipped_steps(caplog)
    assert [w.split(";")[0] for w in warnings] == [f"manyheads: non-finite loss for task(s) score at step {s}"
                                                   for s in (5, 6, 7)]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    run = tmp_path / "run"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "3 consecutive optimizer steps had a non-finite loss (last: task(s) score at step 7)" in lines[0]
    assert f"latest complete checkpoint: {run / 'checkpoint-6'}" in lines[0]
    # The skipped steps 5 and 6 left the weights as step 4 had them; the checkpoints are complete and finite.
    assert is_complete(str(run / "checkpoint-4")) and is_complete(str(run / "checkpoint-6"))
    four, six = load_file(run / "checkpoint-4" / "model.safetensors"), load_file(run / "checkpoint-6" /
                                                                                  "model.safetensors")
    for name, value in six.items():
        assert torch.isfinite(value).all() and torch.equal(value, four[name]), name
    assert not (run / "model.safetensors").exists()  # no final model from a stopped run


def test_isolated_nonfinite_losses_are_skipped_and_training_finishes(tmp_path, tiny_model_dir, data_dir,
                                                                     monkeypatch, caplog, capsys):
    poison(monkeypatch, calls={3, 5, 6})  # never 3 in a row
    config = write_config(tmp_path, tiny_model_dir, data_dir)
    assert main(["train", str(config), "--max_nonfinite_steps", "3"]) == 0
    assert [w.split(";")[0].rsplit(" ", 1)[-1] for w in skipped_steps(caplog)] == ["3", "5", "6"]
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    capsys.readouterr()


@pytest.mark.parametrize("user_optimizers", [False, True], ids=["trainer-built", "user-supplied"])
def test_a_skipped_step_changes_no_weight_no_optimizer_state_and_no_learning_rate(tiny_encoder, tokenizer, tmp_path,
                                                                                   monkeypatch, user_optimizers):
    """Through the Python API: step 2's loss is NaN. The gate in `create_optimizer` / `create_scheduler` makes that
    optimizer step and its scheduler step no-ops (no `_set_sync_gradients`), and step 3 trains again; the same for
    an optimizer and scheduler the user built (`optimizers=`), which torch's scheduler had already wrapped."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from manyheads import MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments

    from .conftest import review_rows

    poison(monkeypatch, calls={2})
    rows = review_rows(32, 1)
    train = Dataset.from_dict({"text": [r["text"] for r in rows], "score": [r["score"] for r in rows]})
    model = MultiTaskModel.from_encoder(tiny_encoder, [RegressionTask(name="score", label="score", max_length=32)])
    seen: list[tuple[dict, int, int]] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
            adam_steps = {int(s["step"]) for s in optimizer.state.values() if "step" in s}
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            seen.append((weights, lr_scheduler.last_epoch, max(adam_steps)))

    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
                                      learning_rate=1e-3, lr_scheduler_type="linear", report_to="none",
                                      save_strategy="no", use_cpu=True, seed=7)
    optimizers = (None, None)
    if user_optimizers:
        from transformers import get_linear_schedule_with_warmup

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        optimizers = (optimizer, get_linear_schedule_with_warmup(optimizer, 0, 4))
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset={"score": train}, processing_class=tokenizer,
                               callbacks=[Record()], optimizers=optimizers)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. torch's "optimizer.step() has been overridden"
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        trainer.train()
    (w1, lr1, adam1), (w2, lr2, adam2), (w3, lr3, adam3), _ = seen
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped step 2 left every weight as step 1 had it
    assert (lr1, lr2, lr3) == (1, 1, 2) and (adam1, adam2, adam3) == (1, 1, 2)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # and step 3 trained again


def test_the_gate_skips_a_step_under_fp16_loss_scaling():
    """The fp16 branch, forced on the CPU: GradScaler asserts that it recorded inf checks, which it does only for
    gradients that exist, so a skipped step zeroes the gradients (not None) and the gate makes the step a no-op."""
    from manyheads.training.step_gate import StepGate

    layer = torch.nn.Linear(3, 1)
    optimizer = StepGate().wrap_optimizer(torch.optim.AdamW(layer.parameters(), lr=0.1))
    gate = optimizer.step._step_gate
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in layer.parameters()]
    scaler.scale(layer(torch.ones(2, 3)).sum()).backward()
    layer.zero_grad(set_to_none=False)  # what MultiTaskTrainer does on a non-finite loss
    gate.skip_next()
    scaler.unscale_(optimizer)  # Trainer's gradient clipping unscales first
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters())) and not optimizer.state
    scaler.scale(layer(torch.ones(2, 3)).sum()).backward()
    scaler.step(optimizer)  # the next step is not gated
    assert any(not torch.equal(a, b) for a, b in zip(before, layer.parameters()))
