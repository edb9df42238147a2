"""`manyheads compare --groups ... --finetune`: task groups and MT-DNN fine-tuning beside all-in-one and each-alone.

One comparison of three tiny tasks (a group of two, fine-tuning, two seeds) is trained once in this process and
shared by the tests that read it; the resume test continues a damaged copy of it with `--jobs 2`.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.recipe.compare_groups import check_groups, parse_finetune, read_groups
from manyheads.recipe.compare_plan import plan_comparison
from manyheads.report import build_report

from .conftest import review_rows, write_jsonl

SEEDS = ["1", "2"]
TASKS = ["sentiment", "score", "red"]
GROUP = "group-sentiment+score"
TRAIN = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 6, "learning_rate": 1e-3,
         "logging_steps": 3, "report_to": "none", "save_strategy": "steps", "save_steps": 3, "use_cpu": True}


def write_config(folder: Path, model_dir: str, strategy: str = "proportional") -> Path:
    """Three tasks of unequal size (48, 24 and 32 rows), proportional sampling."""
    write_jsonl(folder / "train.jsonl", review_rows(48, 1))
    write_jsonl(folder / "eval.jsonl", review_rows(16, 2))
    data = {"train": "train.jsonl", "eval": "eval.jsonl"}
    config = {"model": model_dir, "max_length": 32, "sampling_strategy": strategy,
              "tasks": [{"name": "sentiment", "type": "classification", "text": "text", "label": "sentiment",
                         "data": data},
                        {"name": "score", "type": "regression", "text": "text", "label": "score", "main_metric": "mse",
                         "data": {**data, "max_train_samples": 24}},
                        {"name": "red", "type": "classification", "text": "text", "label": "red",
                         "data": {**data, "max_train_samples": 32}}],
              **TRAIN}
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def compare(config: Path, output_dir: Path, *more: str) -> list[str]:
    return ["compare", str(config), "--seeds", *SEEDS, "--output_dir", str(output_dir), "--groups", "sentiment,score",
            "--finetune", *more]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished comparison with a group and fine-tuning, with each fine-tune run's weights right after
    `init_from` loaded them."""
    import manyheads.recipe.build as build

    folder = tmp_path_factory.mktemp("compare-groups")
    config = write_config(folder, tiny_model_dir)
    started: dict[str, dict[str, torch.Tensor]] = {}
    original = build.start_from

    def recording(model, init_from):
        loaded = original(model, init_from)
        started[f"{init_from}:{','.join(model.tasks)}"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return loaded

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(printed):
        patch.setattr(build, "start_from", recording)
        code = main(compare(config, folder / "out"))
    assert code == 0, printed.getvalue()
    return {"config": config, "out": folder / "out", "started": started, "printed": printed.getvalue()}


def result(out: Path, run: str, seed: str) -> dict:
    return json.loads((out / run / f"seed-{seed}" / "compare_result.json").read_text())


def test_plan_with_groups_gives_the_group_the_all_in_one_runs_examples(tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir)
    plain = plan_comparison(str(config), [], [1, 2], tmp_path / "a")
    plan = plan_comparison(str(config), ["--max_steps", "20"], [1, 2], tmp_path / "b", groups=[["score", "sentiment"]],
                           finetune=1.0)
    assert [r.key for r in plan.runs if r.seed == 1] == [
        "mt/seed-1", "group-sentiment+score/seed-1", "single-sentiment/seed-1", "single-score/seed-1",
        "single-red/seed-1", "finetune-sentiment/seed-1", "finetune-score/seed-1", "finetune-red/seed-1"]
    runs = {r.key: r for r in plan.runs}
    for seed in (1, 2):
        mt, group = runs[f"mt/seed-{seed}"], runs[f"group-sentiment+score/seed-{seed}"]
        assert group.tasks == ["sentiment", "score"] and [t["name"] for t in group.config["tasks"]] == group.tasks
        assert group.config["max_steps"] == group.max_steps and group.config["seed"] == seed
        target = mt.examples["sentiment"] + mt.examples["score"]
        # The fewest steps reaching the all-in-one run's examples of the group's tasks together; over whole epochs
        # proportional sampling gives each task the same examples, and the 7 micro-batches of the all-in-one run's
        # partial second epoch (13 a whole one) fall on the tasks in a shuffled order.
        assert target <= sum(group.examples.values()) < target + 8
        for task in group.tasks:
            assert abs(group.examples[task] - mt.examples[task]) <= 7 * 8, (seed, task)
        for task in TASKS:  # fine-tuning: by default the examples the all-in-one run gave the task, as alone
            tuned, alone = runs[f"finetune-{task}/seed-{seed}"], runs[f"single-{task}/seed-{seed}"]
            assert (tuned.max_steps, tuned.examples) == (alone.max_steps, alone.examples)
            assert tuned.starts_from == f"mt/seed-{seed}" and alone.starts_from is None
    # One whole epoch (6 + 3 + 4 micro-batches): every task of the group sees exactly what it saw all-in-one.
    whole = plan_comparison(str(config), ["--max_steps", "13"], [1], tmp_path / "e", groups=[["sentiment", "score"]])
    assert whole.runs[1].examples == {t: whole.runs[0].examples[t] for t in ("sentiment", "score")} == \
        {"sentiment": 48, "score": 24}
    assert whole.runs[1].max_steps == 9
    # The identity holds the groups and the budget (another folder); a plain plan's has neither.
    assert plan.identity["groups"] == [["sentiment", "score"]] and plan.identity["finetune"] == 1.0
    assert "groups" not in plain.identity and "finetune" not in plain.identity
    # An integer budget is optimizer steps; a multiple scales the default examples.
    steps = plan_comparison(str(config), [], [1], tmp_path / "c", finetune=3)
    assert {r.max_steps for r in steps.runs if r.kind == "fine_tuned"} == {3}
    half = plan_comparison(str(config), [], [1], tmp_path / "d", finetune=0.5)
    for r in (r for r in half.runs if r.kind == "fine_tuned"):
        mt_examples = half.runs[0].examples[r.tasks[0]]
        assert mt_examples / 2 <= r.examples[r.tasks[0]] < mt_examples / 2 + 8


def test_bad_groups_and_budgets_are_refused_naming_the_task(tiny_model_dir, tmp_path):
    names = ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match=r"group 1 \(a,x\) names 'x', which is not a task of the config; its tasks: "
                                          r"a, b, c, d"):
        check_groups([["a", "x"]], names)
    with pytest.raises(ConfigError, match=r"task 'b' is in group 2 and also in group 1; put each task in at most one"):
        check_groups([["a", "b"], ["b", "c"]], names)
    with pytest.raises(ConfigError, match="a group of every task"):
        check_groups([["a", "b", "c", "d"]], names)
    assert check_groups([["c", "a"], ["d"]], names) == [["a", "c"]]  # a group of one is the single-task run
    assert read_groups(["a,b", "c, d"]) == [["a", "b"], ["c", "d"]]
    (tmp_path / "g.json").write_text(json.dumps({"groups": [["a", "b"], ["c"]]}))
    assert read_groups([str(tmp_path / "g.json")]) == [["a", "b"], ["c"]]
    (tmp_path / "affinity.json").write_text(json.dumps({"recommended": {"2": [["a", "c"], ["b", "d"]]}}))
    assert read_groups([f"{tmp_path / 'affinity.json'}:2"]) == [["a", "c"], ["b", "d"]]
    tag = {"groupings": [{"groups": 2, "partition": [["a", "d"], ["b", "c"]]}]}
    (tmp_path / "tag.json").write_text(json.dumps(tag))
    assert read_groups([f"{tmp_path / 'tag.json'}:2"]) == [["a", "d"], ["b", "c"]]
    with pytest.raises(ConfigError, match=r"has no grouping into 3 groups \(it has: 2\)"):
        read_groups([f"{tmp_path / 'affinity.json'}:3"])
    for bad in ("0", "-1", "x", "nan"):
        with pytest.raises(ConfigError, match="--finetune: "):
            parse_finetune(bad)
    assert (parse_finetune("40"), parse_finetune("0.5"), parse_finetune("1.0")) == (40, 0.5, 1.0)
    config = write_config(tmp_path, tiny_model_dir, strategy="temperature")
    plan_comparison(str(config), [], [1], tmp_path / "ok", groups=[["red", "score"]])  # built-in: allowed
    with pytest.raises(ConfigError, match="names 'nope', which is not a task"):
        plan_comparison(str(config), [], [1], tmp_path / "x", groups=[["red", "nope"]])


