"""The comparison section of a report: `compare.json`, written by `manyheads compare`, as HTML tables.

The report only shows what `compare.json` holds (verdicts included); the arithmetic lives with the command.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

COMPARE_FILE = "compare.json"
COMPARE_MARKDOWN = "compare.md"


def load_comparison(folder: str | Path) -> dict[str, Any] | None:
    """The comparison summary in `folder`, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(folder) / COMPARE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _side(side: dict[str, Any]) -> str:
    return f"{side['mean']:.4f}" + (f" ± {side['sd']:.4f}" if side.get("sd") is not None else "")


def comparison_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task: main metric, both means ± sd, difference, spread and verdict."""
    return [{"task": row["task"],
             "main metric": f"{row['metric']} ({'higher' if row['greater_is_better'] else 'lower'} is better)",
             "multi-task": _side(row["multi_task"]), "single-task": _side(row["single_task"]),
             "difference": f"{row['difference']:+.4f}", "seeds' spread": row["spread"], "verdict": row["verdict"]}
            for row in summary.get("tasks", [])]


def configuration_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """With `--groups` / `--finetune`: one row per configuration per task, each against single-task."""
    rows = []
    for config in summary.get("configurations") or []:
        baseline = config.get("kind") == "single_task"
        for row in config.get("rows", []):
            rows.append({"configuration": config["name"], "task": row["task"],
                         "main metric": f"{row['metric']} ({'higher' if row['greater_is_better'] else 'lower'} is "
                                        "better)",
                         "score": _side(row["score"]), "single-task": _side(row["single_task"]),
                         "difference": "–" if baseline else f"{row['difference']:+.4f}",
                         "seeds' spread": "–" if baseline else row["spread"],
                         "verdict": "(baseline)" if baseline else row["verdict"]})
    return rows


def configuration_notes(summary: dict[str, Any]) -> list[str]:
    """ΔMTL and stored parameters per configuration, as sentences."""
    notes = []
    for config in summary.get("configurations") or []:
        delta, text = config.get("delta_mtl") or {}, config["name"] + ":"
        if delta.get("percent") is not None and config.get("kind") != "single_task":
            text += f" ΔMTL {delta['percent']:+.2f} % over {', '.join(delta['tasks'])};"
        if config.get("parameters"):
            text += f" {config['parameters']:,} stored parameters in {config['models']} model(s)."
        notes.append(text.rstrip(";:"))
    return notes


def comparison_notes(summary: dict[str, Any]) -> list[str]:
    """ΔMTL, stored parameters and the verdict rule, as sentences."""
    notes = []
    delta = summary.get("delta_mtl") or {}
    if delta.get("percent") is not None:
        notes.append(f"ΔMTL {delta['percent']:+.2f} % over {', '.join(delta['tasks'])} (mean relative gain of "
                     "multi-task over single-task, sign flipped where lower is better).")
    params = summary.get("parameters") or {}
    if params.get("multi_task") and params.get("single_task_total"):
        notes.append(f"Stored parameters: {params['multi_task']:,} in one multi-task model vs "
                     f"{params['single_task_total']:,} in {params['single_task_models']} single-task models.")
    if summary.get("rule"):
        notes.append(f"Verdict rule: {summary['rule']}")
    return notes


def comparison_html(summary: dict[str, Any], table: Any) -> str:
    """The section's HTML; `table` renders dict rows (report.html.table)."""
    seeds = ", ".join(map(str, summary.get("seeds", [])))
    parts = ["<h2>Multi-task vs single-task</h2>",
             f'<p class="caption">From {COMPARE_FILE}: main metric per task, mean ± sd over seeds '
             f"{html.escape(seeds)}, each single-task run trained on as many examples of its task as the multi-task "
             "run.</p>",
             table(comparison_rows(summary), ("task", "main metric", "seeds' spread", "verdict"))]
    parts += [f"<p>{html.escape(note)}</p>" for note in comparison_notes(summary)]
    if summary.get("configurations"):
        parts += ["<h3>Every configuration</h3>",
                  '<p class="caption">Multi-task, each group, fine-tuned (MT-DNN) and single-task, one row per '
                  "task, each against single-task at equal examples per task.</p>",
                  table(configuration_rows(summary), ("configuration", "task", "main metric", "seeds' spread",
                                                      "verdict"))]
        parts += [f"<p>{html.escape(note)}</p>" for note in configuration_notes(summary)]
    runs = summary.get("runs") or []
    if runs:
        rows = [{"run": f"{r['run']} seed {r['seed']}", "folder": r["folder"], "seconds": r.get("seconds"),
                 **{f"{task}": value for task, value in r["main"].items()}} for r in runs]
        parts += ["<h3>Runs</h3>", table(rows, ("run", "folder"))]
    return "\n".join(parts)
