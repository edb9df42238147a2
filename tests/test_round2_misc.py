"""Smaller reliability cases: the report draws any text, --overwrite removes the old run's results, a training
split with one class is warned about."""

from __future__ import annotations

import logging

import pytest
import yaml
from datasets import Dataset

from manyheads import Classification
from manyheads.cli.main import main
from manyheads.report.figures import plain_text

from .conftest import base_config


def test_report_figures_draw_dollar_signs_as_text(tmp_path):
    from matplotlib.figure import Figure

    def draw() -> None:
        figure = Figure()
        axes = figure.subplots()
        axes.plot([0, 1], [0, 1], label=r"$\x$")
        axes.legend()
        figure.savefig(tmp_path / "f.png")

    with pytest.raises(ValueError):
        draw()  # matplotlib's math parser rejects it
    with plain_text():
        draw()
    assert (tmp_path / "f.png").stat().st_size > 0


def test_overwrite_removes_the_old_runs_results(tmp_path, tiny_model_dir, data_dir, capsys):
    out = tmp_path / "out"
    raw = base_config(tiny_model_dir, data_dir, out, max_steps=2)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    assert (out / "eval_results.json").is_file() and (out / "diagnostics" / "run.json").is_file()
    for task in raw["tasks"]:
        task["data"].pop("eval")
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(config), "--overwrite"]) == 0
    assert not (out / "eval_results.json").exists()  # `report` would show the old run's metrics as this one's
    assert (out / "diagnostics" / "run.json").is_file()  # the new run's own


def test_a_training_split_with_one_class_is_warned_about(caplog):
    task = Classification(name="s")
    with caplog.at_level(logging.WARNING, logger="manyheads"):
        task.fit(Dataset.from_dict({"text": ["a", "b"], "label": ["pos", "pos"]}))
    assert "task 's': every training row has the label 'pos'" in caplog.text


def test_disk_full_during_a_save_is_one_line_and_the_last_checkpoint_stays(tmp_path, tiny_model_dir, data_dir,
                                                                            capsys, monkeypatch):
    import errno

    from manyheads.trainer import MultiTaskTrainer
    from manyheads.training.checkpoints import is_complete

    out = tmp_path / "out"
    raw = base_config(tiny_model_dir, data_dir, out, max_steps=9, save_strategy="steps", save_steps=3)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    save, calls = MultiTaskTrainer._save_optimizer_and_scheduler, []

    def full_disk(self, output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, output_dir)

    monkeypatch.setattr(MultiTaskTrainer, "_save_optimizer_and_scheduler", full_disk)
    capsys.readouterr()
    assert main(["train", str(config)]) == 4
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: disk full while writing to {out} (No space left on device); the latest complete "
                      f"checkpoint, {out / 'checkpoint-3'}, is intact. Free space, then resume with --resume."]
    assert is_complete(str(out / "checkpoint-3")) and not is_complete(str(out / "checkpoint-6"))
    monkeypatch.setattr(MultiTaskTrainer, "_save_optimizer_and_scheduler", save)
    assert main(["train", str(config), "--resume"]) == 0


def test_an_output_dir_that_cannot_be_written_is_refused(tmp_path, tiny_model_dir, data_dir, capsys, monkeypatch):
    """Read-only folders are simulated (this suite runs as root, for whom every folder is writable)."""
    import os

    locked = tmp_path / "read-only"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    raw = base_config(tiny_model_dir, data_dir, locked / "run")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    for command in ("train", "validate"):
        capsys.readouterr()
        assert main([command, str(config)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [f"error: output_dir: {locked} is not writable by this user. Give another --output_dir or "
                          "fix its permissions."]
    assert list(locked.iterdir()) == []


def test_a_jsonl_file_with_blank_lines_trains(tmp_path, tiny_model_dir, data_dir):
    from manyheads.recipe import build_config, prepare_data

    lines = (data_dir / "train.jsonl").read_text().splitlines()
    (data_dir / "gaps.jsonl").write_text("\n".join(line + "\n" for line in lines), encoding="utf-8")
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{**raw["tasks"][0], "data": {"train": "gaps.jsonl"}}]
    prepared = prepare_data(build_config(raw))
    assert len(prepared.train["sentiment"]) == len(lines)


def test_the_cli_metrics_table_leaves_out_the_stalled_head_flag():
    from manyheads.cli.common import format_table, metrics_rows

    metrics = {"eval_sst2_accuracy": 0.75, "eval_sst2_constant_predictions": 0.0, "eval_sst2_runtime": 1.2,
               "eval_ner_f1": 0.5, "eval_ner_constant_predictions": 1.0, "eval_loss": 0.3}
    rows = metrics_rows(metrics, ["sst2", "ner"])
    assert rows == [{"task": "sst2", "accuracy": 0.75}, {"task": "ner", "f1": 0.5}]
    assert "constant" not in format_table(rows)
