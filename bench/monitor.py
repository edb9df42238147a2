"""Update monitor overhead: optimizer-step time with the monitor at its defaults vs without it, and vs cloning
every parameter at every step (not a test).

What is measured
    The mean time per optimizer step of three set-ups training the same MiniLM multi-task model on the same
    GLUE rows (fp32 unless --bf16), in one process:

    - off: no diagnostics;
    - monitor: `UpdateMonitorCallback()` at its defaults: it measures every logging step (--logging_steps), taking
      a CPU copy of the trainable parameters only at those steps and dropping it right after the update;
    - clone every step: the approach the monitor avoids: a full copy of every parameter kept on the model's
      device between steps, and every step's update norms computed from it.

    Logging happens every --logging_steps in all three set-ups, so its own cost cancels out. Two overheads are
    reported: the step time of each set-up over `off` (A/B, subject to load noise), and the time spent inside
    the set-up's own callback hooks per step over `off`'s step time (precise: the monitor does nothing outside
    its hooks). The verdict, target <= 0.5% for the monitor at its defaults, uses the in-hook figure; the A/B
    figure corroborates it when the machine is quiet.

How
    Each run is a fresh trainer on a copy of the same initial weights, for --steps optimizer steps; the time per
    step is the mean interval between consecutive step ends over steps 2..S (the measured steps included). One
    untimed warm-up run of each set-up comes first. Then --rounds rounds run every set-up once, in an order that
    rotates each round, so that load drift on a shared machine spreads over all set-ups; each overhead is taken
    against the `off` run of the same round, and medians over rounds are reported.

Run from the repository root (see bench/README.md):

    HF_HUB_OFFLINE=1 python bench/monitor.py --data_dir ../shared/data

Results are appended to bench/RESULTS.md (unless --no_write; --quick smoke runs go to bench/out/).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    GLUE,
    add_common_arguments,
    command_line,
    glue_task_config,
    header_lines,
    now,
    parse_with_presets,
    publish,
    quiet_libraries,
    require_files,
    step_timer,
    training_fields,
    write_glue_subset,
)

OFF, MONITOR, CLONE = "off", "monitor", "clone every step"
SETUPS = (OFF, MONITOR, CLONE)
TARGET = 0.005  # the monitor's overhead at its defaults, as a fraction of the step time
HOOKS = ("on_pre_optimizer_step", "on_optimizer_step", "on_step_end")
QUICK = {"steps": 4, "logging_steps": 2, "samples_per_task": 32, "batch_size": 8, "max_length": 32, "rounds": 1,
         "warmup_steps": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "the GLUE folders <task>/train.tsv")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "stsb"], choices=list(GLUE))
    parser.add_argument("--samples_per_task", type=int, default=512, help="training rows per task (fixed subset)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run")
    parser.add_argument("--logging_steps", type=int, default=50,
                        help="logging interval of every set-up (examples/glue.yaml's), and so the monitor's default "
                             "interval")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each set-up")
    parser.add_argument("--warmup_steps", type=int, default=2, help="steps of the untimed warm-up run of each set-up")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default fp32)")
    args = parse_with_presets(parser, argv, {"quick": QUICK})
    args.tasks = list(dict.fromkeys(args.tasks))
    if args.steps < 3 or args.logging_steps < 1 or args.rounds < 1 or args.warmup_steps < 1:
        parser.error("--steps must be >= 3; --logging_steps, --rounds and --warmup_steps >= 1")
    require_files(parser, args.data_dir, [Path(GLUE[t].folder) / GLUE[t].train for t in args.tasks])
    return args


# ----- set-ups -----
def clone_every_step() -> Any:
    """The naive monitor: keeps a copy of every parameter between steps and diffs it at every step."""
    import torch
    from transformers import TrainerCallback

    class CloneEveryStep(TrainerCallback):
        def __init__(self) -> None:
            self.previous: list[torch.Tensor] = []
            self.measured = 0

        @torch.no_grad()
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            params = list(model.parameters())
            if self.previous:
                norms = torch.stack([torch.linalg.vector_norm(p - q) for p, q in zip(params, self.previous)])
                norms.tolist()  # one host sync, as a real monitor must read the numbers
                self.measured += 1
            self.previous = [p.detach().clone() for p in params]

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self.previous = [p.detach().clone() for p in model.parameters()]

    return CloneEveryStep()


def time_hooks(callback: Any) -> Any:
    """Wrap the callback's per-step hooks to add their wall time to `callback.hook_seconds`."""
    callback.hook_seconds = 0.0
    for name in HOOKS:
        original = getattr(callback, name)

        def wrapped(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                callback.hook_seconds += time.perf_counter() - start

        setattr(callback, name, wrapped)
    return callback


@dataclass
class Context:
    args: argparse.Namespace
    data_dir: str
    output_dir: str
    prepared: Any = None
    model: Any = None  # MultiTaskModel, initial weights (never trained)


def run_config(ctx: Context, steps: int, output_dir: str) -> Any:
    from manyheads.recipe import build_config

    args = ctx.args
    training = training_fields(output_dir, args.batch_size, steps, args.seed, args.bf16)
    training["logging_steps"] = args.logging_steps
    return build_config({"model": args.model, "data_dir": ctx.data_dir, "max_length": args.max_length,
                         "tasks": [glue_task_config(t, with_eval=False) for t in args.tasks], "training": training})


@dataclass
class Timing:
    per_step: float  # mean seconds per optimizer step over steps 2..S
    hook_per_step: float  # seconds per step inside the set-up's own callback hooks (0 for `off`)
    measured: int  # measurements the set-up's callback took


def timed_run(ctx: Context, setup: str, steps: int) -> Timing:
    """One fresh run of `setup`."""
    from transformers import PrinterCallback

    from manyheads.callbacks import UpdateMonitorCallback
    from manyheads.recipe import build_trainer

    run = run_config(ctx, steps, os.path.join(ctx.output_dir, setup.replace(" ", "_")))
    trainer = build_trainer(run, ctx.prepared, model=copy.deepcopy(ctx.model))
    trainer.remove_callback(PrinterCallback)
    extra = {OFF: None, MONITOR: UpdateMonitorCallback(), CLONE: clone_every_step()}[setup]
    timer = step_timer()
    if extra is not None:
        trainer.add_callback(time_hooks(extra))
    trainer.add_callback(timer)
    trainer.train()
    ends = timer.ends
    if len(ends) != steps:
        raise SystemExit(f"{setup}: {len(ends)} optimizer steps ran, {steps} expected")
    timing = Timing(per_step=(ends[-1] - ends[0]) / (len(ends) - 1),
                    hook_per_step=getattr(extra, "hook_seconds", 0.0) / steps,
                    measured=len(extra.history) if setup == MONITOR else getattr(extra, "measured", 0))
    del trainer
    gc.collect()
    return timing


@dataclass
class Results:
    runs: dict[str, list[Timing]] = field(default_factory=lambda: {s: [] for s in SETUPS})
    ab: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETUPS if s != OFF})
    in_hooks: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETUPS if s != OFF})


