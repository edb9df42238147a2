"""The quality study's arithmetic (bench/quality.py, bench/_quality_report.py): the equal-examples plan, ΔMTL and
the generated conclusions. No model and no data: the study's numbers are only as good as these functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _quality_report as qr  # noqa: E402
import quality  # noqa: E402

TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]
TRAIN = {"rte": 224, "mrpc": 320, "stsb": 432, "cola": 528, "sst2": 640}


def study_args(**over: object) -> argparse.Namespace:
    values = {"tasks": TASKS, "epochs": 1, "batch_size": 8, "group_batch_size": None, "mtft_split": 0.5}
    values.update(over)
    return argparse.Namespace(**values)


def seen_by(config: str, args: argparse.Namespace, seed: int = 1) -> dict[str, int]:
    out = dict.fromkeys(TASKS, 0)
    for spec in quality.plan(config, args, TRAIN):
        for task, rows in quality.seen(spec, TRAIN, seed).items():
            out[task] += rows
    return out


def test_proportional_configurations_see_exactly_the_single_task_examples() -> None:
    args = study_args()
    single = seen_by("single", args)
    assert single == TRAIN  # one epoch, sizes are multiples of 8
    for config in ("mt_proportional", "mt_uncertainty", "mt_dwa"):
        assert seen_by(config, args) == single, config
        (spec,) = quality.plan(config, args, TRAIN)
        assert spec.steps == sum(TRAIN.values()) // 8


def test_other_configurations_keep_the_total_and_move_it_to_small_tasks() -> None:
    args = study_args()
    total = sum(TRAIN.values())
    for config in ("mt_temperature", "mt_uniform", "mt_pcgrad", "mt_upgrad"):
        seen = seen_by(config, args)
        # Task-group steps hold 5 x 8 rows: their step count rounds E / 40 (here 53.6 -> 54 steps).
        assert abs(sum(seen.values()) - total) <= (0 if config in ("mt_temperature", "mt_uniform") else 20), config
        assert seen["rte"] > TRAIN["rte"] and seen["sst2"] < TRAIN["sst2"], (config, seen)
    # Task-group steps: one micro-batch of every task per step, K times fewer steps.
    assert seen_by("mt_pcgrad", args) == dict.fromkeys(TASKS, 54 * 8)
    (spec,) = quality.plan("mt_upgrad", args, TRAIN)
    assert spec.steps == 54


def test_finetune_splits_the_budget_between_the_phases() -> None:
    args = study_args()
    specs = quality.plan("mt_finetune", args, TRAIN)
    assert [s.evaluate for s in specs] == [False] + [True] * 5
    assert specs[0].steps == round(0.5 * sum(TRAIN.values()) / 8)
    assert [s.steps for s in specs[1:]] == [round(0.5 * TRAIN[t] / 8) for t in TASKS]
    assert all(s.from_multitask for s in specs[1:])
    assert sum(seen_by("mt_finetune", args).values()) == sum(TRAIN.values())


def row(config: str, seed: int, scores: dict[str, float]) -> dict[str, object]:
    return {"config": config, "seed": seed, "tasks": {t: {"main": v} for t, v in scores.items()}}


def test_delta_mtl_is_the_mean_relative_gain_and_keeps_its_sign_on_a_negative_baseline() -> None:
    tasks = ["rte", "cola"]
    rows = [row("single", 1, {"rte": 0.50, "cola": -0.10}), row("single", 2, {"rte": 0.60, "cola": -0.10}),
            row("mt_proportional", 1, {"rte": 0.66, "cola": 0.0}),
            row("mt_proportional", 2, {"rte": 0.55, "cola": -0.2})]
    stats = qr.table_stats(rows, tasks)
    # Seed 1: rte (0.66 - 0.55) / 0.55 = +20 %, cola (0 - (-0.1)) / 0.1 = +100 % -> +60 %.
    # Seed 2: rte 0 %, cola (-0.2 + 0.1) / 0.1 = -100 % -> -50 %.
    assert stats["mt_proportional"]["delta"].values == pytest.approx([0.60, -0.50])
    assert stats["single"]["delta"].values == pytest.approx([-0.5 * 0.05 / 0.55, 0.5 * 0.05 / 0.55])
    assert stats["mt_proportional"]["average"].values == pytest.approx([0.33, 0.175])
    # A zero single-task mean (CoLA's MCC of a majority-class model) is left out of ΔMTL, and said so.
    zero = [row("single", 1, {"rte": 0.5, "cola": 0.0}), row("mt_uniform", 1, {"rte": 0.6, "cola": 0.2})]
    stats = qr.table_stats(zero, tasks)
    assert stats["mt_uniform"]["delta"].values == pytest.approx([0.2])
    assert "left out (no or zero single-task mean): cola" in qr.delta_note(stats, tasks)[0]


def test_difference_is_clear_only_beyond_two_standard_errors() -> None:
    base = qr.Stat([0.50, 0.52, 0.54])  # sd 0.02
    assert "larger than the seeds' spread" in qr.difference_text(qr.Stat([0.60, 0.62, 0.64]), base)
    assert "within the seeds' spread" in qr.difference_text(qr.Stat([0.51, 0.53, 0.55]), base)
    assert "one seed" in qr.difference_text(qr.Stat([0.6]), base)


def test_conclusions_name_the_winner_and_where_multitask_did_not_help() -> None:
    tasks = ["rte", "sst2"]
    rows = []
    for seed, noise in enumerate((0.0, 0.01, -0.01), start=1):
        rows.append(row("single", seed, {"rte": 0.55 + noise, "sst2": 0.80 + noise}))
        rows.append(row("mt_proportional", seed, {"rte": 0.60 + noise, "sst2": 0.78 + noise}))
        rows.append(row("mt_uniform", seed, {"rte": 0.62 + noise, "sst2": 0.75 + noise}))
    for r in rows:
        r["params"] = [100] * (2 if r["config"] == "single" else 1)
    lines = qr.verdict_lines(qr.table_stats(rows, tasks), tasks)
    text = "\n".join(lines)
    assert "**rte** (acc): best is `mt_uniform` (62.0 ± 1.0); vs single-task (55.0 ± 1.0): +7.0 points" in text
    assert "**sst2** (acc): best is `single`" in text and "single-task wins" in text
    assert "sst2: no multi-task configuration beat single-task (80.0 ± 1.0)." in text
    assert "rte: every multi-task configuration scored above single-task" in text
    target = qr.target_line(qr.table_stats(rows, tasks), rows)[0]
    # Averages: single 67.5, proportional 69.0, uniform 68.5 -> met, with 1/2 of the parameters.
    assert "**met**; best one-model configuration `mt_proportional` 69.0 ± 1.0 vs single-task 67.5 ± 1.0" in target
    assert "= 1/2.00" in target


def test_identical_scores_have_no_winner_and_constant_runs_are_counted() -> None:
    tasks = ["cola", "sst2"]
    rows = []
    for seed in (1, 2):
        for config, sst2 in (("single", 0.70), ("mt_pcgrad", 0.75)):
            r = row(config, seed, {"cola": 0.0, "sst2": sst2 + seed / 100})
            r["tasks"]["cola"]["metrics"] = {"mcc": 0.0}
            r["tasks"]["sst2"]["metrics"] = {"mcc": 0.0 if config == "single" and seed == 1 else 0.4}
            r["optimizer_steps"] = 100 if config == "single" else 20
            rows.append(r)
    text = "\n".join(qr.verdict_lines(qr.table_stats(rows, tasks), tasks))
    assert "**cola** (MCC): every run of every configuration scored exactly 0.0" in text
    assert "cola: every configuration scored the same as single-task (0.0 ± 0.0): no winner." in text
    assert "**sst2** (acc): best is `mt_pcgrad`" in text
    (constant,) = qr.constant_lines(rows, tasks)
    assert "`single` cola 2/2, sst2 1/2; `mt_pcgrad` cola 2/2." in constant
    (steps,) = qr.steps_line(rows)
    assert "`mt_pcgrad` (20) vs 100 for single-task" in steps


def test_class_weights_go_to_the_named_classification_task_only(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        # --model: a fresh test environment has no MiniLM package (the default model).
        quality.parse_args(["--data_dir", str(tmp_path), "--model", "m", "--class_weights", "stsb=auto", "cola=often"])
    err = capsys.readouterr().err
    assert "--class_weights stsb=auto cola=often" in err and "rte, mrpc, cola, sst2" in err
    for task in ("rte", "mrpc"):  # parse_args only checks that the files exist
        for split in ("train.tsv", "dev.tsv"):
            (tmp_path / task).mkdir(exist_ok=True)
            (tmp_path / task / split).touch()
    kept = quality.parse_args(["--data_dir", str(tmp_path), "--model", "m", "--tasks", "rte", "mrpc", "--class_weights",
                               "cola=auto", "mrpc=auto", "rte=none"])
    assert kept.class_weights == {"mrpc": "auto"}  # cola is not trained; none is the default
    args = argparse.Namespace(model="m", learning_rate=5e-5, warmup=0.1, weight_decay=0.01, bf16=False,
                              max_length=64, group_by_length=False, class_weights={"cola": "auto"})
    ctx = quality.Context(args=args, data_dir="d", prepared=None, train=TRAIN, rows_dir=tmp_path, settings={})
    config = quality.run_dict(ctx, quality.RunSpec(["cola", "sst2"], 8, 10), 1, str(tmp_path))
    weights = {task["name"]: task.get("class_weights") for task in config["tasks"]}
    assert weights == {"cola": "auto", "sst2": None}


def test_logged_task_weights_are_summarised_for_weighting_methods_only() -> None:
    tasks = ["rte", "sst2"]
    flat = [{"step": s, "weight_rte": 1.0, "weight_sst2": 1.0} for s in (10, 20)]
    dwa = [{"step": 10, "weight_rte": 1.0, "weight_sst2": 1.0}, {"step": 20, "weight_rte": 1.04, "weight_sst2": 0.96}]
    rows = [row("mt_proportional", 1, {"rte": 0.6, "sst2": 0.8}), row("mt_dwa", 1, {"rte": 0.6, "sst2": 0.8}),
            row("mt_dwa", 2, {"rte": 0.6, "sst2": 0.8}), row("single", 1, {"rte": 0.6, "sst2": 0.8})]
    rows[0]["weights"] = {"run0": flat}
    rows[1]["weights"] = {"run0": dwa}
    rows[2]["weights"] = {"run0": [{"step": 20, "weight_rte": 0.9, "weight_sst2": 1.1}]}
    (line,) = qr.weights_lines(rows, tasks)
    assert "`mt_dwa` (2 seed(s)): rte 0.900–1.040, sst2 0.960–1.100." in line
    assert "mt_proportional" not in line  # all weights exactly 1: nothing to say
    rows[1]["weights"] = rows[2]["weights"] = {}
    assert qr.weights_lines(rows, tasks) == []  # rows from before the weights were kept


def test_single_task_rows_alone_get_no_verdicts() -> None:
    rows = [row("single", 1, {"rte": 0.57, "sst2": 0.8})]
    assert qr.verdict_lines(qr.table_stats(rows, ["rte", "sst2"]), ["rte", "sst2"]) == []  # one run: no "winner"
    rows.append(row("single", 2, {"rte": 0.57, "sst2": 0.8}))
    lines = qr.verdict_lines(qr.table_stats(rows, ["rte", "sst2"]), ["rte", "sst2"])
    assert lines[0].startswith("- **rte** (acc): every run of every configuration scored exactly 57.0")
    assert not any("Where multi-task did not help" in line for line in lines)  # no multi-task rows
