"""The heads' learning rate at 13 tasks (not a test; issue 28, item 4): the 13-task study's multi-task runs again
with `head_learning_rate_scaling: share`, against the same study's runs with one rate for all heads.

    python bench/thirteen_head_lr.py [--study bench/out/thirteen/compare13] [--seeds 1 2 3] [--jobs 2]

Each seed's run is the study's own multi-task run (`compare13/mt/seed-N/compare_run.yaml`: the same tasks, caps,
epochs and seed) with only `head_learning_rate_scaling: share` added, trained with `manyheads train`. The
single-task side is the study's single-task runs, unchanged: under the share rule a task alone has share 1, so its
head's rate is learning_rate, exactly as in those runs (bench/head_lr.py checks that equality on five tasks). Runs
resume: a finished run's eval_results.json is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as bc
import yaml


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--study", default=str(bc.OUT_DIR / "thirteen" / "compare13"),
                        help="the 13-task comparison's folder (bench/thirteen_study.py)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=bc.positive, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--check_seed", type=int, default=1,
                        help="also retrain this seed's one-rate run with today's code: its scores must equal the "
                             "study's (0: no check)")
    parser.add_argument("--out", default=str(bc.OUT_DIR / "thirteen_head_lr"))
    parser.add_argument("--results", default=str(bc.DEFAULT_RESULTS))
    parser.add_argument("--no_write", action="store_true")
    return parser.parse_args(argv)


def train(args: argparse.Namespace, seed: int, rule: str) -> Path:
    """The study's multi-task run of `seed` with `head_learning_rate_scaling: rule`, in --out/<rule>-seed-N."""
    name = f"{rule}-seed-{seed}"
    folder = Path(args.out) / name
    if (folder / "eval_results.json").is_file():
        return folder
    config = yaml.safe_load((Path(args.study) / "mt" / f"seed-{seed}" / "compare_run.yaml").read_text())
    config.update(output_dir=str(folder), head_learning_rate_scaling=rule)
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}
    with (folder.parent / f"{name}.log").open("w", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "manyheads.cli.main", "train", str(folder.parent /
                               f"{name}.yaml"), "--overwrite"], stdout=log, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode
    if code:
        raise SystemExit(f"{name} failed ({code}); see {folder.parent / f'{name}.log'}")
    return folder


def main_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {t: 100 * v for t, v in result["main"].items()}


def table(args: argparse.Namespace) -> list[str]:
    from scipy.stats import ttest_ind

    study = Path(args.study)
    mt = {s: json.loads((study / "mt" / f"seed-{s}" / "compare_result.json").read_text()) for s in args.seeds}
    tasks = mt[args.seeds[0]]["tasks"]
    metric = mt[args.seeds[0]]["main_metric"]
    single = {s: {t: 100 * json.loads((study / f"single-{t}" / f"seed-{s}" / "compare_result.json").read_text())
                  ["main"][t] for t in tasks} for s in args.seeds}
    share = {}
    for s in args.seeds:
        evaluated = json.loads((Path(args.out) / f"share-seed-{s}" / "eval_results.json").read_text())
        share[s] = {t: 100 * evaluated[f"eval_{t}_{metric[t]}"] for t in tasks}
    one = {s: main_metrics(mt[s]) for s in args.seeds}

    def cell(by_seed: dict[int, dict[str, float]], task: str) -> str:
        values = [by_seed[s][task] for s in args.seeds]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    def p(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], task: str | None = None) -> float:
        pick = (lambda d: [d[s][task] for s in args.seeds]) if task else \
            (lambda d: [statistics.mean(d[s].values()) for s in args.seeds])
        return float(ttest_ind(pick(a), pick(b), equal_var=False).pvalue)

    lines = ["| task (main metric x 100) | single-task | multi-task, one head rate | multi-task, share rule | "
             "share − one rate (p) |", "|---|---:|---:|---:|---:|"]
    for t in tasks:
        delta = statistics.mean(share[s][t] - one[s][t] for s in args.seeds)
        lines.append(f"| {t} ({metric[t]}) | {cell(single, t)} | {cell(one, t)} | {cell(share, t)} | "
                     f"{delta:+.1f} ({p(share, one, t):.2f}) |")
    avg = {name: {s: {"avg": statistics.mean(d[s].values())} for s in args.seeds}
           for name, d in (("single", single), ("one", one), ("share", share))}
    delta = statistics.mean(avg["share"][s]["avg"] - avg["one"][s]["avg"] for s in args.seeds)
    lines.append(f"| **average of {len(tasks)}** | {cell(avg['single'], 'avg')} | {cell(avg['one'], 'avg')} | "
                 f"{cell(avg['share'], 'avg')} | {delta:+.1f} ({p(share, one):.2f}) |")
    lines += ["", f"- share rule vs single-task, average: Welch p {p(share, single):.2f}; one rate vs single-task: "
              f"{p(one, single):.2f}"]
    if args.check_seed:
        again = json.loads((Path(args.out) / f"none-seed-{args.check_seed}" / "eval_results.json").read_text())
        diffs = [abs(100 * again[f"eval_{t}_{metric[t]}"] - one[args.check_seed][t]) for t in tasks]
        lines.append(f"- the one-rate run of seed {args.check_seed} retrained with this code: largest difference from "
                     f"the study's scores {max(diffs):.4f} points over the {len(tasks)} tasks")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("thirteen_head_lr.py", argv)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [(s, "share") for s in args.seeds] + ([(args.check_seed, "none")] if args.check_seed else [])
        list(pool.map(lambda job: train(args, *job), jobs))
    header = invocation.header("The heads' learning rate at 13 tasks: one rate vs the share rule (issue 28)")
    settings = ("- settings: the 13-task study's multi-task runs (bench/RESULTS.md, \"13 tasks\"; MiniLM, 1000 "
                "training / 500 eval rows per task, 2 epochs, batch 32, lr 1e-4, proportional sampling, fp32) with "
                "`head_learning_rate_scaling: share` added, seeds " + " ".join(map(str, args.seeds))
                + f", {args.jobs} runs at a time; single-task and one-rate columns: that study's runs")
    bc.publish(args, "\n".join([*header, settings, "", *table(args)]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bc.script_main(main)
