"""`manyheads compare`: does multi-task help here? The recipe's multi-task model against each task alone.

```python
from manyheads.recipe.compare import plan_comparison, run_comparison
comparison = plan_comparison("cfg.yaml", ["--max_steps", "200"], seeds=[1, 2, 3], output_dir="runs/cfg-compare")
summary = run_comparison(comparison, jobs=2)     # also writes compare.json and compare.md there
```

Each run (see `compare_plan` for the plan and the equal-examples rule) is an ordinary `manyheads train` in its own
process and folder, `<output_dir>/<mt | single-TASK | group-TASK+TASK | finetune-TASK>/seed-N/`, with its config
(`compare_run.yaml`) and its output (`train.log`) beside the model. A run counts as finished once
`compare_result.json` is there (written after the process exited 0, from its `eval_results.json`). Running the same
command again skips finished runs, resumes a run from its newest complete checkpoint before its last step
(`manyheads train --resume PATH`), and trains a run that has none from the start (`--overwrite`, which clears what
an interrupted attempt left). A folder that holds a comparison of another config, other seeds, other data, other
groups or another fine-tune budget is refused. A fine-tune run starts only once its multi-task run has finished
(also with `jobs > 1`), and is not started when that run failed.

SIGTERM (a scheduler's preemption) is passed on to the runs in progress, which save a checkpoint and stop;
the comparison then exits 143 and continues where it stopped when it is run again. The runs' processes die with
the comparison's however it dies (SIGKILL included, on Linux), and a run folder that a live `manyheads train`
still holds is waited for (`RUN_LOCK_WAIT_SECONDS`), then refused before anything is written into it.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from ..callbacks.best_heads import BEST_FILE
from ..errors import ConfigError, RunStopped
from ..tasks import higher_is_better, main_metric_of
from ..training.checkpoints import checkpoints, is_complete
from ..training.output_lock import OutputLock, check_not_locked
from ..training.preemption import PREEMPTED_EXIT_CODE, Preemption
from .compare_plan import (
    LOG_FILE,
    RESULT_FILE,
    RUN_CONFIG_FILE,
    Comparison,
    PlannedRun,
    check_folder,
    plan_comparison,
    write_json,
    write_plan,
)
from .compare_summary import read_result, write_summary

__all__ = ["plan_comparison", "read_result", "run_comparison", "stored_parameters", "write_summary"]

POLL_SECONDS = 0.2
# How long a rerun waits for a run folder that a training process still holds (one dying with a killed
# comparison releases it within moments) before refusing it.
RUN_LOCK_WAIT_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


# Runs `manyheads train ARGS` in this process, its output going to the log; returns the exit code.
TrainHere = Callable[[list[str], IO[str]], int]


@dataclass
class _Attempt:
    """One attempt at a run: `manyheads train` with the run's config, resuming or starting over."""

    planned: PlannedRun
    argv: list[str]  # the arguments of `manyheads`
    log: IO[str]
    started: float
    resumed_from: str | None
    process: subprocess.Popen | None = None


