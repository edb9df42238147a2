"""The many-real-task study (issue 27): 13 tasks on one MiniLM vs each alone, and the same question at 5 tasks under
the same budget, so that "does the gain grow from 5 to 13 tasks?" compares like with like (not a test).

    python bench/prepare_thirteen.py
    HF_HUB_OFFLINE=1 python bench/thirteen_study.py [--seeds 1 2 3] [--jobs 2] [--out bench/out/thirteen]

Runs `manyheads compare examples/thirteen_tasks.yaml` (13 tasks, 3 seeds), then `manyheads compare
bench/five_of_thirteen.yaml` (SST-2, CoLA, RTE, MRPC, STS-B: the same entries, caps, epochs and seeds). The
five tasks' single-task runs are the same runs in both comparisons (same recipe entry, seed, steps and examples,
checked here before anything is reused), so the 5-task comparison links to them instead of training them again.
Both comparisons resume where they stopped. Prints both verdict tables and the 5-vs-13 table of the five shared
tasks; `--publish` appends them to bench/RESULTS.md with the machine line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import _common as bc

ROOT = Path(__file__).resolve().parent.parent
THIRTEEN = ROOT / "examples" / "thirteen_tasks.yaml"
FIVE = ROOT / "bench" / "five_of_thirteen.yaml"


PROTOCOL = """Protocol (the recipes' own settings, a reduced CPU budget): each task's first 1000 training rows and
500 eval rows (QNLI: its dev.tsv only, the last 20% held out; CoNLL tasks evaluated on test.txt; SQuAD split by
article), 2 epochs at batch 32, lr 1e-4, warmup 6%, proportional sampling, max_length 128 (SQuAD 256, stride 64),
fp32 (the recipes set no bf16), no model selection (the last step is evaluated). Single-task runs see as many
examples of their task as the multi-task run gave it (`manyheads compare`). The 5-task comparison reuses the
13-task comparison's single-task runs of its five tasks (same entries, seeds, steps and examples, checked before
linking). `--publish` prints the tables of finished comparisons; the runs trained two at a time (`--jobs 2`), so
the durations in their logs are of a shared machine."""


def compare(config: Path, out: Path, args: argparse.Namespace) -> None:
    command = [sys.executable, "-m", "manyheads.cli.main", "compare", str(config), "--data_dir", args.data_dir,
               "--model", args.model, "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs),
               "--output_dir", str(out)]
    print("$ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def lend_single_runs(five_out: Path, thirteen_out: Path, args: argparse.Namespace) -> None:
    """Plan the 5-task comparison, check each single-task run equals the 13-task comparison's, and link it."""
    from manyheads.recipe.compare import plan_comparison
    from manyheads.recipe.compare_plan import SINGLE_TASK, check_folder, write_plan

    five = plan_comparison(str(FIVE), ["--data_dir", args.data_dir, "--model", args.model], args.seeds, five_out)
    thirteen = plan_comparison(str(THIRTEEN), ["--data_dir", args.data_dir, "--model", args.model], args.seeds,
                               thirteen_out)
    theirs = {r.key: r for r in thirteen.runs}
    if not check_folder(five):
        write_plan(five)
    for run in five.runs:
        if run.kind != SINGLE_TASK:
            continue
        other = theirs[run.key]
        ours = {k: v for k, v in run.config.items() if k != "data_dir"}
        same = (other.examples, other.max_steps, {k: v for k, v in other.config.items() if k != "data_dir"}) == \
            (run.examples, run.max_steps, ours)
        if not same:
            raise SystemExit(f"{run.key}: the 5-task comparison's run differs from the 13-task one's; not reused")
        link = five.folder(run)
        if not (link.exists() or link.is_symlink()):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(thirteen.folder(other).resolve(), target_is_directory=True)


