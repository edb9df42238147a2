"""`manyheads report` of a 50-task tiny run reads as a summary: one ranked table, summary figures with the worst
tasks named, a clustered conflict heatmap with its most conflicting pairs; and the stalled heads are named in one
warning per evaluation (issue 27 item 5)."""

import json
import logging
from types import SimpleNamespace

import pytest

from manyheads import Classification
from manyheads.callbacks import STALLED_FILE, StalledHeadsCallback
from manyheads.recipe import build_config, build_trainer
from manyheads.report import build_report, load_run
from manyheads.report.summary import WORST_K, ranked_tasks

from .conftest import COLORS, base_config, review_rows, write_jsonl
from .test_report import render_in_chromium

TASKS = 50


def task_list(data: dict) -> list[dict]:
    """50 tasks over the same rows: sentiment, pair match and colour multi-label, in turn."""
    tasks = []
    for i in range(TASKS):
        kind = ("sentiment", "match", "colors")[i % 3]
        task = {"name": f"{kind}_{i:02d}", "type": "multilabel" if kind == "colors" else "classification",
                "text": ["text", "other"] if kind == "match" else "text", "label": kind, "data": data}
        if kind == "colors":
            task["labels"] = COLORS
        tasks.append(task)
    return tasks


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """60 steps over 50 tasks (most sampled once or twice), evaluation at steps 30 and 60, conflict and update
    monitor at the same steps, then the final evaluation; the warnings the run logged."""
    root = tmp_path_factory.mktemp("report-50")
    write_jsonl(root / "train.jsonl", review_rows(16, 1))
    write_jsonl(root / "eval.jsonl", review_rows(8, 2))
    raw = base_config(tiny_model_dir, root, root / "out", max_steps=60, logging_steps=10, eval_strategy="steps",
                      eval_steps=30, per_device_train_batch_size=4, per_device_eval_batch_size=8)
    raw["tasks"] = task_list({"train": "train.jsonl", "eval": "eval.jsonl"})
    raw["diagnostics"] = {"conflict_every": 30, "probe_batch_size": 4, "update_monitor": True, "monitor_every": 30}
    trainer = build_trainer(build_config(raw))
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StalledHeadsCallback))
    trainer.train()
    trainer.save_model()
    trainer.save_state()
    (root / "out" / "eval_results.json").write_text(json.dumps(trainer.evaluate()), encoding="utf-8")
    return SimpleNamespace(folder=root / "out", warnings=callback.warnings)


def test_the_50_task_report_is_a_summary_and_renders(run, tmp_path):
    index = build_report(run.folder)
    figures = sorted(p.name for p in index.parent.glob("*.png"))
    assert len(figures) <= 5  # one figure per section, never one per task
    page = render_in_chromium(index, tmp_path)
    assert page.body.get("data-figures") == f"{len(figures)}/{len(figures)}"
    assert all(img.get("data-loaded") == "yes" for img in page.images)
    text = index.read_text(encoding="utf-8")
    assert "Tasks, worst first" in text and "Evaluation metrics across tasks" in text
    assert "Most conflicting pairs" in text and "clustering" in text

    ranks = ranked_tasks(load_run(run.folder))
    worst, *rest = page.tables  # the first table: the worst tasks, in rank order
    header, *rows = worst
    assert header[:3] == ["rank", "task", "main metric"] and "change" in header and "after training" in header
    assert [r[1] for r in rows] == [r.task for r in ranks[:10]]
    # Ranked worst first: the smallest improvement since the first evaluation, then the worst last value.
    keys = [r.key() for r in ranks]
    assert keys == sorted(keys) and len(ranks) == TASKS
    full = next(t for t in rest if len(t) == TASKS + 1 and t[0][:2] == ["rank", "task"])
    assert [r[1] for r in full[1:]] == [r.task for r in ranks]
    # The worst tasks are named in the figures' legends: shown in the eval-metrics caption and the page.
    assert all(r.task in text for r in ranks[:WORST_K])
    pairs = next(t for t in rest if t[0] == ["task a", "task b", "cosine"])
    assert 1 <= len(pairs) - 1 <= 10
    values = [float(r[2]) for r in pairs[1:]]
    assert values == sorted(values) and all(v < 0 for v in values)
    # No table or note per metric of each task on view: the per-metric table is folded away.
    assert text.count("<details") >= 3


def test_stalled_heads_are_named_in_one_warning(run):
    records = [json.loads(line) for line in (run.folder / "diagnostics" / STALLED_FILE).read_text().splitlines()]
    flagged = {r["task"] for r in records}
    assert len(flagged) > 3
    # One warning per evaluation and kind of finding at most, each task named once, though many stay stalled.
    named = [t for message in run.warnings for t in flagged if f"'{t}'" in message]
    assert sorted(named) == sorted(flagged) and len(run.warnings) <= 4
    assert any(len([t for t in flagged if f"'{t}'" in m]) > 1 for m in run.warnings)
    stalled_at_30 = {r["task"] for r in records if r["step"] == 30}
    assert {r["task"] for r in records if r["step"] == 60} & stalled_at_30  # recorded again, warned once


def test_the_stall_warning_groups_tasks_with_the_same_finding(tmp_path, caplog):
    callback = StalledHeadsCallback(output_dir=str(tmp_path))
    tasks = {n: Classification(name=n, labels=["a", "b"]) for n in ("x", "y", "z")}
    args = SimpleNamespace(output_dir=str(tmp_path))
    metrics = {"eval_x_constant_predictions": 1.0, "eval_y_constant_predictions": 1.0,
               "eval_z_constant_predictions": 0.0, "eval_z_accuracy": 0.9}
    with caplog.at_level(logging.WARNING, logger="manyheads"):
        for step in (10, 20):
            state = SimpleNamespace(global_step=step, is_world_process_zero=True)
            callback.on_evaluate(args, state, None, model=SimpleNamespace(tasks=tasks), metrics=metrics)
    (message,) = callback.warnings
    assert message.startswith("manyheads: tasks 'x', 'y' look stalled at step 10: every row got the same prediction")
    assert message.count("Likely fixes") == 1 and "'z'" not in message
    assert len([r for r in caplog.records if "stalled" in r.getMessage()]) == 1
    records = [json.loads(line) for line in (tmp_path / STALLED_FILE).read_text().splitlines()]
    assert [(r["task"], r["step"]) for r in records] == [("x", 10), ("y", 10), ("x", 20), ("y", 20)]


def test_the_report_command_names_the_stalled_tasks_in_one_terminal_line(run, tmp_path, capsys):
    from manyheads.cli.main import main

    assert main(["report", str(run.folder), "--output", str(tmp_path / "report")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    flagged = list(dict.fromkeys(r["task"] for r in load_run(run.folder).stalled))
    assert len(warnings) == 1 and f"{len(flagged)} tasks look stalled" in warnings[0]
    assert all(f"{task}," in warnings[0] or f"{task};" in warnings[0] for task in flagged)
