"""Precision on every kind of machine: each hardware branch is forced here, so the suite exercises all of them
whatever CPU runs it (the README's commands once failed on an Intel AMX machine while CI on AMD stayed green,
because only the no-AMX branch ever ran).

Branches (`manyheads.hardware`), and the tests that force each:
- CPU with AMX, no GPU ("amx"): bf16="auto" -> bf16 autocast on the CPU, `use_cpu` set.
- CPU without AMX, no GPU ("no_amx"): bf16="auto" -> fp32; an explicit bf16=True still trains, with a warning.
- GPU with / without bf16 ("gpu_bf16", "gpu_no_bf16"): `bf16_is_fast` follows the GPU (arguments are not built
  there: transformers itself then looks for the real device).
"""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments, hardware
from manyheads.cli.main import main
from manyheads.recipe import build_config

from .conftest import base_config, review_rows

BRANCHES = {  # name -> (has_accelerator, accelerator_has_bf16, cpu_has_bf16_matrix_units)
    "amx": (False, False, True),
    "no_amx": (False, False, False),
    "gpu_bf16": (True, True, False),
    "gpu_no_bf16": (True, False, True),
}


@pytest.fixture
def force(monkeypatch):
    """force("amx") makes this machine look like that branch to manyheads.hardware."""
    def apply(branch: str) -> None:
        accelerator, accelerator_bf16, amx = BRANCHES[branch]
        monkeypatch.setattr(hardware, "has_accelerator", lambda: accelerator)
        monkeypatch.setattr(hardware, "accelerator_has_bf16", lambda: accelerator_bf16)
        monkeypatch.setattr(hardware, "cpu_has_bf16_matrix_units", lambda: amx)
    return apply


def cpu_only_machine() -> bool:
    return not hardware.has_accelerator()


needs_cpu_only = pytest.mark.skipif(not cpu_only_machine(), reason="builds CPU arguments; this machine has a GPU")


@pytest.mark.parametrize("branch, expected", [("amx", True), ("no_amx", False), ("gpu_bf16", True),
                                              ("gpu_no_bf16", False)])
def test_bf16_is_fast_follows_each_branch(force, branch, expected):
    force(branch)
    assert hardware.bf16_is_fast() is expected


@pytest.mark.parametrize("branch, bf16, reason", [
    ("amx", True, "CPU autocast; this CPU has AMX bf16 matrix units"),
    ("no_amx", True, "CPU autocast; this CPU has no AMX, where bf16 usually runs slower than fp32"),
    ("amx", False, "this CPU has AMX, bf16 would be faster (bf16: auto picks it)"),
    ("no_amx", False, "this CPU has no AMX bf16 matrix units, where fp32 is faster"),
    ("gpu_bf16", True, "the GPU supports bf16"),
    ("gpu_no_bf16", False, "the GPU has no bf16 support"),
])
def test_precision_reason_names_each_branch(force, branch, bf16, reason):
    force(branch)
    assert hardware.precision_reason(bf16) == reason


@needs_cpu_only
def test_amx_branch_auto_builds_real_bf16_cpu_arguments(force, tmp_path):
    """Branch amx: the arguments transformers used to refuse ("Your setup doesn't support bf16/gpu")."""
    force("amx")
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), bf16="auto", report_to="none")
    assert args.bf16 is True and args.use_cpu is True
    assert args.device.type == "cpu"
    # The same fields are valid stock TrainingArguments too: nothing manyheads-only was needed.
    stock = TrainingArguments(output_dir=str(tmp_path), bf16=args.bf16, use_cpu=args.use_cpu, report_to="none")
    assert stock.bf16 and stock.use_cpu


@needs_cpu_only
def test_no_amx_branch_auto_stays_fp32(force, tmp_path):
    force("no_amx")
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), bf16="auto", report_to="none")
    assert args.bf16 is False and args.use_cpu is False


@needs_cpu_only
def test_explicit_bf16_on_a_cpu_without_amx_trains_and_warns(force, tmp_path, caplog):
    force("no_amx")
    with caplog.at_level(logging.WARNING, logger="manyheads.training_args"):
        args = MultiTaskTrainingArguments(output_dir=str(tmp_path), bf16=True, report_to="none")
    assert args.bf16 and args.use_cpu
    assert "slower than fp32" in caplog.text and "bf16='auto'" in caplog.text


@needs_cpu_only
def test_explicit_bf16_on_an_amx_cpu_says_nothing(force, tmp_path, caplog):
    force("amx")
    with caplog.at_level(logging.WARNING, logger="manyheads.training_args"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), bf16=True, report_to="none")
    assert "slower" not in caplog.text


@needs_cpu_only
def test_two_bf16_cpu_steps_really_train_in_bf16(force, tiny_encoder, tokenizer, tmp_path):
    """Branch amx end to end: two optimizer steps under CPU autocast change the weights, and the encoder's
    matrix products ran in bf16 (checked on the activations a forward hook sees)."""
    force("amx")
    rows = review_rows(32, 1)
    train = {"sentiment": Dataset.from_list([{"text": r["text"], "label": r["sentiment"]} for r in rows])}
    model = MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="sentiment")])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), bf16="auto", max_steps=2,
                                      per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
                                      save_strategy="no", seed=3)
    dtypes = []
    layer = model.encoder.encoder.layer[0].intermediate.dense
    handle = layer.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # the head exists once its labels are fitted
    result = trainer.train()
    handle.remove()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert set(dtypes) == {torch.bfloat16}
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("heads.") for k in changed)
    # Weights stay fp32 (autocast casts on the fly), as with a GPU's mixed precision.
    assert all(p.dtype == torch.float32 for p in model.parameters())


@needs_cpu_only
@pytest.mark.parametrize("branch, precision", [("amx", "bf16"), ("no_amx", "fp32")])
def test_recipe_bf16_auto_resolves_per_branch(force, tiny_model_dir, data_dir, tmp_path, branch, precision):
    force(branch)
    run = build_config(base_config(tiny_model_dir, data_dir, tmp_path / "out", bf16="auto"))
    args = run.training_arguments()
    assert args.bf16 is (precision == "bf16") and args.use_cpu


@needs_cpu_only
@pytest.mark.parametrize("branch, first_line", [
    ("amx", "precision bf16 (CPU autocast; this CPU has AMX bf16 matrix units)"),
    ("no_amx", "precision fp32 (this CPU has no AMX bf16 matrix units, where fp32 is faster)"),
])
def test_demo_picks_and_names_its_precision_on_each_branch(force, tiny_model_dir, tmp_path, capsys, branch,
                                                           first_line):
    """The README's demo on each CPU kind: it trains, and its first line says the precision and why."""
    force(branch)
    code = main(["demo", "--model", tiny_model_dir, "--output_dir", str(tmp_path / "demo"), "--train_rows", "32",
                 "--eval_rows", "8", "--max_steps", "2", "--per_device_train_batch_size", "8"])
    assert code == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("demo:"))
    assert first.endswith(first_line)
    assert "rating=" in out


@needs_cpu_only
def test_demo_flag_overrides_auto_and_the_first_line_says_so(force, tiny_model_dir, tmp_path, capsys):
    force("amx")
    code = main(["demo", "--model", tiny_model_dir, "--output_dir", str(tmp_path / "demo"), "--train_rows", "32",
                 "--eval_rows", "8", "--max_steps", "1", "--per_device_train_batch_size", "8", "--bf16", "false"])
    assert code == 0
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("demo:"))
    assert "precision fp32 (this CPU has AMX, bf16 would be faster" in first