def test_groups_and_finetune_end_to_end_give_one_row_per_configuration_per_task(finished):
    out = finished["out"]
    summary = json.loads((out / "compare.json").read_text())
    configs = {c["name"]: c for c in summary["configurations"]}
    assert list(configs) == ["multi-task", GROUP, "fine-tuned", "single-task"]
    assert configs[GROUP]["tasks"] == ["sentiment", "score"] and configs["fine-tuned"]["tasks"] == TASKS
    for name, config in configs.items():
        for row in config["rows"]:
            run = {"multi-task": "mt", GROUP: GROUP, "fine-tuned": f"finetune-{row['task']}",
                   "single-task": f"single-{row['task']}"}[name]
            values = [result(out, run, s)["main"][row["task"]] for s in SEEDS]
            assert row["score"]["values"] == values and isinstance(row["score"]["sd"], float)
            assert row["single_task"]["values"] == [result(out, f"single-{row['task']}", s)["main"][row["task"]]
                                                    for s in SEEDS]
            assert row["difference"] == pytest.approx(sum(values) / 2 - sum(row["single_task"]["values"]) / 2)
    # The plain table is today's: multi-task vs single-task.
    assert [(r["task"], r["multi_task"]["values"]) for r in summary["tasks"]] == \
        [(r["task"], r["score"]["values"]) for r in configs["multi-task"]["rows"]]
    # Stored parameters: one model for multi-task and for the group; one encoder per task when fine-tuned or alone.
    first = {run: result(out, run, "1")["parameters"] for run in ("mt", GROUP)}
    assert configs["multi-task"]["parameters"] == first["mt"] and configs["multi-task"]["models"] == 1
    assert configs[GROUP]["parameters"] == first[GROUP] < first["mt"]
    tuned = sum(result(out, f"finetune-{t}", "1")["parameters"] for t in TASKS)
    assert configs["fine-tuned"]["parameters"] == tuned and configs["fine-tuned"]["models"] == 3
    assert tuned == configs["single-task"]["parameters"] > 2 * first["mt"]
    assert configs["fine-tuned"]["delta_mtl"]["percent"] is not None
    markdown = (out / "compare.md").read_text()
    assert "## Every configuration" in markdown and f"| {GROUP} | score | mse (lower is better) |" in markdown
    assert "| fine-tuned | red |" in markdown and "stored parameters" in markdown
    assert summary["examples"]["sentiment"]["group"]["1"] == result(out, GROUP, "1")["examples"]["sentiment"]
    assert "[16/16] " in finished["printed"]


