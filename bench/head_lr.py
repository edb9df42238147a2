"""The heads' learning rate in multi-task runs, and which configuration to train (not a test; issue 28, items 4, 5).

Five GLUE tasks (RTE, MRPC, STS-B, CoLA, SST-2) at the realistic regime's proportions scaled down by --scale
(whole train sets, SST-2 8k rows, each divided by 10 by default: 249 / 367 / 575 / 855 / 800 rows, so the
sampling shares differ as in the realistic regime: 9% to 30%), at most --eval_rows dev rows per task, 3 epochs at
batch 32, lr 1e-4, proportional sampling, 3 seeds. Everything goes through the user's door: one recipe per setting
and `manyheads compare` (each task alone and all five together at equal examples per task, the same rule on both
sides); the baseline setting also gets `--groups affinity.json:2` (the split that `manyheads affinity`, one run on
seed 1, recommends) and `--finetune` (MT-DNN: each task fine-tuned from each seed's five-task model).

Settings: head_learning_rate = k x learning_rate for k in 1, 3, 10, and `head_learning_rate_scaling: share` (each
head's rate divided by its share of steps: 1 for a task alone, 3.3x to 11x here).

    python bench/head_lr.py --data_dir ../shared/data          # about 45 min on 2 cores
    python bench/head_lr.py --quick                            # tiny model, generated rows: a smoke run

Runs resume: `manyheads compare` keeps every finished run in --out. Every number comes from runs of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as bc
import yaml

TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
# The realistic regime's training rows (bench/quality.py --realistic: whole train sets, an 8k subset of SST-2).
REALISTIC_ROWS = {"rte": 2490, "mrpc": 3668, "stsb": 5749, "cola": 8551, "sst2": 8000}
SETTINGS = ("k1", "k3", "k10", "share")
BASELINE = "k1"  # also trained with --groups and --finetune
CONFIGS = {"single_task": "each alone", "multi_task": "all five together", "group": "the 2-group split",
           "fine_tuned": "all five, then each fine-tuned (MT-DNN)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders (rte, mrpc, stsb, cola, sst2)")
    parser.add_argument("--scale", type=bc.positive, default=10, help="the realistic regime's rows divided by this")
    parser.add_argument("--eval_rows", type=bc.positive, default=500, help="at most this many dev rows per task")
    parser.add_argument("--epochs", type=bc.positive, default=3)
    parser.add_argument("--batch_size", type=bc.positive, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--jobs", type=bc.positive, default=2, help="runs at a time (compare's --jobs)")
    parser.add_argument("--every", type=bc.positive, default=None,
                        help="steps between affinity measurements (default: manyheads affinity's)")
    parser.add_argument("--out", default=None, help="run folders (default: bench/out/head_lr)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.scale, args.eval_rows, args.epochs, args.seeds = "tiny", 100, 16, 1, [1, 2]
        args.every = args.every or 1
    args.results = args.results or str(bc.QUICK_RESULTS if args.quick else bc.DEFAULT_RESULTS)
    args.out = args.out or str(bc.OUT_DIR / ("head_lr-quick" if args.quick else "head_lr"))
    return args


def recipe(args: argparse.Namespace, encoder: str, data: Path, setting: str) -> dict[str, Any]:
    rates: dict[str, Any] = {"share": {"head_learning_rate_scaling": "share"}}
    for k in (3, 10):
        rates[f"k{k}"] = {"head_learning_rate": k * args.learning_rate}
    return {"model": encoder, "data_dir": str(data), "max_length": 64 if args.model == "tiny" else 128,
            "tasks": [bc.glue_task_config(t) for t in TASKS], "sampling_strategy": "proportional",
            "num_train_epochs": args.epochs, "per_device_train_batch_size": args.batch_size,
            "per_device_eval_batch_size": 64, "learning_rate": args.learning_rate, "warmup_steps": 0.06,
            "weight_decay": 0.01, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 50,
            "report_to": "none", "seed": args.seeds[0], "disable_tqdm": True, **rates.get(setting, {})}


def manyheads(*arguments: str, log: Path) -> None:
    """One `manyheads` command in a child process, its output in `log`; a failure stops the study."""
    command = [sys.executable, "-m", "manyheads.cli.main", *arguments]
    print("$ manyheads " + " ".join(arguments), flush=True)
    with log.open("a", encoding="utf-8") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code:
        raise SystemExit(f"manyheads {arguments[0]} failed ({code}); its output: {log}")


def results_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*/*/compare_result.json"))]


def scores(results: list[dict[str, Any]], kind: str) -> dict[str, dict[int, float]]:
    """{task: {seed: main metric x 100}} of the runs of one kind."""
    out: dict[str, dict[int, float]] = {}
    for result in results:
        if result["kind"] == kind:
            for task, value in result["main"].items():
                out.setdefault(task, {})[result["seed"]] = 100 * value
    return out


def averages(by_task: dict[str, dict[int, float]], seeds: list[int]) -> list[float]:
    """The five-task average of each seed."""
    return [statistics.mean(by_task[t][s] for t in TASKS) for s in seeds]


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def welch(a: list[float], b: list[float]) -> str:
    from scipy.stats import ttest_ind

    return f"{ttest_ind(a, b, equal_var=False).pvalue:.2f}" if len(a) > 1 and len(b) > 1 else "n/a"


def rate_table(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    seeds = args.seeds
    lines = ["| head rate | side | " + " | ".join(TASKS) + " | average (mean ± sd over seeds) | Δ multi − single "
             f"| Welch p | Welch p vs {BASELINE}, same side |", "|---|---|" + "---:|" * (len(TASKS) + 4)]
    base = {kind: averages(scores(results[BASELINE], kind), seeds) for kind in ("single_task", "multi_task")} \
        if BASELINE in results else {}
    for setting in args.settings:
        single, multi = (scores(results[setting], kind) for kind in ("single_task", "multi_task"))
        s_avg, m_avg = averages(single, seeds), averages(multi, seeds)
        for side, kind, by_task, avg in (("multi", "multi_task", multi, m_avg), ("single", "single_task", single,
                                                                                s_avg)):
            cells = [spread([by_task[t][s] for s in seeds]) for t in TASKS]
            extra = (f"{statistics.mean(m_avg) - statistics.mean(s_avg):+.1f} | {welch(m_avg, s_avg)}"
                     if side == "multi" else " | ")
            versus = welch(avg, base[kind]) if base and setting != BASELINE else ""
            lines.append(f"| {setting} | {side} | " + " | ".join(cells) + f" | {spread(avg)} | {extra} | {versus} |")
    return lines


def config_table(args: argparse.Namespace, results: list[dict[str, Any]], groups: list[list[str]]) -> list[str]:
    seeds = args.seeds
    alone = averages(scores(results, "single_task"), seeds)
    lines = [f"Groups (from `manyheads affinity`, seed {seeds[0]}): " + " | ".join(", ".join(g) for g in groups), "",
             "| configuration | " + " | ".join(TASKS) + " | average | Welch p vs each alone | Welch p vs all five "
             "together | stored parameters |", "|---|" + "---:|" * (len(TASKS) + 4)]
    together = averages(scores(results, "multi_task"), seeds)
    for kind, name in CONFIGS.items():
        by_task = scores(results, kind)
        if kind == "group":  # tasks in no group of two or more are trained alone, as compare does
            by_task = {**scores(results, "single_task"), **by_task}
        if not all(t in by_task and all(s in by_task[t] for s in seeds) for t in TASKS):
            continue
        grouped = {t for g in groups if len(g) > 1 for t in g}
        parts = [r for r in results if r["seed"] == seeds[0] and (r["kind"] == kind or (
            kind == "group" and r["kind"] == "single_task" and r["tasks"][0] not in grouped))]
        stored = sum(r["parameters"] for r in parts)  # fine-tuned: one encoder per task, counted honestly
        avg = averages(by_task, seeds)
        lines.append(f"| {name} | " + " | ".join(spread([by_task[t][s] for s in seeds]) for t in TASKS)
                     + f" | {spread(avg)} | {welch(avg, alone) if kind != 'single_task' else ''} | "
                     f"{welch(avg, together) if kind != 'multi_task' else ''} | {stored / 1e6:.1f} M |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("head_lr.py", argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = {t: max(1, REALISTIC_ROWS[t] // args.scale) for t in TASKS}
    if args.quick:
        import transfer

        data = out / "data"
        transfer.fake_glue(data, argparse.Namespace(tasks=TASKS, train_rows=32, eval_rows=args.eval_rows))
        rows = {t: 32 for t in TASKS}
    else:
        bc.require_glue(argparse.ArgumentParser(), args.data_dir, list(TASKS))
        data, rows, _ = bc.write_glue_subsets(args.data_dir, out, rows, {t: args.eval_rows for t in TASKS})
    import transfer

    encoder = transfer.encoder_of(args, out)
    started = time.perf_counter()
    affinity = out / "affinity"
    base = out / "recipe-affinity.yaml"
    base.write_text(yaml.safe_dump(recipe(args, encoder, data, BASELINE)), encoding="utf-8")
    if not (affinity / "diagnostics" / "affinity.json").is_file():
        every = ["--every", str(args.every)] if args.every else []
        manyheads("affinity", str(base), "--output_dir", str(affinity), "--overwrite", *every,
                  log=out / "affinity.log")
    groups = json.loads((affinity / "diagnostics" / "affinity.json").read_text(encoding="utf-8"))
    split = next(g["partition"] for g in groups["groupings"] if g["groups"] == 2)
    results = {}
    for setting in args.settings:
        config = out / f"recipe-{setting}.yaml"
        config.write_text(yaml.safe_dump(recipe(args, encoder, data, setting)), encoding="utf-8")
        extra = ["--groups", f"{affinity / 'diagnostics' / 'affinity.json'}:2", "--finetune"] \
            if setting == BASELINE else []
        manyheads("compare", str(config), "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs),
                  "--output_dir", str(out / setting), *extra, log=out / f"{setting}.log")
        results[setting] = results_of(out / setting)
    header = invocation.header("The heads' learning rate, and all-in-one vs groups vs MT-DNN fine-tune (issue 28)")
    settings = (f"- settings: {bc.model_name(encoder) if args.model != 'tiny' else 'tiny BERT'}, fp32, "
                f"`manyheads compare --jobs {args.jobs}`; training rows "
                + ", ".join(f"{t} {n}" for t, n in rows.items())
                + f" (the realistic regime's / {args.scale}), at most {args.eval_rows} dev rows per task, "
                f"{args.epochs} epochs at batch {args.batch_size}, lr {args.learning_rate}, warm-up 6%, proportional "
                f"sampling, seeds {' '.join(map(str, args.seeds))}; main metrics x 100 (RTE acc, MRPC F1, STS-B "
                f"Spearman, CoLA MCC, SST-2 acc); {time.perf_counter() - started:.0f} s for what was trained now")
    section = [*header, settings, "", "Heads' learning rate: k1/k3/k10 = head_learning_rate k x learning_rate; "
               "share = `head_learning_rate_scaling: share` (single-task runs: share 1).", "",
               *rate_table(args, results)]
    if BASELINE in results:
        section += ["", f"Configurations ({BASELINE}):", *config_table(args, results[BASELINE], split)]
    bc.publish(args, "\n".join(section))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bc.script_main(main)
