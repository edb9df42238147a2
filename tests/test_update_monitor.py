"""UpdateMonitorCallback on a tiny BERT: norms against a direct clone-and-diff, once per optimizer step, warnings."""

import csv
import logging
import math
import re

import pytest
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from manyheads.callbacks import MONITOR_FILE, UpdateMonitorCallback, diagnostics_dir, parameter_groups
from manyheads.recipe import build_config, build_trainer

from .conftest import base_config

# The expected group of each parameter, written independently of parameter_groups().
EXPECTED_GROUPS = [
    (r"^encoder\.embeddings\.", "embeddings"),
    (r"^encoder\.encoder\.layer\.(\d+)\.attention\.", "layer.{0}.attention"),
    (r"^encoder\.encoder\.layer\.(\d+)\.", "layer.{0}.ffn"),
    (r"^encoder\.pooler\.", "encoder.other"),
    (r"^heads\.(\w+)\.", "head.{0}"),
]


def expected_group(name):
    for pattern, group in EXPECTED_GROUPS:
        match = re.match(pattern, name)
        if match:
            return group.format(*match.groups())
    raise AssertionError(f"no expected group for {name}")


class CloneAndDiff(TrainerCallback):
    """Reference: clone every trainable parameter before each optimizer step, diff after it."""

    def __init__(self):
        self.steps = []  # (step, {name: (param_norm, update_norm, grad_norm)})
        self._before = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._before = {n: (p.detach().clone(), p.grad.detach().clone() if p.grad is not None else None)
                        for n, p in model.named_parameters() if p.requires_grad}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        values = {}
        for name, (old, grad) in self._before.items():
            values[name] = (old.norm().item(), (params[name].detach() - old).norm().item(),
                            grad.norm().item() if grad is not None else 0.0)
        self.steps.append((state.global_step + 1, values))


def make_trainer(tiny_model_dir, data_dir, tmp_path, diagnostics, **training):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", **training)
    raw["diagnostics"] = diagnostics
    return build_trainer(build_config(raw))


def monitor_of(trainer):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, UpdateMonitorCallback))


def read_rows(trainer):
    with open(f"{diagnostics_dir(trainer.args.output_dir)}/{MONITOR_FILE}", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_norms_equal_a_direct_clone_and_diff(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path,
                           {"update_monitor": True, "monitor_every": 1, "monitor_per_tensor": True},
                           max_steps=3, max_grad_norm=0.5)
    reference = CloneAndDiff()
    trainer.add_callback(reference)
    trainer.train()
    monitor = monitor_of(trainer)
    assert [r["step"] for r in monitor.history] == [1, 2, 3] == [s for s, _ in reference.steps]
    tensor_rows = {(int(r["step"]), r["group"]): r for r in read_rows(trainer) if r["kind"] == "tensor"}
    for (step, values), record in zip(reference.steps, monitor.history):
        expected: dict[str, list[tuple[float, float, float]]] = {}
        for name, (param, update, grad) in values.items():
            row = tensor_rows[(step, name)]
            assert float(row["update_norm"]) == pytest.approx(update, rel=1e-5, abs=1e-9), name
            assert float(row["param_norm"]) == pytest.approx(param, rel=1e-5), name
            assert float(row["grad_norm"]) == pytest.approx(grad, rel=1e-5, abs=1e-9), name
            expected.setdefault(expected_group(name), []).append((param, update, grad))
        assert set(record["groups"]) == set(expected)
        for group, members in expected.items():
            got = record["groups"][group]
            param, update, grad = (math.sqrt(sum(m[i] ** 2 for m in members)) for i in range(3))
            assert got["update_norm"] == pytest.approx(update, rel=1e-5)
            assert got["param_norm"] == pytest.approx(param, rel=1e-5)
            assert got["grad_norm"] == pytest.approx(grad, rel=1e-5, abs=1e-9)
            assert got["relative_update"] == pytest.approx(update / param, rel=1e-5)
    # max_grad_norm=0.5: the recorded gradients are the clipped ones the optimizer used.
    total = math.sqrt(sum(g["grad_norm"] ** 2 for g in monitor.history[0]["groups"].values()))
    assert total == pytest.approx(0.5, rel=1e-3) or total < 0.5
    assert set(monitor.history[0]["groups"]) >= {"embeddings", "layer.0.attention", "layer.0.ffn",
                                                 "layer.1.attention", "layer.1.ffn", "encoder.other"}


@pytest.mark.parametrize("every, steps", [(1, [1, 2, 3, 4]), (2, [2, 4])])
def test_measured_once_per_optimizer_step_under_gradient_accumulation(tiny_model_dir, data_dir, tmp_path,
                                                                       every, steps):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, {"update_monitor": True, "monitor_every": every},
                           max_steps=4, gradient_accumulation_steps=3, per_device_train_batch_size=4)
    reference = CloneAndDiff()
    trainer.add_callback(reference)
    trainer.train()
    monitor = monitor_of(trainer)
    assert [r["step"] for r in monitor.history] == steps
    assert sorted({int(r["step"]) for r in read_rows(trainer)}) == steps
    updates = {step: values for step, values in reference.steps}
    assert len(updates) == 4  # the reference also ran once per optimizer step, not per micro-batch
    for record in monitor.history:
        members = [v for n, v in updates[record["step"]].items() if expected_group(n) == "layer.1.ffn"]
        assert record["groups"]["layer.1.ffn"]["update_norm"] == pytest.approx(
            math.sqrt(sum(m[1] ** 2 for m in members)), rel=1e-5)


