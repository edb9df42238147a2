"""`manyheads compare`: multi-task vs each task alone at equal examples seen, over seeds, resumable.

One comparison of two tiny tasks with two seeds is trained once (in this process, `--jobs 1`) and shared by the
tests that read it; the resume test continues a damaged copy of it with `--jobs 2` (subprocesses).
"""

from __future__ import annotations

import collections
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from manyheads.cli.main import main
from manyheads.recipe.compare_plan import micro_batches_per_epoch, single_task_steps
from manyheads.recipe.compare_table import HELPED, HURT, UNCLEAR, compare_values, delta_mtl, summarize
from manyheads.report import build_report

from .conftest import review_rows, write_jsonl

SEEDS = ["1", "2"]
RUNS = ["mt", "single-sentiment", "single-score"]
TRAIN = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "max_steps": 10, "learning_rate": 1e-3,
         "logging_steps": 5, "report_to": "none", "save_strategy": "steps", "save_steps": 4, "use_cpu": True,
         "seed": 7}


def write_config(folder: Path, model_dir: str, **training: object) -> Path:
    """Two tasks of unequal size (64 and 36 rows: 8 + 5 micro-batches of 8 per epoch, so with accumulation 2 each
    epoch ends with a one-micro-batch step), temperature sampling, relative data paths."""
    write_jsonl(folder / "train.jsonl", review_rows(64, 1))
    write_jsonl(folder / "eval.jsonl", review_rows(24, 2))
    data = {"train": "train.jsonl", "eval": "eval.jsonl"}
    config = {"model": model_dir, "max_length": 32, "sampling": {"strategy": "temperature", "temperature": 2.0},
              "tasks": [{"name": "sentiment", "type": "classification", "text": "text", "label": "sentiment",
                         "data": data},
                        {"name": "score", "type": "regression", "text": "text", "label": "score", "main_metric": "mse",
                         "data": {**data, "max_train_samples": 36}}],
              "training": {**TRAIN, **training}}
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def compare(config: Path, output_dir: Path, *more: str) -> list[str]:
    return ["compare", str(config), "--seeds", *SEEDS, "--output_dir", str(output_dir), *more]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished comparison, with the examples each training run really drew per task (counted in the loss)."""
    from manyheads.trainer import MultiTaskTrainer

    folder = tmp_path_factory.mktemp("compare")
    config = write_config(folder, tiny_model_dir)
    seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    original = MultiTaskTrainer.compute_loss

    def counting(self, model, inputs, *args, **kwargs):
        if model.training:
            seen[str(Path(self.args.output_dir).relative_to(folder / "out"))][inputs["task"]] += \
                len(inputs["input_ids"])
        return original(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MultiTaskTrainer, "compute_loss", counting)
        import io
        from contextlib import redirect_stdout

        printed = io.StringIO()
        with redirect_stdout(printed):
            code = main(compare(config, folder / "out"))
    assert code == 0, printed.getvalue()
    return {"config": config, "out": folder / "out", "seen": seen, "printed": printed.getvalue()}


def results(out: Path) -> dict[str, dict]:
    return {f"{run}/seed-{seed}": json.loads((out / run / f"seed-{seed}" / "compare_result.json").read_text())
            for run in RUNS for seed in SEEDS}


def test_compare_trains_both_models_per_seed_and_writes_the_table(finished):
    out = finished["out"]
    summary = json.loads((out / "compare.json").read_text())
    per_run = results(out)
    assert [row["task"] for row in summary["tasks"]] == ["sentiment", "score"]
    for row in summary["tasks"]:
        task = row["task"]
        multi = [per_run[f"mt/seed-{s}"]["main"][task] for s in SEEDS]
        single = [per_run[f"single-{task}/seed-{s}"]["main"][task] for s in SEEDS]
        # The table's numbers are the runs' final evaluations (eval_results.json), seed by seed.
        assert row["multi_task"]["values"] == multi and row["single_task"]["values"] == single
        for s, value in zip(SEEDS, multi):
            metrics = json.loads((out / "mt" / f"seed-{s}" / "eval_results.json").read_text())
            assert metrics[f"eval_{task}_{row['metric']}"] == value
        assert row["multi_task"]["mean"] == pytest.approx(sum(multi) / 2)
        assert row["difference"] == pytest.approx(sum(multi) / 2 - sum(single) / 2)
        assert row["verdict"] in (HELPED, HURT, UNCLEAR)
        assert isinstance(row["multi_task"]["sd"], float) and isinstance(row["single_task"]["sd"], float)
    sentiment, score = summary["tasks"]
    assert (sentiment["metric"], sentiment["greater_is_better"]) == ("accuracy", True)
    assert (score["metric"], score["greater_is_better"]) == ("mse", False)
    assert all(0.0 <= v <= 1.0 for v in sentiment["multi_task"]["values"] + sentiment["single_task"]["values"])
    assert all(0.0 <= v < 100.0 for v in score["multi_task"]["values"] + score["single_task"]["values"])
    # ΔMTL from the means: accuracy counts up, mse down.
    gains = [(sentiment["multi_task"]["mean"] - sentiment["single_task"]["mean"]) / sentiment["single_task"]["mean"],
             -(score["multi_task"]["mean"] - score["single_task"]["mean"]) / score["single_task"]["mean"]]
    assert summary["delta_mtl"]["percent"] == pytest.approx(100 * sum(gains) / 2)
    # One encoder plus two heads, against two encoders with a head each.
    params = summary["parameters"]
    assert params["multi_task"] == per_run["mt/seed-1"]["parameters"]
    assert params["single_task_total"] == sum(per_run[f"single-{t}/seed-1"]["parameters"] for t in ("sentiment",
                                                                                                      "score"))
    assert params["multi_task"] < params["single_task_total"] < 2 * params["multi_task"]
    markdown = (out / "compare.md").read_text()
    for row in summary["tasks"]:
        assert f"| {row['task']} | {row['metric']} " in markdown and f"**{row['verdict']}**" in markdown
    assert "ΔMTL" in markdown and "Stored parameters" in markdown
    assert "[6/6] " in finished["printed"] and "single-score seed 2: done in" in finished["printed"]


def test_each_single_task_run_sees_as_many_examples_as_the_multitask_run_gave_its_task(finished):
    out, seen = finished["out"], finished["seen"]
    summary = json.loads((out / "compare.json").read_text())
    step = 8 * 2  # batch x accumulation
    for seed in SEEDS:
        drawn = seen[f"mt/seed-{seed}"]
        # The plan's count is what the Trainer really drew (19 micro-batches of 8: 13 in epoch 0, 6 in epoch 1).
        assert sum(drawn.values()) == 19 * 8
        for task in ("sentiment", "score"):
            assert summary["examples"][task]["multi_task"][seed] == drawn[task]
            single = seen[f"single-{task}/seed-{seed}"][task]
            assert summary["examples"][task]["single_task"][seed] == single
            assert drawn[task] <= single < drawn[task] + step
    # Temperature sampling favours the small task relative to its size (36 of 100 rows).
    assert seen["mt/seed-1"]["score"] / (19 * 8) > 0.36


def test_the_report_of_a_comparison_folder_shows_the_verdicts(finished, tmp_path):
    summary = json.loads((finished["out"] / "compare.json").read_text())
    page = build_report(finished["out"], tmp_path / "report").read_text()
    assert "Multi-task vs single-task" in page
    for row in summary["tasks"]:
        assert row["verdict"] in page and f"{row['multi_task']['mean']:.4f}" in page
    # A run folder that holds compare.json: its own report, plus the comparison section.
    run = tmp_path / "run"
    shutil.copytree(finished["out"] / "mt" / "seed-1", run)
    shutil.copy(finished["out"] / "compare.json", run / "compare.json")
    page = build_report(run, tmp_path / "run-report").read_text()
    assert "Metrics: last, best and after training" in page and "Multi-task vs single-task" in page
    assert summary["tasks"][0]["verdict"] in page


def test_an_interrupted_comparison_resumes_without_retraining_finished_runs(finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    before = results(out)
    # mt seed 2 was killed while saving its checkpoint at step 8 (no completeness marker); its checkpoint of the
    # last step (10) is not resumed from either (Trainer would train an 11th step). single-score seed 1 had not
    # started.
    interrupted = out / "mt" / "seed-2"
    for name in ("compare_result.json", "model.safetensors", "eval_results.json", "trainer_state.json",
                 "checkpoint-8/manyheads_complete"):
        (interrupted / name).unlink()
    assert (interrupted / "checkpoint-10" / "manyheads_complete").is_file()
    shutil.rmtree(out / "single-score" / "seed-1")
    kept = {f"{run}/seed-{seed}" for run in RUNS for seed in SEEDS} - {"mt/seed-2", "single-score/seed-1"}
    stamps = {key: [(p, p.stat().st_mtime_ns) for p in (out / key).rglob("*") if p.is_file()] for key in kept}

    assert main(compare(finished["config"], out, "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 4
    assert "mt seed 2: resuming from checkpoint-4" in printed and "single-score seed 1: training" in printed
    assert "[6/6] " in printed
    for key, files in stamps.items():  # finished runs: not a file touched
        assert [(p, p.stat().st_mtime_ns) for p, _ in files] == files, key
    state = json.loads((interrupted / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-4",
                                                                          "checkpoint-8"]
    assert (interrupted / "checkpoint-8" / "manyheads_complete").is_file()  # saved again, completely
    assert "--resume" in (interrupted / "train.log").read_text()
    after = results(out)
    # Resuming is exact, and a run trained again from the start repeats itself (same seed, same data).
    for key in ("mt/seed-2", "single-score/seed-1"):
        for task, value in before[key]["main"].items():
            assert after[key]["main"][task] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert after["mt/seed-2"]["resumed_from"] == "checkpoint-4"
    assert json.loads((out / "compare.json").read_text())["runs"][4]["run"] == "single-sentiment"


def test_a_folder_holding_another_comparison_is_refused(finished, tmp_path, capsys):
    out = finished["out"]
    plan_before = (out / "compare_plan.json").read_text()
    assert main(compare(finished["config"], out, "--learning_rate", "0.01")) == 2
    error = capsys.readouterr().err
    assert (f"--output_dir: {out} holds a comparison of a different config (config keys that differ: "
            "learning_rate)") in error
    assert main(["compare", str(finished["config"]), "--seeds", "1", "3", "--output_dir", str(out)]) == 2
    assert "seeds [1, 2] there, [1, 3] now" in capsys.readouterr().err
    assert (out / "compare_plan.json").read_text() == plan_before
    (tmp_path / "notes.txt").write_text("mine")
    assert main(compare(finished["config"], tmp_path)) == 2
    assert f"{tmp_path} is not empty and holds no comparison" in capsys.readouterr().err


# ----- the arithmetic, on made-up numbers -----
def test_verdicts_follow_welchs_test_and_the_metrics_direction():
    helped = compare_values([0.80, 0.81, 0.82], [0.70, 0.71, 0.72])
    assert (helped.verdict, helped.clear) == (HELPED, True) and helped.p_value < 0.001
    assert helped.difference == pytest.approx(0.10) and "beyond the seeds' spread" in helped.spread
    assert compare_values([0.70, 0.71, 0.72], [0.80, 0.81, 0.82]).verdict == HURT
    within = compare_values([0.70, 0.75, 0.80], [0.71, 0.74, 0.78])
    assert (within.verdict, within.clear) == (UNCLEAR, False) and "within the seeds' spread" in within.spread
    # mse: lower is better, so a lower multi-task value helped (negative difference, positive gain).
    lower = compare_values([0.50, 0.51, 0.52], [0.80, 0.81, 0.82], greater_is_better=False)
    assert lower.verdict == HELPED and lower.difference < 0 < lower.gain
    assert compare_values([0.80, 0.81, 0.82], [0.50, 0.51, 0.52], greater_is_better=False).verdict == HURT
    # Two seeds with a big but noisy gap: Welch's test has ~1 degree of freedom and claims nothing.
    assert compare_values([0.60, 0.80], [0.50, 0.62]).verdict == UNCLEAR
    one = compare_values([0.9], [0.5])
    assert one.verdict == "no clear difference (1 seed: spread unknown)" and one.clear is None
    assert one.spread == "unknown (1 seed)"
    # No spread at all: equal means are no difference, different ones are clear.
    assert compare_values([0.5, 0.5], [0.5, 0.5]).verdict == UNCLEAR
    assert compare_values([0.6, 0.6], [0.5, 0.5]).verdict == HELPED


def test_summary_delta_mtl_and_parameters_on_made_up_rows():
    def row(kind, seed, main, parameters):
        return {"kind": kind, "seed": seed, "main": main, "parameters": parameters,
                "main_metric": {"a": "accuracy", "b": "mse", "c": "mcc"},
                "greater_is_better": {"a": True, "b": False, "c": True}}

    rows = [row("multi_task", 1, {"a": 0.66, "b": 0.9, "c": 0.2}, 120),
            row("multi_task", 2, {"a": 0.54, "b": 1.1, "c": 0.2}, 120),
            row("single_task", 1, {"a": 0.50}, 100), row("single_task", 2, {"a": 0.50}, 100),
            row("single_task", 1, {"b": 2.0}, 100), row("single_task", 2, {"b": 2.0}, 100),
            row("single_task", 1, {"c": 0.0}, 100), row("single_task", 2, {"c": 0.0}, 100)]
    summary = summarize(rows)
    # a: (0.60 - 0.50) / 0.50 = +20 %; b (lower is better): -(1.0 - 2.0) / 2.0 = +50 %; c: single-task mean 0,
    # so its relative gain is undefined and it is left out.
    assert summary["delta_mtl"]["percent"] == pytest.approx(35.0)
    assert summary["delta_mtl"]["tasks"] == ["a", "b"] and summary["delta_mtl"]["left_out"] == ["c"]
    assert summary["delta_mtl"]["per_seed_percent"] == pytest.approx([(32 + 55) / 2, (8 + 45) / 2])
    assert summary["parameters"] == {"multi_task": 120, "single_task_total": 300, "single_task_models": 3}
    assert [r["task"] for r in summary["tasks"]] == ["a", "b", "c"]
    assert summary["seeds"] == [1, 2]
    assert delta_mtl({"a": 1.0}, {"a": 0.0}, {"a": True}) == (None, [])


def test_micro_batches_follow_trainers_epoch_ends_and_single_task_steps_reach_the_count():
    # 13 micro-batches per epoch, 2 per step: 7 steps an epoch, the last with 1 micro-batch.
    assert micro_batches_per_epoch(13, 2, 10) == [13, 6]
    assert micro_batches_per_epoch(13, 2, 14) == [13, 13]
    assert micro_batches_per_epoch(4, 1, 3) == [3]
    # 36 rows in batches of 8: 5 micro-batches an epoch (2 + 2 + 1 with accumulation 2).
    for examples in (8, 40, 41, 96, 120):
        steps = single_task_steps(36, examples, 8, 2)
        reached = 8 * sum(micro_batches_per_epoch(5, 2, steps))
        assert reached >= examples > 8 * sum(micro_batches_per_epoch(5, 2, steps - 1))
    assert math.isclose(single_task_steps(64, 64, 8, 1), 8)


def test_alone_plans_single_task_runs_only_for_the_named_tasks(tiny_model_dir, tmp_path):
    from manyheads.errors import ConfigError
    from manyheads.recipe.compare_plan import plan_comparison

    config = write_config(tmp_path, tiny_model_dir)
    every = plan_comparison(str(config), [], [1, 2], tmp_path / "a")
    only = plan_comparison(str(config), [], [1, 2], tmp_path / "b", alone=["score"])
    assert [r.key for r in only.runs] == ["mt/seed-1", "single-score/seed-1", "mt/seed-2", "single-score/seed-2"]
    # The same multi-task run and the same budget for the task trained alone; another identity (another folder).
    assert [(r.key, r.examples, r.max_steps) for r in only.runs] == \
        [(r.key, r.examples, r.max_steps) for r in every.runs if r.name != "single-sentiment"]
    assert only.config_hash != every.config_hash
    with pytest.raises(ConfigError, match=r"--alone: \['nope'\]; give one or more different tasks of the config: "
                                          r"sentiment, score"):
        plan_comparison(str(config), [], [1], tmp_path / "c", alone=["nope"])


def test_plan_only_prints_every_run_and_trains_nothing(tiny_model_dir, tmp_path, capsys):
    config = write_config(tmp_path, tiny_model_dir)
    assert main(compare(config, tmp_path / "out", "--seeds", "1", "2", "--plan_only")) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "seed-" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == ["mt/seed-1", "single-sentiment/seed-1", "single-score/seed-1",
                                                         "mt/seed-2", "single-sentiment/seed-2", "single-score/seed-2"]
    assert "nothing trained: --plan_only" in out and "total:" in out
    assert not (tmp_path / "out").exists()
