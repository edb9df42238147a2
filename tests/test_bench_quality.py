"""The quality study's arithmetic (bench/quality.py, bench/_quality_report.py): its recipes at equal examples seen
(counted by `manyheads compare`'s plan), ΔMTL and the generated conclusions. No model and no data: the study's
numbers are only as good as these functions."""

from __future__ import annotations

import argparse
import json
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
    values = {"model": "m", "tasks": TASKS, "epochs": 1, "batch_size": 8, "group_batch_size": None, "scale": 1.0,
              "learning_rate": 1e-4, "lora_learning_rate": 5e-4, "adapter_learning_rate": 5e-4, "r": 8, "alpha": 16.0,
              "lora_dropout": 0.1, "warmup": 0.1, "weight_decay": 0.01, "max_length": 64, "bf16": False,
              "group_by_length": False, "class_weights": {}, "checkpoint_every": 0}
    values.update(over)
    return argparse.Namespace(**values)


def seen_by(config: str, args: argparse.Namespace, seed: int = 1) -> tuple[dict[str, int], int]:
    """Examples per task and optimizer steps of a configuration's recipe, counted by `manyheads compare`'s plan."""
    from manyheads.recipe import build_config
    from manyheads.recipe.compare_plan import multitask_examples

    run = build_config(quality.recipe(args, config, "d", TRAIN))
    return multitask_examples(run, TRAIN, seed)


def test_proportional_configurations_see_exactly_the_single_task_examples() -> None:
    args = study_args()
    for config in ("mt_proportional", "mt_uncertainty", "mt_dwa", "mt_lora", "mt_hybrid"):
        seen, steps = seen_by(config, args)
        assert seen == TRAIN, config  # one epoch, sizes are multiples of 8: what each single-task run sees
        assert steps == sum(TRAIN.values()) // 8


def test_other_configurations_keep_the_total_and_move_it_to_small_tasks() -> None:
    args = study_args()
    total = sum(TRAIN.values())
    for config in ("mt_temperature", "mt_uniform", "mt_pcgrad", "mt_upgrad"):
        seen, _ = seen_by(config, args)
        # Task-group steps hold 5 x 8 rows: their step count rounds E / 40 (here 53.6 -> 54 steps).
        assert abs(sum(seen.values()) - total) <= (0 if config in ("mt_temperature", "mt_uniform") else 20), config
        assert seen["rte"] > TRAIN["rte"] and seen["sst2"] < TRAIN["sst2"], (config, seen)
    # Task-group steps: one micro-batch of every task per step, K times fewer steps.
    assert seen_by("mt_pcgrad", args) == (dict.fromkeys(TASKS, 54 * 8), 54)
    # --group_batch_size B / K keeps the number of steps instead.
    assert seen_by("mt_upgrad", study_args(batch_size=10, group_batch_size=2))[1] == sum(
        -(-n // 10) for n in TRAIN.values())


def test_recipes_differ_only_in_what_their_configuration_names() -> None:
    args = study_args(class_weights={"cola": "auto"})
    base = quality.recipe(args, "mt_proportional", "d", TRAIN)
    assert {t["name"]: t.get("class_weights") for t in base["tasks"]} == {
        "rte": None, "mrpc": None, "stsb": None, "cola": "auto", "sst2": None}
    lora = quality.recipe(args, "mt_lora", "d", TRAIN)
    assert lora["sharing"]["mode"] == "lora" and lora["training"]["learning_rate"] == 5e-4
    hybrid = quality.recipe(args, "mt_hybrid", "d", TRAIN)
    assert hybrid["training"]["adapter_learning_rate"] == 5e-4 and hybrid["training"]["learning_rate"] == 1e-4
    dwa = quality.recipe(args, "mt_dwa", "d", TRAIN)
    assert dwa["balancing"] == {"weighting": "dwa", "weighting_kwargs": {"period": 268 // 10}}
    for other in (lora, hybrid, dwa):
        assert other["tasks"] == base["tasks"] and other["training"]["max_steps"] == base["training"]["max_steps"]


def finished_run(root: Path, name: str, seed: int, main: dict[str, float], steps: int) -> None:
    """The files `manyheads compare` and `manyheads train` leave in a finished run's folder (the ones read)."""
    folder = root / name / f"seed-{seed}"
    folder.mkdir(parents=True)
    result = {"run": name, "seed": seed, "tasks": list(main), "main": main, "max_steps": steps, "seconds": 10.0,
              "metrics": {f"eval_{t}_accuracy": v for t, v in main.items()}, "examples": dict.fromkeys(main, 16),
              "parameters": 100 * len(main)}
    (folder / "compare_result.json").write_text(json.dumps(result))
    log = [{"step": 1, **{f"weight_{t}": 1.0 + i / 10 for i, t in enumerate(main)}}, {"train_runtime": 2.0 * steps}]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    (folder / "train.log").write_text("model: 22.72M parameters, 0.37M trainable\n")


def test_rows_join_the_single_task_runs_of_a_seed(tmp_path: Path) -> None:
    finished_run(tmp_path, "single-rte", 1, {"rte": 0.5}, 2)
    finished_run(tmp_path, "single-sst2", 1, {"sst2": 0.8}, 3)
    finished_run(tmp_path, "single-rte", 2, {"rte": 0.6}, 2)  # seed 2 has no sst2 run yet: no single row
    finished_run(tmp_path, "mt_dwa", 1, {"rte": 0.6, "sst2": 0.7}, 5)
    args = argparse.Namespace(configs=["single", "mt_dwa"], tasks=["rte", "sst2"], seeds=[1, 2])
    single, multi = quality.rows_of(tmp_path, args)
    assert (single["config"], single["seed"], multi["config"]) == ("single", 1, "mt_dwa")
    assert single["tasks"]["sst2"] == {"main": 0.8, "metrics": {"accuracy": 0.8}, "seen": 16, "steps": 3}
    assert single["params"] == [100, 100] and single["optimizer_steps"] == 5 and single["wall_s"] == 20.0
    assert single["s_per_step"] == [2.0, 2.0] and single["trainable"] == pytest.approx([0.37e6, 0.37e6])
    assert multi["weights"] == {"run0": [{"step": 1, "weight_rte": 1.0, "weight_sst2": 1.1}]}
    assert multi["params"] == [200]


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
