"""Preemption: a real SIGTERM to a training process gives a complete checkpoint, exit code 143, and a resume
that ends with bitwise the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import TrainerControl, TrainerState, TrainingArguments

from manyheads.cli.main import main
from manyheads.training.checkpoints import is_complete
from manyheads.training.preemption import PREEMPTED_EXIT_CODE, Preemption, PreemptionCallback

from .conftest import base_config
from .run_helpers import assert_same_weights, count_optimizer_steps

# The CLI in a child process, with one test-only callback: at step GATE_STEP it writes READY_FILE (training is
# under way) and holds until the SIGTERM sent by the test has set the preemption flag, so the signal always
# lands mid-training and the checkpoint step is known. Everything else is `manyheads train` as shipped.
SCRIPT = """
import os, sys, time
from transformers import TrainerCallback
import manyheads.recipe.build as build
from manyheads.cli.main import main
from manyheads.training.preemption import PreemptionCallback

class Gate(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def requested(self):
        return any(isinstance(cb, PreemptionCallback) and cb.preemption.requested
                   for cb in self.trainer.callback_handler.callbacks)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != int(os.environ["GATE_STEP"]):
            return
        open(os.environ["READY_FILE"], "w").close()
        deadline = time.monotonic() + 120
        while not self.requested() and time.monotonic() < deadline:
            time.sleep(0.02)

original = build.build_trainer

def build_trainer(*args, **kwargs):
    trainer = original(*args, **kwargs)
    trainer.add_callback(Gate(trainer))
    return trainer

build.build_trainer = build_trainer
sys.exit(main(sys.argv[1:]))
"""


def write_config(tmp_path: Path, model_dir: str, data_dir: Path, **training) -> Path:
    raw = base_config(model_dir, data_dir, tmp_path / "run", max_steps=8, logging_steps=2, **training)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until `path` exists; fail early with the child's output if it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training process exited with {process.returncode} before the gate\n{out}\n{err}")
        assert time.monotonic() < deadline, "training did not reach the gate step"
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(tmp_path, tiny_model_dir, data_dir, capsys,
                                                        monkeypatch):
    # save_strategy "no": the only checkpoint is the one the SIGTERM asks for.
    config = write_config(tmp_path, tiny_model_dir, data_dir)
    ready = tmp_path / "ready"
    script = tmp_path / "train_with_gate.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GATE_STEP": "3", "READY_FILE": str(ready)}
    process = subprocess.Popen([sys.executable, str(script), "train", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        # The uninterrupted run, in this process while the child starts (the gate holds it until the signal).
        steps = count_optimizer_steps(monkeypatch)
        assert main(["train", str(config), "--output_dir", str(tmp_path / "uninterrupted")]) == 0
        wait_for(ready, process)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    run = tmp_path / "run"
    assert process.returncode == PREEMPTED_EXIT_CODE, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("preempted:")]
    assert len(lines) == 1, err
    assert f"stopped at step 3 with a complete checkpoint in {run / 'checkpoint-3'}" in lines[0]
    assert f"Resume with: manyheads train {config} --resume" in lines[0]
    assert is_complete(str(run / "checkpoint-3"))
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (run / "model.safetensors").exists()  # no final save for an unfinished run

    assert main(["train", str(config), "--resume"]) == 0
    assert steps == [8, 5]  # the resume did resume: steps 4..8 only
    capsys.readouterr()
    assert_same_weights(run, tmp_path / "uninterrupted")


def test_handler_only_sets_a_flag_and_is_restored():
    previous = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        assert not preemption.requested
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not preemption.requested and time.monotonic() < deadline:  # delivered between bytecodes
            time.sleep(0.01)
        assert preemption.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


def test_callback_saves_at_the_step_end_or_else_at_the_epoch_end(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(global_step=5), TrainerControl()
    preemption = Preemption()
    callback = PreemptionCallback(preemption)
    callback.on_step_end(args, state, control)
    assert not callback.preempted and not control.should_save  # nothing asked yet
    preemption.request()
    callback.on_step_end(args, state, control)
    assert control.should_save and control.should_training_stop
    assert callback.stopped_at == 5 and callback.checkpoint == os.path.join(str(tmp_path), "checkpoint-5")
    # An evaluation at that step cancelled the save (save_strategy "best"): the epoch end saves instead,
    # without evaluating again inside the grace period.
    control.should_save, control.should_evaluate = False, True
    callback.on_epoch_end(args, state, control)
    assert control.should_save and not control.should_evaluate
    callback.on_save(args, state, control)
    control.should_save = False
    callback.on_epoch_end(args, state, control)
    assert not control.should_save
