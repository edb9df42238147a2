"""Which tasks help each other? Pairwise transfer measured, against the two cheap predictors (not a test; issue 28).

Ground truth: for the five GLUE tasks, every pair trained together vs each task alone, at equal examples per task
(equal-sized training subsets, proportional sampling, the same epochs: each task sees every one of its rows the
same number of times on both sides), over seeds. transfer(i -> j) = metric_j(i and j together) - metric_j(j
alone), in points, mean over seeds: 20 ordered pairs from 10 pair runs. Predictors, from one five-task run per
seed: (a) TAG lookahead affinity A[i][j] (`TaskAffinityCallback`), (b) the cosine of the task gradients on the
shared encoder (`GradientConflictCallback`, symmetric), both averaged over their measurements and the seeds. The
table gives Spearman's rank correlation and the sign agreement of each predictor with the ground truth over the
20 ordered pairs, and what each cost (seconds inside the callbacks vs seconds of the pair runs).

    python bench/transfer.py --data_dir ../shared/data            # 512 rows per task, 3 epochs, 3 seeds, 2 jobs
    python bench/transfer.py --quick                              # tiny smoke settings

Runs resume: a finished run's result.json in --out is kept. Every number comes from runs of this script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _common as bc

TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders (rte, mrpc, stsb, cola, sst2)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--train_rows", type=bc.positive, default=512, help="training rows of every task")
    parser.add_argument("--eval_rows", type=bc.positive, default=400, help="dev rows of every task (a subset)")
    parser.add_argument("--epochs", type=bc.positive, default=3)
    parser.add_argument("--batch_size", type=bc.positive, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=bc.positive, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--every", type=bc.positive, default=None,
                        help="steps between predictor measurements (default: TaskAffinityCallback's default)")
    parser.add_argument("--out", default=None, help="run folders (default: bench/out/transfer)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.train_rows, args.eval_rows, args.epochs, args.seeds = "tiny", 32, 16, 1, [1, 2]
        args.every = args.every or 2
    args.results = args.results or str(bc.QUICK_RESULTS if args.quick else bc.DEFAULT_RESULTS)
    args.out = args.out or str(bc.OUT_DIR / ("transfer-quick" if args.quick else "transfer"))
    return args


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for seed in args.seeds:
        runs += [{"kind": "single", "tasks": [t], "seed": seed} for t in args.tasks]
        runs += [{"kind": "pair", "tasks": list(p), "seed": seed} for p in itertools.combinations(args.tasks, 2)]
        runs.append({"kind": "probe", "tasks": list(args.tasks), "seed": seed})
    for run in runs:
        run["name"] = f"{run['kind']}-{'+'.join(run['tasks'])}-seed{run['seed']}"
    return runs


def encoder_of(args: argparse.Namespace, workdir: Path) -> str:
    if args.model == "tiny":
        import many_tasks

        return many_tasks.tiny_encoder(workdir / "tiny")
    return args.model or bc.default_model()


def train_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One run in this (worker) process; writes and returns its result."""
    bc.quiet_libraries()
    import torch
    from transformers import PrinterCallback

    from manyheads.callbacks import (
        GradientConflictCallback,
        StalledHeadsCallback,
        TaskAffinityCallback,
        default_every,
        make_probe_batches,
    )
    from manyheads.recipe import build_config, build_trainer

    torch.set_num_threads(1)
    run, folder = spec["run"], Path(spec["folder"])
    steps = spec["epochs"] * len(run["tasks"]) * math.ceil(spec["train_rows"] / spec["batch_size"])
    config = build_config({
        "model": spec["encoder"], "data_dir": spec["data"], "max_length": spec["max_length"],
        "tasks": [bc.glue_task_config(t) for t in run["tasks"]],
        **bc.training_fields(str(folder), spec["batch_size"], steps, run["seed"], False),
        "learning_rate": spec["learning_rate"], "sampling_strategy": "proportional", "warmup_steps": 0.06,
        "per_device_eval_batch_size": 64,
    })
    trainer = build_trainer(config)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(StalledHeadsCallback)  # its warnings would fill the log; the scores are in the table
    timed: dict[str, Any] = {}
    if run["kind"] == "probe":
        every = spec["every"] or default_every(len(run["tasks"]), 16, spec["batch_size"])
        probes = make_probe_batches(trainer.train_dataset.datasets, trainer.data_collator, 16, seed=run["seed"])
        timed = {"affinity": _timed(TaskAffinityCallback)(every=every, start=every),
                 "conflict": _timed(GradientConflictCallback)(probes, every=every)}
        for callback in timed.values():
            trainer.add_callback(callback)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    metrics = trainer.evaluate()
    result: dict[str, Any] = {**run, "steps": steps, "train_s": train_s,
                              "main": {t: metrics[f"eval_{t}_{bc.GLUE_TASKS[t]['main_metric']}"] for t in run["tasks"]}}
    if timed:
        tasks = timed["affinity"].history[0].tasks if timed["affinity"].history else run["tasks"]
        result["affinity"] = {"tasks": tasks, "matrices": [m.matrix for m in timed["affinity"].history]}
        result["cosine"] = {"tasks": timed["conflict"].history[0].tasks if timed["conflict"].history else [],
                            "matrices": [m.cosine for m in timed["conflict"].history]}
        result["seconds"] = {k: c.seconds for k, c in timed.items()}
    (folder / "result.json").write_text(json.dumps(result, default=float), encoding="utf-8")
    return result