def run_rounds(ctx: Context) -> Results:
    for setup in SETUPS:
        timed_run(ctx, setup, max(3, ctx.args.warmup_steps))
    results = Results()
    for round_ in range(ctx.args.rounds):
        order = SETUPS[round_ % len(SETUPS):] + SETUPS[:round_ % len(SETUPS)]
        times = {}
        for setup in order:
            times[setup] = timing = timed_run(ctx, setup, ctx.args.steps)
            results.runs[setup].append(timing)
            print(f"  round {round_ + 1}/{ctx.args.rounds} {setup:16s}: {timing.per_step:.4f} s/step, "
                  f"{1000 * timing.hook_per_step:.2f} ms/step in its hooks ({timing.measured} measurements)",
                  flush=True)
        for setup in results.ab:
            results.ab[setup].append(times[setup].per_step / times[OFF].per_step - 1)
            results.in_hooks[setup].append(times[setup].hook_per_step / times[OFF].per_step)
    return results


# ----- report -----
def parameter_megabytes(model: Any) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def report(ctx: Context, results: Results, command: str, date: str, load_before: tuple[float, float, float],
           load_after: tuple[float, float, float]) -> str:
    args = ctx.args
    ab = {s: statistics.median(v) for s, v in results.ab.items()}
    in_hooks = {s: statistics.median(v) for s, v in results.in_hooks.items()}
    rows = ["| set-up | s / step (median) | overhead A/B vs off | overhead in its hooks | measurements per run | "
            "runs (s / step) |", "|---|---:|---:|---:|---:|---|"]
    for setup in SETUPS:
        runs = results.runs[setup]
        a_b = "—" if setup == OFF else f"{100 * ab[setup]:+.2f}%"
        hooks = "—" if setup == OFF else f"**{100 * in_hooks[setup]:.2f}%**"
        rows.append(f"| {setup} | {statistics.median(t.per_step for t in runs):.4f} | {a_b} | {hooks} | "
                    f"{runs[-1].measured} | {', '.join(f'{t.per_step:.4f}' for t in runs)} |")
    verdict = "met" if in_hooks[MONITOR] <= TARGET else "not met"
    megabytes = parameter_megabytes(ctx.model)
    settings = (f"model `{args.model}`, tasks {', '.join(args.tasks)} ({args.samples_per_task} rows each, a fixed "
                f"random subset), batch {args.batch_size}, max_length {args.max_length}, "
                f"{'bf16' if args.bf16 else 'fp32'}, seed {args.seed}, {args.steps} steps per run, logging every "
                f"{args.logging_steps} steps (all set-ups), {args.rounds} rounds after one warm-up run of each")
    lines = [
        *header_lines("update monitor: step time with the monitor at its defaults, without it, and cloning every "
                      "step", command, date, load_before, load_after),
        f"- settings: {settings}",
        "",
        *rows,
        "",
        "- s / step: mean interval between consecutive optimizer-step ends over steps 2..S of a run (measured steps "
        "included). A/B: per round, the set-up's s / step over that round's `off` run, minus 1. In its hooks: per "
        "round, the time spent inside the set-up's own callback hooks per step over that round's `off` s / step. "
        "Medians over rounds.",
        f"- target: monitor overhead at its defaults <= {100 * TARGET:.1f}% (in its hooks): **{verdict}** "
        f"({100 * in_hooks[MONITOR]:.2f}%; A/B {100 * ab[MONITOR]:+.2f}%)",
        f"- copy of the parameters: {megabytes:.0f} MB; the monitor holds it on the CPU only between "
        f"`on_pre_optimizer_step` and `on_optimizer_step` of a measured step; the clone-every-step approach holds it "
        "on the model's device all the time.",
    ]
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("monitor.py", argv)
    date = now()
    quiet_libraries()
    from manyheads.recipe import build_model, prepare_data

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-") as workdir:
        ctx = Context(args=args, data_dir=os.path.join(workdir, "data"), output_dir=workdir)
        for task in args.tasks:
            write_glue_subset(args.data_dir, Path(ctx.data_dir), task, "train", args.samples_per_task)
        base = run_config(ctx, args.steps, workdir)
        ctx.prepared = prepare_data(base)
        ctx.model = build_model(base, ctx.prepared.tasks, seed=args.seed)
        print(f"timing {', '.join(SETUPS)} x {args.rounds} rounds, {args.steps} steps of {args.batch_size} rows on "
              f"{', '.join(args.tasks)}", flush=True)
        results = run_rounds(ctx)
    load_after = os.getloadavg()
    publish(args, report(ctx, results, command, date, load_before, load_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
