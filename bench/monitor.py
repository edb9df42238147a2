"""Update monitor overhead: optimizer-step time with the monitor at its defaults vs without it, and vs cloning
every parameter at every step (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/monitor.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as bc

OFF, MONITOR, CLONE = "off", "monitor", "clone every step"
SETUPS = (OFF, MONITOR, CLONE)
TARGET = 0.005  # the monitor's overhead at its defaults, as a fraction of the step time
HOOKS = ("on_pre_optimizer_step", "on_optimizer_step", "on_step_end")
QUICK = {"steps": 4, "logging_steps": 2, "samples_per_task": 32, "batch_size": 8, "max_length": 32, "rounds": 1,
         "warmup_steps": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders <task>/train.tsv")
    bc.add_run_arguments(parser, ["sst2", "mrpc", "stsb"], 512, 32)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run")
    parser.add_argument("--logging_steps", type=bc.positive, default=50,
                        help="logging interval of every set-up (examples/glue.yaml's), and so the monitor's default "
                             "interval")
    parser.add_argument("--rounds", type=bc.positive, default=3, help="timed runs of each set-up")
    parser.add_argument("--warmup_steps", type=bc.positive, default=2,
                        help="steps of the untimed warm-up run of each set-up")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    args.tasks = list(dict.fromkeys(args.tasks))
    if args.steps < 3:
        parser.error("--steps must be >= 3")
    bc.require_files(parser, args.data_dir, [Path(bc.GLUE[t].folder) / bc.GLUE[t].train for t in args.tasks])
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
class Timing:
    per_step: float  # mean seconds per optimizer step over steps 2..S
    hook_per_step: float  # seconds per step inside the set-up's own callback hooks (0 for `off`)
    measured: int  # measurements the set-up's callback took


def timed_run(ctx: bc.TimedRuns, setup: str, steps: int) -> Timing:
    """One fresh run of `setup`."""
    from manyheads.callbacks import UpdateMonitorCallback

    extra = {OFF: None, MONITOR: UpdateMonitorCallback(), CLONE: clone_every_step()}[setup]
    run = ctx.recipe(steps, setup.replace(" ", "_"), logging_steps=ctx.args.logging_steps)
    times, _ = ctx.train(run, [time_hooks(extra)] if extra is not None else [])
    return Timing(per_step=bc.mean_step(times), hook_per_step=getattr(extra, "hook_seconds", 0.0) / steps,
                  measured=len(extra.history) if setup == MONITOR else getattr(extra, "measured", 0))


@dataclass
class Results:
    runs: dict[str, list[Timing]] = field(default_factory=lambda: {s: [] for s in SETUPS})
    ab: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETUPS if s != OFF})
    in_hooks: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SETUPS if s != OFF})


def run_rounds(ctx: bc.TimedRuns) -> Results:
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


def report(ctx: bc.TimedRuns, results: Results, invocation: bc.Invocation) -> str:
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
        *invocation.header("update monitor: step time with the monitor at its defaults, without it, and cloning "
                           "every step"),
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
    invocation = bc.Invocation.of("monitor.py", argv)
    bc.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-") as workdir:
        ctx = bc.TimedRuns(args, workdir).prepare()
        print(f"timing {', '.join(SETUPS)} x {args.rounds} rounds, {args.steps} steps of {args.batch_size} rows on "
              f"{', '.join(args.tasks)}", flush=True)
        results = run_rounds(ctx)
    bc.publish(args, report(ctx, results, invocation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