def _timed(cls: type) -> type:
    """`cls` with the seconds spent in its `on_step_end` (where both measure) counted."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        seconds = 0.0

        def on_step_end(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return super().on_step_end(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

    return Timed


def mean_matrix(matrices: list[list[list[float | None]]], n: int) -> list[list[float]]:
    cells = [[[m[i][j] for m in matrices if m[i][j] is not None and not math.isnan(m[i][j])] for j in range(n)]
             for i in range(n)]
    return [[statistics.mean(c) if c else math.nan for c in row] for row in cells]


def analyse(args: argparse.Namespace, results: list[dict[str, Any]]) -> list[str]:
    from scipy.stats import spearmanr

    tasks = list(args.tasks)
    single = {(r["tasks"][0], r["seed"]): r["main"][r["tasks"][0]] for r in results if r["kind"] == "single"}
    pair = {(frozenset(r["tasks"]), r["seed"]): r["main"] for r in results if r["kind"] == "pair"}
    probes = [r for r in results if r["kind"] == "probe"]
    rows = []
    for i, j in itertools.permutations(tasks, 2):
        gains = [100 * (pair[(frozenset((i, j)), s)][j] - single[(j, s)]) for s in args.seeds]
        rows.append({"i": i, "j": j, "truth": statistics.mean(gains),
                     "sd": statistics.stdev(gains) if len(gains) > 1 else 0.0})
    if not all(p["affinity"]["matrices"] and p["cosine"]["matrices"] for p in probes):
        raise SystemExit("a five-task run measured no affinity or cosine: give a smaller --every than its steps")
    tag = [mean_matrix(p["affinity"]["matrices"], len(tasks)) for p in probes]
    cos = [mean_matrix(p["cosine"]["matrices"], len(tasks)) for p in probes]
    at = {t: k for k, t in enumerate(probes[0]["affinity"]["tasks"])}
    ct = {t: k for k, t in enumerate(probes[0]["cosine"]["tasks"])}
    for row in rows:
        row["tag"] = statistics.mean(m[at[row["i"]]][at[row["j"]]] for m in tag)
        row["cos"] = statistics.mean(m[ct[row["i"]]][ct[row["j"]]] for m in cos)
    truth = [r["truth"] for r in rows]
    lines = ["| i → j | transfer to j (points, mean ± sd over seeds) | TAG A[i][j] | gradient cosine |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['i']} → {r['j']} | {r['truth']:+.2f} ± {r['sd']:.2f} | {r['tag']:+.2e} | {r['cos']:+.3f} |"
              for r in rows]
    pair_s = sum(r["train_s"] for r in results if r["kind"] == "pair")
    probe_s = {k: sum(p["seconds"][k] for p in probes) for k in ("affinity", "conflict")}
    probe_train = sum(p["train_s"] for p in probes)
    lines += ["", "| predictor | Spearman ρ with the truth (20 ordered pairs) | p | sign agreement | cost |",
              "|---|---:|---:|---:|---|"]
    for key, name in (("tag", "TAG lookahead affinity"), ("cos", "gradient cosine")):
        values = [r[key] for r in rows]
        rho, p = spearmanr(values, truth)
        agree = sum((v > 0) == (t > 0) for v, t in zip(values, truth))
        cost = probe_s["affinity" if key == "tag" else "conflict"]
        lines.append(f"| {name} | {rho:+.3f} | {p:.3f} | {agree}/20 | {cost:.0f} s in the callback, within "
                     f"{probe_train:.0f} s of five-task runs ({len(probes)} seeds) |")
    lines.append(f"| ground truth | | | | {pair_s:.0f} s of pair runs, plus the single-task runs |")
    positive = sum(t > 0 for t in truth)
    beyond = sum(abs(r["truth"]) > r["sd"] for r in rows)
    lines += ["", f"- {positive} of 20 ordered pairs have a positive mean transfer; {beyond} of 20 differ from 0 by "
              "more than their sd over seeds."]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("transfer.py", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.quick:
        bc.require_glue(argparse.ArgumentParser(), args.data_dir, args.tasks)
    data = out / "data"
    if args.quick:
        fake_glue(data, args)
    else:
        data, _, _ = bc.write_glue_subsets(args.data_dir, out, {t: args.train_rows for t in args.tasks},
                                           {t: args.eval_rows for t in args.tasks})
    encoder = encoder_of(args, out)
    runs = plan(args)
    results, todo = [], []
    for run in runs:
        folder = out / run["name"]
        if (folder / "result.json").is_file():
            results.append(json.loads((folder / "result.json").read_text(encoding="utf-8")))
        else:
            todo.append({"run": run, "folder": str(folder), "encoder": encoder, "data": str(data),
                         "train_rows": args.train_rows, "batch_size": args.batch_size, "epochs": args.epochs,
                         "learning_rate": args.learning_rate, "every": args.every,
                         "max_length": 64 if args.model == "tiny" else 128})
    print(f"{len(runs)} runs, {len(results)} finished earlier, {len(todo)} to train, {args.jobs} at a time", flush=True)
    started = time.perf_counter()
    # spawn: the parent may have imported torch (the tiny encoder), and forking a process with torch's threads can hang
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(train_one, todo):
            results.append(result)
            print(f"  {result['kind']} {'+'.join(result['tasks'])} seed {result['seed']}: {result['train_s']:.0f} s, "
                  + ", ".join(f"{t} {v:.3f}" for t, v in result["main"].items()), flush=True)
    header = invocation.header("Which tasks help each other: pairwise transfer vs TAG affinity and gradient cosine "
                               "(issue 28)")
    settings = (f"- settings: {bc.model_name(encoder) if args.model != 'tiny' else 'tiny BERT'}, fp32, one torch "
                f"thread per run, {args.jobs} runs at a time; {args.train_rows} training rows per task (a fixed "
                f"subset), {args.eval_rows} dev rows, {args.epochs} epochs at batch {args.batch_size}, lr "
                f"{args.learning_rate}, proportional sampling (equal examples per task alone and in a pair), seeds "
                f"{' '.join(map(str, args.seeds))}; {len(todo)} runs trained in {time.perf_counter() - started:.0f} s")
    section = "\n".join([*header, settings, "", *analyse(args, results)])
    bc.publish(args, section)
    return 0


def fake_glue(folder: Path, args: argparse.Namespace) -> None:
    """--quick: random rows in the clean subset layout (no ../shared/data needed)."""
    import random

    import many_tasks

    rng = random.Random(0)
    for task in args.tasks:
        columns = [c for c in bc.GLUE[task].columns.values() if c != "label"]
        for split, n in (("train", args.train_rows), ("dev", args.eval_rows)):
            lines = ["\t".join([*columns, "label"])]
            for _ in range(n):
                texts = [" ".join(rng.choice(many_tasks.WORDS) for _ in range(6)) for _ in columns]
                label = f"{rng.uniform(0, 5):.2f}" if task == "stsb" else str(rng.randint(0, 1))
                lines.append("\t".join([*texts, label]))
            path = folder / task / f"{split}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bc.script_main(main)
