"""`manyheads train` as a command: --overwrite, --resume latest, a full disk, an output folder it cannot write, its
metrics table."""

from __future__ import annotations

import errno
import os

import pytest
import yaml

from manyheads.cli.common import format_table, metrics_rows
from manyheads.cli.main import main
from manyheads.cli.train import resolve_resume
from manyheads.trainer import MultiTaskTrainer
from manyheads.training.checkpoints import is_complete, mark_complete

from .conftest import base_config


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


def test_disk_full_during_a_save_is_one_line_and_the_last_checkpoint_stays(tmp_path, tiny_model_dir, data_dir,
                                                                            capsys, monkeypatch):
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


def test_the_cli_metrics_table_leaves_out_the_stalled_head_flag():
    metrics = {"eval_sst2_accuracy": 0.75, "eval_sst2_constant_predictions": 0.0, "eval_sst2_runtime": 1.2,
               "eval_ner_f1": 0.5, "eval_ner_constant_predictions": 1.0, "eval_loss": 0.3}
    rows = metrics_rows(metrics, ["sst2", "ner"])
    assert rows == [{"task": "sst2", "accuracy": 0.75}, {"task": "ner", "f1": 0.5}]
    assert "constant" not in format_table(rows)


def test_resume_latest_picks_the_newest_complete_checkpoint(tmp_path):
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
