"""`manyheads compare --jobs N` leaves no orphans: its training processes die with it (SIGKILL included), and a
rerun never works in a run folder that a live training process still holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.recipe.compare import plan_comparison
from manyheads.recipe.compare_plan import write_plan
from manyheads.training.output_lock import OutputLock, check_not_locked

from .test_compare import write_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")


def children_of(parent: int) -> list[int]:
    """The pids whose parent is `parent`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Some thread of the process still runs. A zombie (dead, waiting to be reaped) is gone; a process whose main
    thread is a zombie while its other threads still exit is not (they still hold its files and locks)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for thread in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def locked(folder: Path) -> bool:
    try:
        check_not_locked(str(folder))
    except ConfigError:
        return True
    return False


def test_killing_compare_kills_its_training_processes(tiny_model_dir, tmp_path):
    # Runs far longer than the test: only the kill can end them.
    config = write_config(tmp_path, tiny_model_dir, max_steps=100_000, save_steps=100_000)
    out = tmp_path / "out"
    log = open(tmp_path / "compare.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    parent = subprocess.Popen([sys.executable, "-m", "manyheads.cli.main", "compare", str(config), "--seeds", "1",
                               "--jobs", "2", "--output_dir", str(out)], stdout=log, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 180
        # Running: two training processes, each holding its run folder's lock (past loading the model).
        while not (len(children_of(parent.pid)) == 2 and locked(out / "mt" / "seed-1")
                   and locked(out / "single-sentiment" / "seed-1")):
            assert parent.poll() is None, f"compare exited ({parent.returncode}): {Path(log.name).read_text()}"
            assert time.monotonic() < deadline, f"the runs did not start: {Path(log.name).read_text()}"
            time.sleep(0.2)
        children = children_of(parent.pid)
        assert len(children) == 2, children
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)], "training processes outlived the killed compare"
        # Their locks went with them: a rerun could take the folders at once.
        for folder in (out / "mt" / "seed-1", out / "single-sentiment" / "seed-1"):
            assert not locked(folder), (folder / ".manyheads.lock").read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


def test_a_rerun_refuses_a_run_folder_that_a_live_training_holds(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import manyheads.recipe.compare as compare_module

    monkeypatch.setattr(compare_module, "RUN_LOCK_WAIT_SECONDS", 0.5, raising=False)
    config = write_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    write_plan(plan_comparison(str(config), [], [1], out))  # an earlier compare of this config started here ...
    held = out / "mt" / "seed-1"
    # ... and one of its trainings (here: this process) still holds its run folder.
    with OutputLock(str(held)):
        before = sorted(p.name for p in held.iterdir())
        started = time.monotonic()
        assert main(["compare", str(config), "--seeds", "1", "--output_dir", str(out)]) == 2
        waited = time.monotonic() - started
        after = sorted(p.name for p in held.iterdir())
    error = capsys.readouterr().err
    assert f"{held} is in use by another manyheads run (pid {os.getpid()}" in error, error
    assert after == before  # nothing written into the folder the other process trains in
    assert waited >= 0.5  # it gave a dying holder time to go
    # Nothing of the comparison was trained either: the refusal comes before any run starts.
    assert not (out / "single-sentiment" / "seed-1" / "compare_result.json").exists()


def test_the_lock_waits_for_a_holder_that_goes(tmp_path):
    holder = OutputLock(str(tmp_path))
    holder.acquire()
    threading.Timer(0.3, holder.release).start()
    started = time.monotonic()
    with OutputLock(str(tmp_path), wait=10):
        assert 0.2 < time.monotonic() - started < 10
    holder.acquire()
    try:
        with pytest.raises(ConfigError, match="is in use by another manyheads run"):
            OutputLock(str(tmp_path), wait=0.2).acquire()
    finally:
        holder.release()