def test_default_interval_is_the_logging_interval_and_frozen_groups_are_left_out(tiny_model_dir, data_dir,
                                                                                 tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=8, logging_steps=4)
    raw["diagnostics"] = {"update_monitor": True}
    raw["freeze"] = {"embeddings": True}
    trainer = build_trainer(build_config(raw))
    trainer.train()
    history = monitor_of(trainer).history
    assert [r["step"] for r in history] == [4, 8]
    assert "embeddings" not in history[0]["groups"]
    assert {"head.sentiment", "head.match", "head.colors", "head.score"} <= set(history[0]["groups"])


def test_band_warning_names_the_group_once_per_excursion(tiny_model_dir, data_dir, tmp_path, caplog):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path,
                           {"update_monitor": True, "monitor_every": 1, "relative_update_band": [1e-12, 1e-11],
                            "band_patience": 2}, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="manyheads"):
        trainer.train()
    monitor = monitor_of(trainer)
    encoder = [g for g in monitor.history[0]["groups"] if not g.startswith("head.")]
    # Every encoder group moves far more than 1e-11 of its norm at every step: one warning each, at the 2nd
    # measurement. A head whose task had no micro-batch in a step is idle there and never warned as "below".
    for group in encoder:
        (message,) = [w for w in monitor.warnings if f"'{group}'" in w]
        assert "above" in message and "steps 1-2" in message and "lower learning_rate" in message
    assert not any("below" in w for w in monitor.warnings)
    assert len(monitor.warnings) == len({re.search(r"'(.+?)'", w).group(1) for w in monitor.warnings})
    assert sum("relative update" in r.getMessage() for r in caplog.records) == len(monitor.warnings)

    low = UpdateMonitorCallback(every=1, band=(1.0, 2.0), patience=1)
    low._check_band({"step": 5, "groups": {"layer.0.ffn": {"relative_update": 1e-3, "update_norm": 1e-3,
                                                              "grad_norm": 0.1, "param_norm": 1.0}}})
    assert "below" in low.warnings[0] and "raise learning_rate" in low.warnings[0]


def test_only_the_main_process_measures_and_writes(tiny_encoder, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    monitor = UpdateMonitorCallback(every=1)
    state, control = TrainerState(), TrainerControl()
    state.is_world_process_zero = False
    monitor.on_train_begin(args, state, control)
    monitor.on_pre_optimizer_step(args, state, control, model=tiny_encoder)
    with torch.no_grad():
        next(tiny_encoder.parameters()).add_(1.0)
    monitor.on_optimizer_step(args, state, control, model=tiny_encoder)
    assert monitor.history == [] and not (tmp_path / "diagnostics").exists()
    # A plain encoder (no heads) is grouped by its top-level modules.
    assert set(parameter_groups(tiny_encoder)) == {"embeddings", "encoder", "pooler"}


def test_bad_arguments_say_what_to_fix():
    with pytest.raises(ValueError, match="every=0"):
        UpdateMonitorCallback(every=0)
    with pytest.raises(ValueError, match=r"band=\[0.1, 0.01\]"):
        UpdateMonitorCallback(band=(0.1, 0.01))


def test_fresh_run_restarts_the_file_and_a_resumed_run_appends(tiny_model_dir, data_dir, tmp_path):
    diagnostics = {"update_monitor": True, "monitor_every": 1}
    first = make_trainer(tiny_model_dir, data_dir, tmp_path, diagnostics, max_steps=4, save_strategy="steps",
                         save_steps=2)
    first.train()
    resumed = make_trainer(tiny_model_dir, data_dir, tmp_path, diagnostics, max_steps=4)
    resumed.train(resume_from_checkpoint=f"{first.args.output_dir}/checkpoint-2")
    steps = [int(r["step"]) for r in read_rows(resumed) if r["group"] == "layer.0.ffn"]
    assert steps == [1, 2, 3, 4, 3, 4]  # steps 3-4 re-done after the resume; readers keep the last rows
    fresh = make_trainer(tiny_model_dir, data_dir, tmp_path, diagnostics, max_steps=2)
    fresh.train()
    assert [int(r["step"]) for r in read_rows(fresh) if r["group"] == "layer.0.ffn"] == [1, 2]