def test_each_finetune_run_starts_from_its_seeds_multitask_model(finished):
    out = finished["out"]
    assert len(finished["started"]) == 6
    for seed in SEEDS:
        mt = load_file(str(out / "mt" / f"seed-{seed}" / "model.safetensors"))
        for task in TASKS:
            folder = out / f"finetune-{task}" / f"seed-{seed}"
            config = yaml.safe_load((folder / "compare_run.yaml").read_text())
            assert config["init_from"] == str((out / "mt" / f"seed-{seed}").resolve())
            started = finished["started"][f"{config['init_from']}:{task}"]
            # The multi-task run's final encoder and the task's head; no other head.
            heads = {k for k in started if not k.startswith("encoder.")}
            assert heads == {k for k in mt if k.startswith(f"heads.{task}.")}
            for key, value in started.items():
                assert torch.equal(value, mt[key]), key
            final = load_file(str(folder / "model.safetensors"))
            assert any(not torch.equal(final[k], mt[k]) for k in final)  # and then trained


def test_the_report_shows_every_configuration(finished, tmp_path):
    page = build_report(finished["out"], tmp_path / "report").read_text()
    assert "Every configuration" in page and GROUP in page and "fine-tuned" in page and "(baseline)" in page


def test_an_interrupted_comparison_with_groups_resumes_and_finetunes_after_its_mt_run(finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    before = {run: result(out, run, "2")["main"] for run in ("mt", "finetune-red", GROUP)}
    # mt seed 2 had not finished (the fine-tune runs of seed 2 waited for it), the group's seed 2 neither.
    for run in ("mt", "finetune-red", GROUP):
        shutil.rmtree(out / run / "seed-2")
    assert main(compare(finished["config"], out, "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 13 and "[16/16] " in printed
    lines = printed.splitlines()
    mt_done = next(i for i, line in enumerate(lines) if line.startswith("[") and "mt seed 2: done" in line)
    tuned = next(i for i, line in enumerate(lines) if "finetune-red seed 2: training" in line)
    assert mt_done < tuned  # never before its multi-task run finished, even with two at a time
    for run, main_before in before.items():
        for task, value in main_before.items():
            assert result(out, run, "2")["main"][task] == pytest.approx(value, rel=1e-4, abs=1e-6), run
    # Another grouping is another comparison: refused.
    assert main(["compare", str(finished["config"]), "--seeds", *SEEDS, "--output_dir", str(out), "--groups",
                 "score,red", "--finetune"]) == 2
    assert "holds a comparison of a different config" in capsys.readouterr().err


def test_best_head_per_task_checkpoints_one_task_runs_at_every_evaluation(tiny_model_dir, tmp_path):
    from manyheads.recipe import build_config

    config = write_config(tmp_path, tiny_model_dir)
    # Without eval_steps Trainer evaluates every logging_steps: the checkpoints must follow, or the best step
    # would never be saved (or TrainingArguments would refuse save_steps that are no multiple of it).
    plan = plan_comparison(str(config), ["--best_head_per_task", "true", "--eval_strategy", "steps",
                                         "--save_steps", "5"], [1], tmp_path / "c", finetune=1.0)
    for run in (r for r in plan.runs if r.kind in ("single_task", "fine_tuned")):
        assert (run.config["save_steps"], run.config["logging_steps"]) == (3, 3)
        metric = run.config["tasks"][0].get("main_metric", "accuracy")
        assert run.config["metric_for_best_model"] == f"eval_{run.tasks[0]}_{metric}"
        args = build_config(run.config, config_dir=str(tmp_path)).training_arguments()
        assert args.load_best_model_at_end and args.save_steps == args.eval_steps == 3
    mt = next(r for r in plan.runs if r.kind == "multi_task")
    assert "load_best_model_at_end" not in mt.config and mt.config["save_steps"] == 5


def test_with_best_head_per_task_each_one_task_model_is_its_best_evaluations(tiny_model_dir, tmp_path):
    """Single-task and fine-tune runs keep their whole model from their best evaluation; the multi-task run names
    each head's step."""
    config = write_config(tmp_path, tiny_model_dir)
    best = ["--best_head_per_task", "true", "--eval_strategy", "steps", "--eval_steps", "2", "--max_steps", "30",
            "--learning_rate", "1e-2"]
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["compare", str(config), "--seeds", "1", "--output_dir", str(tmp_path / "out"), "--finetune",
                     *best])
    assert code == 0, printed.getvalue()
    out = tmp_path / "out"
    assert set(result(out, "mt", "1")["best_steps"]) == set(TASKS)
    moved = 0
    for run, task in [(f"{kind}-{task}", task) for kind in ("finetune", "single") for task in TASKS]:
        tuned = result(out, run, "1")
        folder = out / run / "seed-1"
        state = json.loads((folder / "trainer_state.json").read_text())
        metric = tuned["main_metric"][task]
        history = state["log_history"]
        during = history[:next(i for i, e in enumerate(history) if "train_runtime" in e)]  # not the final evaluate
        logged = {e["step"]: e[f"eval_{task}_{metric}"] for e in during if "eval_average" in e}
        pick = max if tuned["greater_is_better"][task] else min
        step = next(s for s, v in sorted(logged.items()) if v == pick(logged.values()))
        assert tuned["best_steps"] == {task: step}
        assert state["best_global_step"] == step
        # The saved model (evaluated after training) is that step's, encoder and head.
        assert tuned["main"][task] == pytest.approx(logged[step], abs=1e-6)
        moved += logged[step] != logged[max(logged)]
    assert moved, "every best value was the last one's: the test cannot tell the best model from the last one"
    assert "| finetune-red | 1 | red " in (out / "compare.md").read_text()
