"""Question generation alone vs next to extractive QA on one MiniLM encoder (issue 14; not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/generation.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as bc
from _quality_report import Stat

EXAMPLE = bc.REPO / "examples" / "qa_qg.yaml"
SQUAD = "squad_v1.1_subset/test-v1.1.json"
PRESETS = {"quick": {"max_steps": 8, "batch_size": 4, "qa_eval": 8, "qg_eval": 4, "max_train": 64,
                     "seeds": [1, 2], "max_length": 128}}


def scaled_config(args: argparse.Namespace) -> dict[str, Any]:
    """`examples/qa_qg.yaml` with the bench's scale (the same for every run); the rest of the recipe unchanged."""
    import yaml

    config = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    config.update(model=args.model, data_dir=os.path.abspath(args.data_dir))
    for task in config["tasks"]:
        task["max_length"] = args.max_length
        task["data"].update(max_train_samples=args.max_train,
                            max_eval_samples=args.qa_eval if task["name"] == "qa" else args.qg_eval)
        if task["name"] == "qg":
            task["max_eval_samples"] = args.qg_eval
    # The training arguments: top-level keys in today's example, a `training:` section in older ones.
    training = config.get("training", config)
    training.update(max_steps=args.max_steps, per_device_train_batch_size=args.batch_size, save_strategy="steps",
                    save_steps=100, save_total_limit=1, logging_steps=20, disable_tqdm=True)
    return config


def joined(per_seed: dict[str, int]) -> str:
    return ", ".join(str(v) for v in per_seed.values())


def section(args: argparse.Namespace, invocation: bc.Invocation, summary: dict[str, Any], out: Path,
            wall: float) -> str:
    from manyheads.recipe.compare_table import compare_values

    runs = {(r["run"], r["seed"]): json.loads((out / r["folder"] / "compare_result.json").read_text())
            for r in summary["runs"]}
    seeds = summary["seeds"]

    def metric(run: str, key: str) -> list[float]:
        return [float(runs[(run, s)]["metrics"][key]) for s in seeds]

    lines = invocation.header("QG alone vs QA+QG on one MiniLM encoder (bench/generation.py)")
    examples = summary["examples"]
    lines += [f"- recipe: `examples/qa_qg.yaml` scaled down: batch {args.batch_size}, {args.max_steps} multi-task "
              f"steps, max_length {args.max_length}, at most {args.max_train} training rows per task, QA evaluated "
              f"on {args.qa_eval} held-out rows, QG on {args.qg_eval} generated questions (greedy); seeds "
              f"{', '.join(map(str, seeds))}",
              "- QG training examples per seed: multi-task " + joined(examples["qg"]["multi_task"]) + "; alone "
              + joined(examples["qg"]["single_task"]) + "; QA in the multi-task run "
              + joined(examples["qa"]["multi_task"])
              + " (features: a long paragraph counts once per window)",
              f"- wall time of this command: {wall / 60:.0f} min (runs kept from an earlier call not counted); per "
              "run: " + ", ".join(f"{r['run']} seed {r['seed']} {r['seconds'] / 60:.1f} min" for r in summary["runs"]),
              "",
              "Scores ×100, mean ± sd over seeds; the difference is QA+QG minus QG alone.", "",
              "| metric | QA+QG | QG alone | difference | seeds' spread | verdict |", "|---|---:|---:|---:|---|---|"]
    for key, label in (("eval_qg_rougeL", "QG ROUGE-L (main metric)"), ("eval_qg_bleu", "QG BLEU"),
                       ("eval_qg_chrf", "QG chrF")):
        multi, alone = metric("mt", key), metric("single-qg", key)
        verdict = compare_values(multi, alone)
        lines.append(f"| {label} | {Stat(multi).text()} | {Stat(alone).text()} | {100 * verdict.difference:+.1f} | "
                     f"{verdict.spread} | **{verdict.verdict}** |")
    for key, label in (("eval_qa_f1", "QA F1"), ("eval_qa_exact_match", "QA exact match")):
        lines.append(f"| {label} | {Stat(metric('mt', key)).text()} | – | | | (QA is not trained alone here) |")
    constant = [f"{run} seed {s}" for s in seeds for run in ("mt", "single-qg")
                if runs[(run, s)]["metrics"].get("eval_qg_constant_predictions", 0) >= 1]
    rouge = next(t for t in summary["tasks"] if t["task"] == "qg")
    lines += ["", f"**Verdict (ROUGE-L, the main metric): {rouge['verdict']}** ({rouge['spread']}). "
              + ("Runs whose QG generated the same text for every row: "
                 + ", ".join(map(str, constant)) + "." if constant else
                 "No run generated the same text for every row.")]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, SQUAD)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--max_steps", type=int, default=480, help="optimizer steps of the multi-task run")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_train", type=int, default=3000, help="training rows per task")
    parser.add_argument("--qa_eval", type=int, default=200, help="held-out QA rows evaluated")
    parser.add_argument("--qg_eval", type=int, default=100, help="held-out questions generated")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side")
    args = bc.parse_with_presets(parser, argv, PRESETS)
    bc.require_files(parser, args.data_dir, [SQUAD])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bc.quiet_libraries()
    import yaml

    from manyheads.recipe.compare import plan_comparison, run_comparison

    config = scaled_config(args)
    out = bc.OUT_DIR / "generation" / bc.settings_key([config, list(args.seeds)])
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    comparison = plan_comparison(str(recipe), [], args.seeds, out, alone=["qg"])
    invocation, start = bc.Invocation.of("generation.py", argv), time.time()
    from manyheads.errors import RunStopped

    try:
        summary = run_comparison(comparison, jobs=args.jobs, echo=lambda line: print(line, flush=True))
    except RunStopped as stopped:  # SIGTERM or a failed run: finished runs are kept, the same command continues
        print(f"{stopped.prefix}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    bc.publish(args, section(args, invocation, summary, out, time.time() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
