"""`compare.json` and `compare.md` of a comparison, from its finished runs' results (`compare_result.json`).

Without `--groups` and `--finetune` they hold the multi-task vs single-task table (`compare_table.summarize`); with
either, also `configurations`: one entry per configuration (multi-task, each group, fine-tuned, single-task) with
one row per task, its ΔMTL and its stored parameters (`compare_table.summarize_configurations`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..report.comparison import COMPARE_FILE, COMPARE_MARKDOWN
from .compare_groups import FINE_TUNED, GROUP, describe_finetune
from .compare_plan import MULTI_TASK, RESULT_FILE, SINGLE_TASK, Comparison, write_json
from .compare_table import configurations_table, markdown_table, summarize, summarize_configurations


def read_result(folder: Path) -> dict[str, Any] | None:
    """A finished run's result, or None when it has not finished (or its result file is unreadable)."""
    try:
        return json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_summary(comparison: Comparison) -> dict[str, Any]:
    """`compare.json` and `compare.md` from the finished runs' results."""
    results = [read_result(comparison.folder(p)) for p in comparison.runs]
    finished = [r for r in results if r is not None]
    summary = summarize(finished)
    tasks = next(r.tasks for r in comparison.runs if r.kind == MULTI_TASK)
    more = bool(comparison.groups) or comparison.finetune is not None
    kinds = (MULTI_TASK, *((GROUP,) if comparison.groups else ()),
             *((FINE_TUNED,) if comparison.finetune is not None else ()), SINGLE_TASK)
    summary.update({
        "config_file": str(comparison.config_path), "config_hash": comparison.config_hash,
        # Training examples (features) per task and seed; a single-task run rounds up to whole optimizer steps.
        "examples": {t: {kind: {str(r.seed): r.examples[t] for r in comparison.runs if r.kind == kind
                                and t in r.examples} for kind in kinds} for t in tasks},
        "runs": [{"folder": f"{p.name}/seed-{p.seed}", "run": p.name, "seed": p.seed, "main": r["main"],
                  "seconds": r["seconds"], "parameters": r["parameters"], "max_steps": r["max_steps"],
                  **({"best_steps": r["best_steps"]} if "best_steps" in r else {})}
                 for p, r in zip(comparison.runs, results) if r is not None],
    })
    if more:
        summary["configurations"] = summarize_configurations(finished)
        summary["groups"] = comparison.groups
        summary["finetune"] = {"budget": comparison.finetune, "rule": describe_finetune(comparison.finetune)} \
            if comparison.finetune is not None else None
    write_json(comparison.output_dir / COMPARE_FILE, summary)
    headers = {MULTI_TASK: "multi-task", GROUP: "group", FINE_TUNED: "fine-tuned", SINGLE_TASK: "single-task"}
    seen = ["| task | examples seen, " + " | ".join(headers[k] for k in kinds) + " |",
            "|---|" + "---:|" * len(kinds)] if more else \
        ["| task | examples seen, multi-task | single-task |", "|---|---:|---:|"]
    for task, by_kind in summary["examples"].items():
        seen.append(f"| {task} | " + " | ".join(", ".join(str(by_kind[k].get(str(s), "–")) for s in summary["seeds"])
                                                for k in kinds) + " |")
    lines = [f"# manyheads compare: {comparison.config_path}", "",
             f"Main metric per task on its eval split, mean ± sd over seeds {', '.join(map(str, summary['seeds']))}; "
             "the difference is multi-task minus single-task.", "", *markdown_table(summary), ""]
    if more:
        lines += ["## Every configuration", "",
                  "Each configuration against single-task (difference: the configuration minus single-task). "
                  + (f"Groups: {'; '.join(', '.join(g) for g in comparison.groups)} (the other tasks alone). "
                     if comparison.groups else "")
                  + (f"Fine-tuned (MT-DNN): each task trained alone from the multi-task model, "
                     f"{describe_finetune(comparison.finetune)}." if comparison.finetune is not None else ""), "",
                  *configurations_table(summary["configurations"]), ""]
    picked = [run for run in summary["runs"] if "best_steps" in run]
    if picked:
        lines += ["Steps the heads come from (`best_head_per_task`: in multi-task and group runs each task's head "
                  "from its best evaluation, the encoder the last step's; single-task and fine-tuned runs keep their "
                  "whole model from that step):", "",
                  "| run | seed | step of each task's best evaluation |", "|---|---:|---|",
                  *[f"| {r['run']} | {r['seed']} | " + ", ".join(f"{t} {s}" for t, s in r["best_steps"].items()) + " |"
                    for r in picked], ""]
    lines += ["Training examples per task (per seed, in seed order; a single-task run rounds up to whole optimizer "
              "steps):", "", *seen, ""]
    (comparison.output_dir / COMPARE_MARKDOWN).write_text("\n".join(lines), encoding="utf-8")
    return summary
