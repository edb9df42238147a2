"""One run per output folder: a second `manyheads train` on a folder in use exits 2 and changes nothing; the
lock of a killed run is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from manyheads.cli.main import main
from manyheads.training.output_lock import OutputLock

from .conftest import base_config
from .run_helpers import assert_same_weights

# `manyheads train` in a child process that stops at step 2 until the test creates GO_FILE: a run in progress.
SCRIPT = """
import os, sys, time
from transformers import TrainerCallback
import manyheads.recipe.build as build
from manyheads.cli.main import main

class Gate(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != 2:
            return
        open(os.environ["READY_FILE"], "w").close()
        deadline = time.monotonic() + 240
        while not os.path.exists(os.environ["GO_FILE"]) and time.monotonic() < deadline:
            time.sleep(0.05)

original = build.build_trainer

def build_trainer(*args, **kwargs):
    trainer = original(*args, **kwargs)
    trainer.add_callback(Gate())
    return trainer

build.build_trainer = build_trainer
sys.exit(main(sys.argv[1:]))
"""


def start_gated(tmp_path, config):
    script = tmp_path / "gated.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "READY_FILE": str(tmp_path / "ready"),
           "GO_FILE": str(tmp_path / "go")}
    process = subprocess.Popen([sys.executable, str(script), "train", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (tmp_path / "ready").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the gated run never reached step 2"
        time.sleep(0.05)
    return process


def write_config(tmp_path, tiny_model_dir, data_dir, out):
    raw = base_config(tiny_model_dir, data_dir, out, max_steps=6, save_strategy="steps", save_steps=3,
                      logging_steps=3)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return config


def test_a_second_run_on_a_folder_in_use_exits_2_and_the_first_is_unharmed(tmp_path, tiny_model_dir, data_dir,
                                                                          capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path, tiny_model_dir, data_dir, out)
    first = start_gated(tmp_path, config)
    try:
        before = sorted(p.name for p in out.rglob("*"))
        for extra in ([], ["--overwrite"], ["--resume"]):
            capsys.readouterr()
            assert main(["train", str(config), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"error: output_dir: {out} is in use by another manyheads run (pid {first.pid} on host "
                           f"{os.uname().nodename}, started {err[0].split('started ')[1]}"], err
            assert "Wait for it to finish" in err[0]
        assert sorted(p.name for p in out.rglob("*")) == before  # nothing written, nothing deleted
        (tmp_path / "go").touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert main(["train", str(config), "--output_dir", str(tmp_path / "lone")]) == 0
    assert_same_weights(out, tmp_path / "lone")


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, tiny_model_dir, data_dir):
    out = tmp_path / "run"
    config = write_config(tmp_path, tiny_model_dir, data_dir, out)
    first = start_gated(tmp_path, config)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (out / ".manyheads.lock").is_file()  # left behind, but no process holds it any more
    assert main(["train", str(config), "--overwrite"]) == 0


def test_the_lock_in_python(tmp_path):
    with OutputLock(str(tmp_path / "out")):
        with pytest.raises(ValueError, match=f"pid {os.getpid()} on host"):
            OutputLock(str(tmp_path / "out")).acquire()
    with OutputLock(str(tmp_path / "out")):  # released on exit: taken again
        pass