def five_vs_thirteen(five_out: Path, thirteen_out: Path) -> list[str]:
    """Per shared task: single-task, 5-task and 13-task main metric (x100, mean ± sd over seeds) and the gains."""
    five, thirteen = (json.loads((p / "compare.json").read_text()) for p in (five_out, thirteen_out))

    def rows(summary: dict) -> dict[str, dict]:
        return {row["task"]: row for row in summary["tasks"]}

    def text(values: list[float]) -> str:
        values = [100 * v for v in values]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f}"

    lines = ["| task | metric | single-task | 5 tasks | 13 tasks | gain at 5 | gain at 13 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    gains5, gains13 = [], []
    for task, row5 in rows(five).items():
        row13 = rows(thirteen)[task]
        single, m5, m13 = (side["values"] for side in (row5["single_task"], row5["multi_task"], row13["multi_task"]))
        sign = 1 if row5["greater_is_better"] else -1
        g5 = sign * 100 * (statistics.mean(m5) - statistics.mean(single))
        g13 = sign * 100 * (statistics.mean(m13) - statistics.mean(single))
        gains5.append(g5)
        gains13.append(g13)
        lines.append(f"| {task} | {row5['metric']} | {text(single)} | {text(m5)} | {text(m13)} | {g5:+.1f} | "
                     f"{g13:+.1f} |")
    lines.append(f"| **mean gain (points)** | | | | | **{statistics.mean(gains5):+.1f}** | "
                 f"**{statistics.mean(gains13):+.1f}** |")
    return lines


def averages(five_out: Path, thirteen_out: Path) -> list[str]:
    """Per seed, the mean of the main metrics (x100; higher is better for every task here), then mean ± sd over
    seeds and Welch's p against single-task: the five shared tasks at 5 and 13 tasks, and all 13 tasks."""
    from manyheads.recipe.compare_table import welch_p_value

    def per_seed(rows: list[dict], side: str) -> list[float]:
        seeds = len(rows[0][side]["values"])
        return [100 * statistics.mean(r[side]["values"][k] for r in rows) for k in range(seeds)]

    def text(values: list[float]) -> str:
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"

    five, thirteen = (json.loads((p / "compare.json").read_text())["tasks"] for p in (five_out, thirteen_out))
    shared = [r["task"] for r in five]
    thirteen_shared = [r for r in thirteen if r["task"] in shared]
    single = per_seed(five, "single_task")
    lines = ["| tasks averaged | single-task | multi-task | Welch p |", "|---|---:|---:|---:|"]
    for label, rows, base in (("5 shared, trained in the 5-task run", five, single),
                              ("5 shared, trained in the 13-task run", thirteen_shared, single),
                              ("all 13, the 13-task run", thirteen, per_seed(thirteen, "single_task"))):
        multi = per_seed(rows, "multi_task")
        lines.append(f"| {label} | {text(base)} | {text(multi)} | {welch_p_value(multi, base):.3f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = bc.parser(__doc__)
    parser.add_argument("--data_dir", default=str(ROOT / "bench" / "out" / "thirteen" / "data"),
                        help="the folder bench/prepare_thirteen.py wrote")
    parser.add_argument("--model", default=bc.default_model(), help="the encoder (default: MiniLM from PyPI)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "thirteen"))
    parser.add_argument("--only", choices=("13", "5", "tables"), default=None,
                        help="run one comparison, or only print the tables of finished ones")
    parser.add_argument("--publish", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    thirteen_out, five_out = out / "compare13", out / "compare5"
    if args.only in (None, "13"):
        compare(THIRTEEN, thirteen_out, args)
    if args.only in (None, "5"):
        lend_single_runs(five_out, thirteen_out, args)
        compare(FIVE, five_out, args)
    sections = [(thirteen_out / "compare.md").read_text(), (five_out / "compare.md").read_text(),
                "\n".join(five_vs_thirteen(five_out, thirteen_out)), "\n".join(averages(five_out, thirteen_out))]
    print("\n\n".join(sections))
    if args.publish:
        invocation = bc.Invocation.of("thirteen_study.py", argv)
        header = invocation.header("13 real tasks on one MiniLM vs each alone, and the same 5 GLUE tasks at 5 tasks")
        bc.append_results(ROOT / "bench" / "RESULTS.md", "\n".join([*header, "", PROTOCOL]) + "\n\n" +
                          "\n\n".join(sections))


if __name__ == "__main__":
    main()