def stored_parameters(folder: Path) -> int:
    """Parameters in the safetensors files of a saved model folder (read from their headers, not loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def _write_result(comparison: Comparison, planned: PlannedRun, seconds: float, resumed_from: str | None
                  ) -> dict[str, Any]:
    folder = comparison.folder(planned)
    metrics = json.loads((folder / "eval_results.json").read_text(encoding="utf-8"))
    tasks = {name: comparison.run.task(name) for name in planned.tasks}
    names = {name: main_metric_of(task) for name, task in tasks.items()}
    result = {"run": planned.name, "kind": planned.kind, "seed": planned.seed, "tasks": planned.tasks,
              "main_metric": names,
              "greater_is_better": {n: higher_is_better(tasks[n], m) for n, m in names.items()},
              "main": {n: float(metrics[f"eval_{n}_{m}"]) for n, m in names.items()},
              "metrics": metrics, "examples": planned.examples, "max_steps": planned.max_steps,
              "parameters": stored_parameters(folder), "seconds": round(seconds, 1), "resumed_from": resumed_from}
    if (folder / BEST_FILE).is_file():  # best_head_per_task: the step each task's head (fine-tuned: model) is from
        heads = json.loads((folder / BEST_FILE).read_text(encoding="utf-8"))["heads"]
        result["best_steps"] = {task: entry["step"] for entry in heads.values() for task in entry["tasks"]}
    write_json(folder / RESULT_FILE, result)
    return result


def _scores(result: dict[str, Any]) -> str:
    main = result["main"]
    if len(main) == 1:
        (task, value), = main.items()
        return f"{result['main_metric'][task]} {value:.4g}"
    return ", ".join(f"{task} {result['main_metric'][task]} {value:.4g}" for task, value in main.items())


def _child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        # Side-by-side runs share the cores; more threads than cores each would make all of them slower.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when this process dies (Linux; None elsewhere).

    Without it a comparison killed outright (SIGKILL, out of memory) leaves its runs training as orphans, and a
    rerun would train the same runs beside them. The child's signal survives `exec`.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nothing would signal this child
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _check_run_folders_free(comparison: Comparison, todo: list[PlannedRun]) -> None:
    """Refuse, before any run starts, a run folder that a live training still holds (e.g. one left by an earlier
    comparison), after giving a dying one `RUN_LOCK_WAIT_SECONDS` to go."""
    for planned in todo:
        try:
            check_not_locked(str(comparison.folder(planned)), wait=RUN_LOCK_WAIT_SECONDS)
        except ConfigError as err:
            raise ConfigError(err.details, where=planned.label) from None


def _resumable_checkpoint(folder: Path, max_steps: int) -> str | None:
    """The newest complete checkpoint before the run's last step, with the checkpoints after it removed; None
    when there is none.

    A checkpoint of the last step is passed over: `Trainer` resumed there trains one step more than `max_steps`
    (it checks the step count only after a step), which would break the equal-examples budget. Resuming from
    the checkpoint before it repeats the last steps exactly instead. Later checkpoints are removed so that
    the resumed run, which saves them again, never writes into a folder that already has a completeness marker.
    """
    found = [(int(os.path.basename(c).split("-")[1]), c) for c in checkpoints(str(folder))]
    usable = [(step, path) for step, path in found if step < max_steps and is_complete(path)]
    if not usable:
        return None
    step, path = usable[-1]
    for later, other in found:
        if later > step:
            shutil.rmtree(other)
    return path


def _prepare(comparison: Comparison, planned: PlannedRun) -> _Attempt:
    """Write the run's config into its folder and choose: resume from its newest complete checkpoint, or start
    over (`--overwrite` clears what an attempt without a complete checkpoint left)."""
    folder = comparison.folder(planned)
    config = {**planned.config, "output_dir": str(folder.resolve())}
    if planned.starts_from:  # a fine-tune run: the finished run's saved model
        config["init_from"] = str((comparison.output_dir / planned.starts_from).resolve())
    config_file = folder / RUN_CONFIG_FILE
    # Held while the folder is changed (checkpoints removed): no training may be writing there meanwhile. The run
    # itself (`manyheads train`) takes the lock again once this is released.
    lock = OutputLock(str(folder), wait=RUN_LOCK_WAIT_SECONDS)
    try:
        lock.acquire()
    except ConfigError as err:
        raise ConfigError(err.details, where=planned.label) from None
    try:
        config_file.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        checkpoint = _resumable_checkpoint(folder, planned.max_steps)
        argv = ["train", str(config_file), *(["--resume", checkpoint] if checkpoint else ["--overwrite"])]
        log = open(folder / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed when the attempt ends)
        log.write(f"\n$ manyheads {' '.join(argv)}\n")
        log.flush()
    finally:
        lock.release()
    return _Attempt(planned, argv, log, time.monotonic(), os.path.basename(checkpoint) if checkpoint else None)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in kept)


def _stop(running: list[_Attempt], signum: int) -> None:
    """Pass the stop on to the runs in progress and wait for them (each saves a checkpoint on SIGTERM)."""
    for attempt in running:
        if attempt.process.poll() is None:
            attempt.process.send_signal(signum)
    for attempt in running:
        attempt.process.wait()
        attempt.log.close()


def _stopped(comparison: Comparison) -> RunStopped:
    return RunStopped(f"SIGTERM received; runs in progress saved a checkpoint in their folders under "
                      f"{comparison.output_dir}. Run the same command again to continue.",
                      exit_code=PREEMPTED_EXIT_CODE, prefix="preempted")


class _Progress:
    """The `[k/N] run seed s: ...` lines."""

    def __init__(self, comparison: Comparison, echo: Callable[[str], None]):
        self.comparison, self.echo = comparison, echo
        self.total, self.finished, self.failed = len(comparison.runs), 0, []

    def earlier(self, planned: PlannedRun, result: dict[str, Any]) -> None:
        self.finished += 1
        self.echo(f"[{self.finished}/{self.total}] {planned.label}: finished earlier ({_scores(result)})")

    def blocked(self, planned: PlannedRun) -> None:
        """A run not started because the run it starts from did not finish."""
        self.failed.append(planned)
        self.echo(f"[-/{self.total}] {planned.label}: not started: {planned.starts_from} did not finish")

    def started(self, attempt: _Attempt) -> None:
        how = f"resuming from {attempt.resumed_from}" if attempt.resumed_from else "training"
        self.echo(f"      {attempt.planned.label}: {how}")

    def ended(self, attempt: _Attempt, code: int) -> None:
        """Write the result of a run that ended with exit code `code`, and say how it went."""
        attempt.log.close()
        seconds = time.monotonic() - attempt.started
        log = self.comparison.folder(attempt.planned) / LOG_FILE
        if code != 0:
            self.failed.append(attempt.planned)
            self.echo(f"[-/{self.total}] {attempt.planned.label}: FAILED (exit code {code}); log: {log}\n{_tail(log)}")
            return
        result = _write_result(self.comparison, attempt.planned, seconds, attempt.resumed_from)
        self.finished += 1
        self.echo(f"[{self.finished}/{self.total}] {attempt.planned.label}: done in {seconds:.0f} s "
                  f"({_scores(result)})")


def _next_ready(comparison: Comparison, todo: list[PlannedRun], progress: _Progress, running: bool
                ) -> PlannedRun | None:
    """Take from `todo` the first run that may start: one that starts from no other run, or whose run has
    finished (a fine-tune run after its multi-task run). A run whose run failed is not started (it fails too); a
    run whose run is still training waits (None when every remaining run waits)."""
    failed = {p.key for p in progress.failed}
    for planned in list(todo):
        after = planned.starts_from
        if after is None or read_result(comparison.output_dir / after) is not None:
            todo.remove(planned)
            return planned
        if after in failed or not (running or any(p.key == after for p in todo)):
            todo.remove(planned)
            progress.blocked(planned)
            failed.add(planned.key)
    return None


def _train_in_turn(comparison: Comparison, todo: list[PlannedRun], progress: _Progress, train_here: TrainHere,
                   preemption: Preemption) -> None:
    while (planned := _next_ready(comparison, todo, progress, running=False)) is not None:
        if preemption.requested:
            raise _stopped(comparison)
        attempt = _prepare(comparison, planned)
        progress.started(attempt)
        code = train_here(attempt.argv, attempt.log)
        if code == PREEMPTED_EXIT_CODE:  # the run's own SIGTERM handling saved a checkpoint
            attempt.log.close()
            raise _stopped(comparison)
        progress.ended(attempt, code)


def _train_side_by_side(comparison: Comparison, todo: list[PlannedRun], progress: _Progress, jobs: int,
                        preemption: Preemption) -> None:
    env, running, die_with_parent = _child_env(jobs), [], _die_with_parent()
    try:
        while todo or running:
            while todo and len(running) < jobs and not preemption.requested:
                planned = _next_ready(comparison, todo, progress, running=bool(running))
                if planned is None:
                    break
                attempt = _prepare(comparison, planned)
                attempt.process = subprocess.Popen([sys.executable, "-m", "manyheads.cli.main", *attempt.argv],
                                                   stdout=attempt.log, stderr=subprocess.STDOUT, env=env,
                                                   preexec_fn=die_with_parent)
                progress.started(attempt)
                running.append(attempt)
            if preemption.requested:
                _stop(running, signal.SIGTERM)
                running.clear()
                raise _stopped(comparison)
            time.sleep(POLL_SECONDS)
            for attempt in [a for a in running if a.process.poll() is not None]:
                running.remove(attempt)
                progress.ended(attempt, attempt.process.returncode)
    except KeyboardInterrupt:
        _stop(running, signal.SIGINT)
        raise
    except BaseException:
        # Any other way out (a run folder refused, a bug) must not leave runs training unwatched: SIGTERM makes
        # them save a checkpoint and stop, so that a rerun resumes them.
        _stop(running, signal.SIGTERM)
        raise


def run_comparison(comparison: Comparison, jobs: int = 1, echo: Callable[[str], None] = print,
                   train_here: TrainHere | None = None) -> dict[str, Any]:
    """Train what is missing, then write `compare.json` and `compare.md`.

    Args:
        comparison: from `plan_comparison`.
        jobs: runs trained side by side, each in its own process (`python -m manyheads.cli.main train ...`).
        echo: where the progress lines go.
        train_here: with `jobs=1`, runs `manyheads train` in this process instead (no interpreter start-up per
            run; `manyheads compare` passes its own command line's entry point).

    Returns:
        The summary written to `compare.json` (see `compare_table.summarize`).

    Raises:
        ConfigError: the output folder holds another comparison (see `compare_plan.check_folder`), or another
            `manyheads compare` is running there.
        RunStopped: some runs failed (exit code 1; the others are kept), or SIGTERM stopped the comparison (143).
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs}; it must be >= 1")
    if not check_folder(comparison):
        write_plan(comparison)
    # One comparison per folder at a time: a second one would start the same runs (each `train` locks its run).
    with OutputLock(str(comparison.output_dir)):
        _train_missing(comparison, jobs, echo, train_here)
    return write_summary(comparison)


def _train_missing(comparison: Comparison, jobs: int, echo: Callable[[str], None], train_here: TrainHere | None
                   ) -> None:
    progress = _Progress(comparison, echo)
    todo = []
    for planned in comparison.runs:
        result = read_result(comparison.folder(planned))
        if result is None:
            todo.append(planned)
        else:
            progress.earlier(planned, result)
    if todo:
        at_once = "one at a time" if jobs == 1 or len(todo) == 1 else f"{min(jobs, len(todo))} at a time"
        echo(f"{len(todo)} of {progress.total} runs to train, {at_once}; the output of each goes to {LOG_FILE} in "
             f"its folder under {comparison.output_dir}")
    _check_run_folders_free(comparison, todo)
    with Preemption() as preemption:
        if jobs == 1 and train_here is not None:
            _train_in_turn(comparison, todo, progress, train_here, preemption)
        else:
            _train_side_by_side(comparison, todo, progress, jobs, preemption)
    if progress.failed:
        raise RunStopped(f"{len(progress.failed)} of {progress.total} runs failed "
                         f"({', '.join(p.label for p in progress.failed)}); see the {LOG_FILE} in their folders. Run "
                         "the same command again to retry them; finished runs are kept.", exit_code=1)
