"""Stock Trainer single-task baselines on the quality study's realistic regime (issue 16; not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/stock.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import _common as bc
import quality
from _quality_report import PUBLISHED, SINGLE, Stat
from _stock import train_stock

QUICK = {"train_sizes": quality.QUICK["train_sizes"], "eval_sizes": quality.QUICK["eval_sizes"], "epochs": 1,
         "batch_size": 8}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    realistic = quality.REALISTIC
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders rte, mrpc, stsb, cola, sst2 (train.tsv, dev.tsv)")
    parser.add_argument("--tasks", nargs="+", default=list(quality.TASKS), choices=list(quality.TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--train_sizes", nargs="*", default=realistic["train_sizes"], help="task=N|all")
    parser.add_argument("--eval_sizes", nargs="*", default=realistic["eval_sizes"], help="task=N|all")
    parser.add_argument("--epochs", type=int, default=realistic["epochs"])
    parser.add_argument("--batch_size", type=int, default=realistic["batch_size"])
    parser.add_argument("--learning_rate", type=float, default=realistic["learning_rate"])
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the fixed train/dev subsets")
    parser.add_argument("--cache_dir", default=str(bc.OUT_DIR / "stock"), help="where rows and subsets are kept")
    parser.add_argument("--quality_dir", default=str(bc.OUT_DIR / "quality"),
                        help="quality.py's cache folder, read for manyheads' single-task rows")
    parser.add_argument("--table_only", action="store_true", help="rebuild the table from cached rows; train nothing")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    try:
        args.train_sizes = bc.sizes_arg(args.train_sizes, args.tasks, {})
        args.eval_sizes = bc.sizes_arg(args.eval_sizes, args.tasks, {})
    except ValueError as err:
        parser.error(f"--train_sizes / --eval_sizes: {err}")
    bc.require_files(parser, args.data_dir, [Path(bc.GLUE[t].folder) / f for t in args.tasks
                                          for f in (bc.GLUE[t].train, bc.GLUE[t].dev)])
    return args


def manyheads_single(args: argparse.Namespace, train: dict[str, int], dev: dict[str, int]) -> list[dict[str, Any]]:
    """`quality.py --realistic`'s single-task rows for these rows and recipe (none when it has not run yet)."""
    if args.tasks != list(quality.TASKS):
        return []
    q = quality.parse_args(["--realistic", "--data_dir", args.data_dir, "--model", args.model,
                            "--learning_rate", str(args.learning_rate), "--epochs", str(args.epochs),
                            "--batch_size", str(args.batch_size), "--max_length", str(args.max_length),
                            "--warmup", str(args.warmup), "--weight_decay", str(args.weight_decay),
                            "--cache_dir", args.quality_dir, "--configs", SINGLE])
    return quality.rows_of(quality.study_folder(q)[1], q)


def report(args: argparse.Namespace, rows: list[dict[str, Any]], ours: list[dict[str, Any]], rows_dir: Path,
           train: dict[str, int], dev: dict[str, int], invocation: bc.Invocation) -> str:
    model = bc.model_name(args.model)
    lines = invocation.header("Stock Trainer single-task baselines (realistic regime)")
    lines += [
        f"- settings: encoder {model}; stock `Trainer` + `AutoModelForSequenceClassification` (BERT pooler "
        f"head), no manyheads code; rows per task: train {train}, dev {dev}; {args.epochs} epoch(s), batch "
        f"{args.batch_size}, learning rate {args.learning_rate:g}, warm-up {args.warmup}, weight decay "
        f"{args.weight_decay}, max_length {args.max_length}, length-grouped batches, fp32; no class weights; rows "
        f"in `{bc.display_path(rows_dir)}`",
        "- manyheads single-task: `quality.py --realistic`'s `single` rows (mean pooling from the checkpoint's "
        "modules.json; CoLA with `class_weights: auto`), when present",
        "",
        "| task | metric | stock Trainer | seeds | manyheads single-task | seeds | published | stock − published |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task in args.tasks:
        metric, published, model = PUBLISHED[task]
        stock = Stat([r["metrics"][metric] for r in rows if r["task"] == task])
        scores = [r["tasks"][task].get("metrics", {}) for r in ours]
        mine = Stat([m[metric] for m in scores if metric in m])
        gap = f"{100 * stock.mean - published:+.1f}" if stock.n else "–"
        lines.append(f"| {task} | {metric} | {stock.text() if stock.n else '–'} | {stock.n} | "
                     f"{mine.text() if mine.n else '–'} | {mine.n} | {published:.1f} ({model}) | {gap} |")
    lines += ["", "- scores ×100, mean ± sd over seeds; published: see `PUBLISHED` in bench/_quality_report.py", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("stock.py", argv)
    bc.quiet_libraries()
    # The rows `quality.py` trains on for the same sizes and data seed (same helper).
    folder, train, dev = bc.write_glue_subsets(args.data_dir, args.cache_dir, args.train_sizes, args.eval_sizes,
                                            args.data_seed)
    settings = {"model": args.model, "train": train, "dev": dev, "epochs": args.epochs,
                "batch_size": args.batch_size, "learning_rate": args.learning_rate, "warmup": args.warmup,
                "weight_decay": args.weight_decay, "max_length": args.max_length, "data_seed": args.data_seed}
    rows_dir = Path(args.cache_dir) / bc.settings_key(settings) / "rows"
    plan = [(t, s) for s in args.seeds for t in args.tasks]
    todo = [] if args.table_only else [(t, s) for t, s in plan if not (rows_dir / f"{t}-seed{s}.json").is_file()]
    print(f"plan: {len(plan)} (task, seed) pairs, {len(todo)} to train; rows in {rows_dir}", flush=True)
    for i, (task, seed) in enumerate(todo):
        run = train_stock(task, folder, args.model, epochs=args.epochs, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, warmup=args.warmup, weight_decay=args.weight_decay,
                          max_length=args.max_length, group_by_length=True, seed=seed)
        row = {"task": task, "seed": seed, "settings": settings, "date": bc.now(),
               **{k: v for k, v in run.items() if k not in ("predictions", "labels")}}
        bc.save_row(rows_dir / f"{task}-seed{seed}.json", row)
        print(f"  [{i + 1}/{len(todo)}] {task} seed {seed}: {row['metrics']} ({row['train_s']:.0f} s)", flush=True)
    rows = [json.loads(p.read_text(encoding="utf-8")) for t, s in plan
            if (p := rows_dir / f"{t}-seed{s}.json").is_file()]
    if not rows:
        print("no rows yet: nothing to report")
        return 1
    ours = manyheads_single(args, train, dev)
    bc.publish(args, report(args, rows, ours, rows_dir, train, dev, invocation))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
