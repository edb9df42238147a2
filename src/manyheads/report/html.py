"""The report page: one self-contained HTML file beside its PNGs (no external script, style sheet or font)."""

from __future__ import annotations

import html
import json
import os
from typing import Any

import yaml

from .comparison import comparison_html
from .data import RunData
from .figures import Figure
from .summary import TOP_PAIRS, conflicting_pairs, many_tasks, mean_cosine, rank_rows, ranked_tasks

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } .caption { color: #555; font-size: .9em; max-width: 60em; }
.note { color: #8a6d3b; background: #fcf8e3; padding: .4em .8em; } .broken { color: #a00; font-weight: bold; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: .85em; }
details { margin: .5em 0; } summary { cursor: pointer; color: #245; }
"""

# Marks a figure that failed to load (visible to the reader, and to a headless browser via `data-figures`).
SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img.figure"), loaded = 0;
  images.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { loaded += 1; img.dataset.loaded = "yes"; return; }
    img.dataset.loaded = "no";
    var note = document.createElement("p");
    note.className = "broken";
    note.textContent = "figure " + img.getAttribute("src") + " could not be loaded";
    img.after(note);
  });
  document.body.dataset.figures = loaded + "/" + images.length;
});
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def table(rows: list[dict[str, Any]], text_columns: tuple[str, ...] = ()) -> str:
    if not rows:
        return '<p class="note">(nothing)</p>'
    headers = list(dict.fromkeys(k for r in rows for k in r))

    def cell(tag: str, key: str, value: str) -> str:
        kind = ' class="text"' if key in text_columns else ""
        return f"<{tag}{kind}>{html.escape(value)}</{tag}>"

    head = "".join(cell("th", h, h) for h in headers)
    body = "".join("<tr>" + "".join(cell("td", h, _fmt(r.get(h))) for h in headers) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def folded(summary: str, content: str, open_: bool = False) -> str:
    """`content` under a `<details>` the reader unfolds."""
    return f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>{content}</details>"


def metrics_rows(data: RunData, order: list[str] | None = None) -> list[dict[str, Any]]:
    """Per task and metric: the last logged value, the best one (with their steps) and the final evaluation;
    tasks in `order` where given."""
    entries = data.eval_logs()
    found = data.task_metrics()
    pairs = [(t, m, f"eval_{t}_{m}") for t in (order or found) for m in found.get(t, [])]
    pairs += [("(all)", "average", "eval_average"), ("(all)", "loss", "eval_loss")]
    rows = []
    for task, metric, key in pairs:
        steps, values = data.series(entries, key)
        final = (data.final_eval or {}).get(key)
        if not steps and final is None:
            continue
        higher = data.greater_is_better(task, metric) if task != "(all)" else metric != "loss"
        row: dict[str, Any] = {"task": task, "metric": metric, "better": "higher" if higher else "lower"}
        if steps:
            best = (max if higher else min)(range(len(values)), key=values.__getitem__)
            row.update({"last": values[-1], "last step": steps[-1], "best": values[best], "best step": steps[best]})
        if data.final_eval is not None:
            row["after training"] = final
        rows.append(row)
    return rows


def conflict_rows(data: RunData) -> list[dict[str, Any]]:
    if not data.conflict:
        return []
    last = data.conflict[-1]
    return [{"task": t, "grad norm on encoder": last["grad_norm"].get(t), "probe loss": last.get("loss", {}).get(t)}
            for t in last["tasks"]]


def conflict_rows_by_mean(data: RunData) -> list[dict[str, Any]]:
    """`conflict_rows` with each task's mean cosine with the others, most conflicting task first."""
    means = mean_cosine(data.conflict[-1])
    rows = [{**row, "mean cosine with the others": means.get(row["task"])} for row in conflict_rows(data)]
    return sorted(rows, key=lambda r: (r["mean cosine with the others"] is None, r["mean cosine with the others"]))


def many_tasks_html(data: RunData) -> list[str]:
    """The metrics section of a run with many tasks: every task ranked worst first (the first rows shown, all
    of them folded), then the per-metric table folded in the same order."""
    ranks = ranked_tasks(data)
    stalled = {r["task"] for r in data.stalled}
    rows = rank_rows(ranks, stalled)
    shown = 10
    columns = ("task", "main metric", "stalled")
    return ["<h2>Tasks, worst first</h2>",
            f'<p class="caption">All {len(rows)} tasks ranked by their main metric (the one in eval_average): the '
            "smallest improvement from the first to the last evaluation during training first (change: signed so "
            "that positive is better), then the worst last value. The figures below draw the first rows one by "
            "one.</p>",
            f'<div id="worst-tasks">{table(rows[:shown], columns)}</div>',
            folded(f"All {len(rows)} tasks, ranked", table(rows, columns)) if len(rows) > shown else "",
            "<h2>Metrics: last, best and after training</h2>",
            folded(f"Every metric of every task ({len(rows)} tasks, in the order above)",
                   table(metrics_rows(data, [r.task for r in ranks]), ("task", "metric", "better")))]


def stalled_html(data: RunData) -> list[str]:
    """One note per stalled task; with more than three, one note naming them all and the details folded."""
    lines = data.stalled_lines()
    if len(lines) <= 3:
        return [f'<p class="note">Stalled head: {html.escape(line)}</p>' for line in lines]
    names = ", ".join(dict.fromkeys(r["task"] for r in data.stalled))
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return [f'<p class="note" id="stalled">Stalled heads in {len(lines)} tasks: {html.escape(names)}.</p>',
            folded("Why, and the likely fixes, task by task", f"<ul>{items}</ul>")]


def config_text(data: RunData) -> str:
    if data.info and "config" in data.info:
        return yaml.safe_dump(data.info["config"], sort_keys=False, allow_unicode=True, width=110)
    state = json.loads(data.state_path.read_text(encoding="utf-8"))
    known = {k: state.get(k) for k in ("max_steps", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
                                       "num_train_epochs", "global_step")}
    return ("# No diagnostics/run.json in this run (trained before it existed, or without build_trainer);\n"
            "# tasks from the saved model and settings from trainer_state.json:\n"
            + yaml.safe_dump({"tasks": data.tasks, **known}, sort_keys=False))


def render(data: RunData, figures: list[tuple[str, Figure | str]], output_dir: str,
           comparison: dict[str, Any] | None = None) -> str:
    """The whole page; `figures` pairs a section title with its `Figure` or the reason it is missing;
    `comparison` (a `compare.json` summary in the run folder) adds the multi-task vs single-task section."""
    title = f"manyheads report: {data.run_dir.resolve().name}"
    sources = [f"log history: {os.path.relpath(data.state_path, output_dir)}"]
    sources += [f"{what}: {len(items)} measurement(s)" for what, items in
                (("update monitor", sorted({r['step'] for r in data.monitor})), ("gradient conflict", data.conflict))]
    if data.final_eval is not None:
        sources.append("final evaluation: eval_results.json")
    many = many_tasks(data)
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sources) + "</ul>", *stalled_html(data)]
    parts += many_tasks_html(data) if many else ["<h2>Metrics: last, best and after training</h2>",
                                                 table(metrics_rows(data), ("task", "metric", "better"))]
    if comparison is not None:
        parts.append(comparison_html(comparison, table))
    for section, figure in figures:
        parts.append(f"<h2>{html.escape(section)}</h2>")
        if isinstance(figure, Figure):
            parts.append(f'<img class="figure" src="{html.escape(figure.file)}" alt="{html.escape(figure.title)}">')
            parts.append(f'<p class="caption">{html.escape(figure.caption)}</p>')
        else:
            parts.append(f'<p class="note">{html.escape(figure)}</p>')
        if section == "Task-gradient conflict" and data.conflict and not many:
            parts.append(f"<p>At step {data.conflict[-1]['step']}:</p>" + table(conflict_rows(data), ("task",)))
        elif section == "Task-gradient conflict" and data.conflict:
            step = data.conflict[-1]["step"]
            parts += [f"<h3>Most conflicting pairs at step {step}</h3>",
                      f'<div id="conflicting-pairs">{table(conflicting_pairs(data.conflict[-1], TOP_PAIRS))}</div>',
                      folded(f"Every task at step {step}, most conflicting first",
                             table(conflict_rows_by_mean(data), ("task",)))]
    plan = (data.info or {}).get("plan")
    if plan:
        plan_table = table(plan, ("task", "type"))
        parts += ["<h2>Task plan</h2>", folded(f"{len(plan)} tasks", plan_table) if many else plan_table]
    parts += ["<h2>Run configuration</h2>", f"<pre>{html.escape(config_text(data))}</pre>"]
    return page(title, "\n".join(parts))


def render_comparison(folder: str, comparison: dict[str, Any]) -> str:
    """The page of a comparison folder (`manyheads compare`'s output_dir), which holds no run of its own."""
    title = f"manyheads comparison: {os.path.basename(os.path.abspath(folder))}"
    body = "\n".join([f"<h1>{html.escape(title)}</h1>",
                      f"<p>Config: {html.escape(str(comparison.get('config_file', '?')))}. Each run's own report: "
                      "<code>manyheads report FOLDER/RUN/seed-N</code>.</p>",
                      comparison_html(comparison, table)])
    return page(title, body)


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")
