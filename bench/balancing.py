"""Balancing overhead: step time and peak memory of every loss weighting and gradient aggregator vs `equal`
(not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/balancing.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as bc

REFERENCE = "equal"
WARMUP = ("equal", "upgrad")
QUICK = {"samples_per_task": 16, "batch_size": 8, "max_length": 32, "rounds": 1, "memory_steps": 1,
         "memory_methods": ["equal", "upgrad"]}
# Method kwargs the benchmark sets. dwa: a short period, so that its weight update runs within a short run
# (its default period of 50 steps would never end here); static: unequal weights, so that it is not `equal`.
KWARGS = {"dwa": {"period": 2}}
STATIC_WEIGHTS = (2.0, 1.0, 0.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders <task>/train.tsv")
    bc.add_run_arguments(parser, ["sst2", "mrpc", "stsb"], 160, 16)
    parser.add_argument("--rounds", type=bc.positive, default=3, help="timed runs of each method")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to time (default: every weighting and aggregator of manyheads.balancing)")
    parser.add_argument("--memory_steps", type=bc.positive, default=3, help="optimizer steps of each memory subprocess")
    parser.add_argument("--memory_methods", nargs="+", default=None,
                        help="methods whose peak memory is measured (default: every timed method)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory subprocesses")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    if len(set(args.tasks)) < 2:
        parser.error("--tasks: gradient aggregators need at least 2 distinct tasks")
    args.tasks = list(dict.fromkeys(args.tasks))
    if args.samples_per_task < 2 * args.batch_size or args.batch_size < 1:
        parser.error("--samples_per_task must be >= 2 x --batch_size (a run needs >= 2 optimizer steps)")
    from manyheads.balancing import AGGREGATORS, WEIGHTINGS

    known = [*WEIGHTINGS, *AGGREGATORS]
    args.methods = list(dict.fromkeys([REFERENCE, *(args.methods or known)]))
    memory = args.memory_methods or args.methods
    unknown = [m for m in dict.fromkeys([*args.methods, *memory]) if m not in known]
    if unknown:
        parser.error(f"--methods / --memory_methods: unknown {unknown}; valid: {', '.join(known)}")
    # Only timed methods have a row in the table to hold their memory.
    args.memory_methods = [] if args.no_memory else [m for m in args.methods if m in memory]
    bc.require_files(parser, args.data_dir, [Path(bc.GLUE[t].folder) / bc.GLUE[t].train for t in args.tasks])
    return args


# ----- methods and runs -----
def family(method: str) -> str:
    from manyheads.balancing import WEIGHTINGS

    return "weighting" if method in WEIGHTINGS else "aggregator"


def balancing_fields(method: str, tasks: list[str]) -> dict[str, Any]:
    if family(method) == "aggregator":
        return {"gradient_aggregator": method, "gradient_aggregator_kwargs": KWARGS.get(method, {})}
    weights = {t: STATIC_WEIGHTS[i % len(STATIC_WEIGHTS)] for i, t in enumerate(tasks)} if method == "static" else None
    return {"loss_weighting": method, "loss_weighting_kwargs": KWARGS.get(method, {}), "task_weights": weights}


def steps_of(method: str, args: argparse.Namespace) -> int:
    """Optimizer steps that show every row once: all micro-batches, one (weighting) or K (aggregator) a step."""
    per_task = math.ceil(args.samples_per_task / args.batch_size)
    return per_task if family(method) == "aggregator" else per_task * len(args.tasks)


def check_same_micro_batches(sizes: dict[str, int], batch_size: int, seed: int) -> bool:
    """Do one epoch of one-task batches and one epoch of task groups hold the same row sets?"""
    from manyheads.data.samplers import MultiTaskBatchSampler, TaskGroupBatchSampler

    single = MultiTaskBatchSampler(sizes, batch_size, seed=seed).schedule(0)
    groups = TaskGroupBatchSampler(sizes, batch_size, seed=seed).schedule(0)
    one = sorted((task, sorted(rows)) for task, rows in single)
    other = sorted((task, sorted(rows)) for step in groups for task, rows in step)
    return one == other


def timed_run(ctx: bc.TimedRuns, method: str, steps: int | None = None) -> tuple[float, float]:
    """(mean seconds per optimizer step over steps 2..S, train_loss) of one fresh run of `method`."""
    run = ctx.recipe(steps or steps_of(method, ctx.args), method, **balancing_fields(method, ctx.args.tasks))
    times, output = ctx.train(run)
    return bc.mean_step(times), float(output.metrics.get("train_loss", float("nan")))


@dataclass
class Results:
    per_step: dict[str, list[float]] = field(default_factory=dict)  # method -> seconds per optimizer step
    ratios: dict[str, list[float]] = field(default_factory=dict)  # method -> per-round ratio vs equal (per step)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    same_batches: bool = False


def run_rounds(ctx: bc.TimedRuns) -> Results:
    args = ctx.args
    for method in WARMUP:
        if method in args.methods:
            timed_run(ctx, method, steps=2)
    results = Results()
    others = [m for m in args.methods if m != REFERENCE]

    def one(method: str, label: str) -> float:
        per_step, loss = timed_run(ctx, method)
        results.per_step.setdefault(method, []).append(per_step)
        print(f"  {label} {method:12s}: {per_step:7.3f} s/step, train_loss {loss:.4f}", flush=True)
        return per_step

    reference = one(REFERENCE, "round 1")
    for r in range(args.rounds):
        shift = r % len(others) if others else 0
        times = {m: one(m, f"round {r + 1}") for m in others[shift:] + others[:shift]}
        closing = one(REFERENCE, f"round {r + 1}")
        bracket = (reference + closing) / 2
        for method, t in times.items():
            results.ratios.setdefault(method, []).append(t / bracket)
        reference = closing
    return results


# ----- peak memory -----
def memory_probe(spec_path: str) -> int:
    """Subprocess body: data and model (the baseline), then a few optimizer steps of one method."""
    import torch

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    bc.quiet_libraries()
    ctx = bc.TimedRuns(argparse.Namespace(**spec["args"]), spec["workdir"]).prepare(write=False)
    baseline = bc.max_rss_mb()
    method = spec["method"]
    ctx.train(ctx.recipe(spec["steps"], f"memory-{method}", **balancing_fields(method, ctx.args.tasks)))
    out = {"baseline_mb": baseline, "peak_mb": bc.max_rss_mb()}
    if torch.cuda.is_available():
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return 0


def measure_memory(ctx: bc.TimedRuns, method: str) -> dict[str, float]:
    args = ctx.args
    spec = {"method": method, "workdir": ctx.workdir, "steps": min(args.memory_steps, steps_of(method, args)),
            "args": {k: getattr(args, k) for k in ("model", "tasks", "max_length", "batch_size", "seed", "bf16")}}
    return bc.run_probe(__file__, spec, ctx.workdir, f"memory-{method}")


# ----- report -----
def report(ctx: bc.TimedRuns, results: Results, invocation: bc.Invocation) -> str:
    args = ctx.args
    k, b = len(args.tasks), args.batch_size
    rows = [
        "| method | family | one optimizer step | s / optimizer step | ms / micro-batch | ms / example | "
        "**× equal, per micro-batch** | × equal, per optimizer step | peak RSS MB (above baseline) | "
        "runs (s / step) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method in args.methods:
        micro = k if family(method) == "aggregator" else 1
        per_step = statistics.median(results.per_step[method])
        if method == REFERENCE:
            step_ratio, batch_ratio = 1.0, 1.0
        else:
            step_ratio = statistics.median(results.ratios[method])
            batch_ratio = step_ratio / micro  # equal's step is one micro-batch
        memory = results.memory.get(method)
        mem = f"{memory['peak_mb']:.0f} ({memory['peak_mb'] - memory['baseline_mb']:+.0f})" if memory else "-"
        if memory and "gpu_peak_mb" in memory:
            mem += f"; CUDA {memory['gpu_peak_mb']:.0f}"
        rows.append(f"| {method} | {family(method)} | {micro} × {b} rows | {per_step:.3f} | "
                    f"{1000 * per_step / micro:.1f} | {1000 * per_step / (micro * b):.2f} | **{batch_ratio:.2f}** | "
                    f"{step_ratio:.2f} | {mem} | {len(results.per_step[method])}: "
                    f"{bc.ratio_text(results.per_step[method])} |")
    drift = results.per_step[REFERENCE]
    settings = (f"model `{args.model}`, tasks {', '.join(args.tasks)} ({args.samples_per_task} rows each, a fixed "
                f"random subset), micro-batch {b} rows, max_length {args.max_length}, "
                f"{'bf16' if args.bf16 else 'fp32'}, seed {args.seed}; every run sees every row once: weightings "
                f"{steps_of(REFERENCE, args)} steps of 1 micro-batch, aggregators "
                f"{math.ceil(args.samples_per_task / b)} steps of {k} micro-batches (one per task); method kwargs "
                f"set here: {json.dumps(KWARGS)}, static weights {STATIC_WEIGHTS[:k]}; {args.rounds} rounds")
    lines = [
        *invocation.header(f"balancing: step time and peak memory of each method vs equal ({k} tasks)"),
        f"- settings: {settings}",
        "",
        *rows,
        "",
        "- time per optimizer step: mean interval between consecutive step ends, steps 2..S of a run; median over "
        "rounds. An aggregator's optimizer step holds one micro-batch of EACH task (K times a weighting's step), "
        "so compare **per micro-batch** (all micro-batches hold the same rows in both families: "
        f"{'checked, identical row sets' if results.same_batches else '**NOT identical: compare with care**'}).",
        "- × equal: per round, the method's time divided by the mean of the two `equal` runs bracketing the round "
        "(methods rotate their order each round); median over rounds.",
        f"- drift check, `equal` s / step over its {len(drift)} runs: {bc.ratio_text(drift)} "
        f"(max/min {max(drift) / min(drift):.2f})",
    ]
    if results.memory:
        lines.append("- peak memory: peak RSS (VmHWM on Linux) of a fresh subprocess per method after "
                     f"{args.memory_steps} optimizer steps; in brackets the part above its baseline (data loaded, "
                     "model built, before the trainer): gradients, optimizer state, activations, method buffers.")
    else:
        lines.append("- peak memory: not measured")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("balancing.py", argv)
    bc.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-") as workdir:
        ctx = bc.TimedRuns(args, workdir).prepare()
        sizes = {t: len(ctx.prepared.train[t]) for t in args.tasks}
        print(f"timing {len(args.methods)} methods x {args.rounds} rounds on {', '.join(args.tasks)} "
              f"({args.samples_per_task} rows each, micro-batch {args.batch_size})", flush=True)
        results = run_rounds(ctx)
        results.same_batches = check_same_micro_batches(sizes, args.batch_size, args.seed)
        if args.memory_methods:
            for method in args.memory_methods:
                results.memory[method] = measure_memory(ctx, method)
                print(f"  memory {method:12s}: peak RSS {results.memory[method]['peak_mb']:.0f} MB "
                      f"(baseline {results.memory[method]['baseline_mb']:.0f} MB)", flush=True)
    bc.publish(args, report(ctx, results, invocation))
    return 0


if __name__ == "__main__":
    bc.script_main(main, memory_probe)
