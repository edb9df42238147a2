"""Atomic checkpoints: a process killed (SIGKILL) in the middle of a save leaves an incomplete checkpoint that
`--resume` skips with a warning, resuming from the newest complete one to bitwise the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from manyheads.cli.main import main
from manyheads.training.checkpoints import is_complete

from .conftest import base_config
from .run_helpers import assert_same_weights, count_optimizer_steps

# `manyheads train` in a child process whose KILL_AT_SAVE-th checkpoint save dies by SIGKILL after the model
# file is written and before the optimizer state (and so the completeness marker): a crash in mid-save.
SCRIPT = """
import os, signal, sys
import manyheads.trainer
from manyheads.trainer import MultiTaskTrainer
from manyheads.cli.main import main

save = MultiTaskTrainer._save_optimizer_and_scheduler
mark = manyheads.trainer.mark_complete
calls = []

def dying_save(self, output_dir):
    calls.append(output_dir)
    if len(calls) == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, output_dir)

def dying_mark(folder):  # after Trainer's own save, before the marker: where Trainer used to rotate
    calls.append(folder)
    if len(calls) == int(os.environ["KILL_AT_SAVE"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return mark(folder)

if os.environ.get("KILL_IN") == "marker":
    manyheads.trainer.mark_complete = dying_mark
else:
    MultiTaskTrainer._save_optimizer_and_scheduler = dying_save
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_save_then_resume_from_newest_complete(tmp_path, tiny_model_dir, data_dir, capsys, monkeypatch):
    run = tmp_path / "run"
    raw = base_config(tiny_model_dir, data_dir, run, max_steps=9, save_strategy="steps", save_steps=3,
                      logging_steps=3)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    script = tmp_path / "train_and_die.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KILL_AT_SAVE": "2"}
    process = subprocess.Popen([sys.executable, str(script), "train", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        # The uninterrupted run, in this process while the child runs.
        steps = count_optimizer_steps(monkeypatch)
        assert main(["train", str(config), "--output_dir", str(tmp_path / "uninterrupted")]) == 0
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, err
    assert is_complete(str(run / "checkpoint-3"))
    assert (run / "checkpoint-6" / "model.safetensors").is_file()  # half written ...
    assert not is_complete(str(run / "checkpoint-6"))               # ... and never marked complete

    capsys.readouterr()
    assert main(["train", str(config), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"warning: manyheads: {run / 'checkpoint-6'} is incomplete (interrupted while saving); skipping it." in err
    assert steps == [9, 6]  # the resume started from checkpoint-3: steps 4..9
    assert is_complete(str(run / "checkpoint-6")) and is_complete(str(run / "checkpoint-9"))
    assert_same_weights(run, tmp_path / "uninterrupted")


@pytest.mark.parametrize("kill_in", ["optimizer", "marker"])
def test_save_total_limit_never_leaves_the_run_without_a_complete_checkpoint(tmp_path, tiny_model_dir, data_dir,
                                                                              capsys, monkeypatch, kill_in):
    """With save_total_limit 1, the old checkpoint is deleted only after the new one is marked complete: a kill in
    the middle of Trainer's save, or between it and the marker, leaves checkpoint-3 complete (it used to be
    deleted by then)."""
    run = tmp_path / "run"
    raw = base_config(tiny_model_dir, data_dir, run, max_steps=9, save_strategy="steps", save_steps=3,
                      logging_steps=3, save_total_limit=1)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    script = tmp_path / "train_and_die.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KILL_AT_SAVE": "2", "KILL_IN": kill_in}
    done = subprocess.run([sys.executable, str(script), "train", str(config)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert is_complete(str(run / "checkpoint-3"))
    assert (run / "checkpoint-6" / "model.safetensors").is_file() and not is_complete(str(run / "checkpoint-6"))
    steps = count_optimizer_steps(monkeypatch)
    assert main(["train", str(config), "--resume"]) == 0
    assert steps == [6]  # the resume started from checkpoint-3: steps 4..9
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-9"]  # rotated once complete
    assert main(["train", str(config), "--output_dir", str(tmp_path / "uninterrupted")]) == 0
    assert_same_weights(run, tmp_path / "uninterrupted")
