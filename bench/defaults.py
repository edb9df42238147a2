"""Study 12 (issue 25): do the new defaults cost quality? Length grouping on vs off, and bf16 vs fp32.

What it measures and how: bench/README.md, "What each script measures, in detail".

    OMP_NUM_THREADS=1 python bench/defaults.py --data_dir ../shared/data --arms on-bf16 --train_only &
    OMP_NUM_THREADS=1 python bench/defaults.py --data_dir ../shared/data --arms off-bf16 --train_only &
    wait; python bench/defaults.py --data_dir ../shared/data --arms on-bf16 off-bf16 on-fp32 --table_only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import _common as bc
import quality
from _quality_report import Stat

ARMS = {  # arm -> quality.py flags
    "on-bf16": ["--bf16"],
    "off-bf16": ["--bf16", "--no-group_by_length"],
    "on-fp32": [],
    "off-fp32": ["--no-group_by_length"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders of --tasks (train.tsv, dev.tsv)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["on-bf16", "off-bf16"],
                        help="(grouping, precision) arms; differences are taken to the first")
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb"], choices=list(bc.GLUE_TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--train_only", action="store_true", help="train the arms' missing runs; write no table")
    parser.add_argument("--table_only", action="store_true", help="build the table from cached runs; train nothing")
    return bc.parse_with_presets(parser, argv, {})


def quality_argv(args: argparse.Namespace, arm: str, *extra: str) -> list[str]:
    preset = ["--quick"] if args.quick else ["--realistic"]
    return [*preset, "--data_dir", args.data_dir, "--model", args.model, "--configs", "single", "--tasks",
            *args.tasks, "--seeds", *map(str, args.seeds), "--jobs", "1", "--no_write", *ARMS[arm], *extra]


def arm_rows(args: argparse.Namespace, arm: str) -> list[dict[str, Any]]:
    """The cached single-task rows of one arm (quality.py's cache folder for those settings)."""
    q = quality.parse_args(quality_argv(args, arm))
    return quality.rows_of(quality.study_folder(q)[1], q)


def welch_p(a: Stat, b: Stat) -> float:
    from manyheads.recipe.compare_table import welch_p_value

    return welch_p_value(a.values, b.values) if a.n > 1 and b.n > 1 else float("nan")


def table(args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    first = args.arms[0]
    stats = {arm: {t: Stat([r["tasks"][t]["main"] for r in runs if "main" in r["tasks"][t]]) for t in args.tasks}
             for arm, runs in rows.items()}
    head = "| task (main metric ×100) | " + " | ".join(f"{arm} (n)" for arm in args.arms)
    head += "".join(f" | {arm} − {first} (Welch p)" for arm in args.arms[1:]) + " |"
    lines = [head, "|---" * (1 + 2 * len(args.arms) - 1) + "|"]
    for task in args.tasks:
        cells = [f"{stats[arm][task].text()} ({stats[arm][task].n})" for arm in args.arms]
        for arm in args.arms[1:]:
            a, b = stats[arm][task], stats[first][task]
            cells.append(f"{100 * (a.mean - b.mean):+.1f} (p = {welch_p(a, b):.2f})")
        lines.append(f"| {task} ({bc.GLUE_TASKS[task]['main_metric']}) | " + " | ".join(cells) + " |")
    minutes = []
    for arm in args.arms:
        walls = [r["wall_s"] / 60 for r in rows[arm]]
        minutes.append(f"{arm} {statistics.fmean(walls):.1f} min per seed" if walls else f"{arm} no runs")
    return [*lines, "", "- training + evaluation time of the three tasks, mean over seeds: " + "; ".join(minutes),
            "- within the seeds' spread: a difference smaller than the larger sd of the two arms (and p > 0.05)"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("defaults.py", argv)
    if not args.table_only:
        for arm in args.arms:
            code = quality.main(quality_argv(args, arm))
            if code:
                return code
    if args.train_only:
        return 0
    rows = {arm: arm_rows(args, arm) for arm in args.arms}
    settings = (f"tasks {', '.join(args.tasks)}, seeds {', '.join(map(str, args.seeds))}, quality.py "
                f"{'--quick' if args.quick else '--realistic'} --configs single; arms: "
                + "; ".join(f"{arm} = quality.py {' '.join(ARMS[arm]) or '(no flag)'}" for arm in args.arms))
    section = [*invocation.header("defaults: length grouping on/off and bf16/fp32, single-task quality"),
               f"- settings: {settings}", "", *table(args, rows), ""]
    bc.publish(args, "\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
