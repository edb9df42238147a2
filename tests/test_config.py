"""Config loading: coercion, overrides, unknown keys and every error reported at once, by message."""

import pytest
import yaml

from manyheads import ConfigError
from manyheads.cli.main import main
from manyheads.recipe import build_config, load_config

from .conftest import base_config, task_section


def raw_config(**training):
    return {"model": "some/model", "tasks": task_section(),
            "training": {"output_dir": "runs/x", **training}}


def test_types_are_coerced_from_strings():
    run = build_config(raw_config(learning_rate="5e-5", num_train_epochs="2", bf16="false"))
    assert run.training["learning_rate"] == 5e-5 and isinstance(run.training["learning_rate"], float)
    assert run.training["num_train_epochs"] == 2.0
    assert run.training["bf16"] is False
    assert run.task("match").text == ["text", "other"]
    assert run.task("score").max_length == 128  # default max_length filled in


def test_command_line_overrides_training_and_top_level_fields():
    run = build_config(raw_config(max_steps=100), overrides=[
        "--max_steps", "20", "--output_dir", "runs/y", "--sampling.strategy", "uniform", "--max_length", "64"])
    assert run.training["max_steps"] == 20
    assert run.training["output_dir"] == "runs/y"
    assert run.sampling.strategy == "uniform"
    assert run.max_length == 64
    args = run.training_arguments()
    assert args.max_steps == 20


def test_unknown_keys_fail_with_suggestions():
    raw = raw_config(learning_rat=1e-4)
    raw["samplng"] = {}
    raw["tasks"][0]["lable"] = "x"
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    text = str(info.value)
    assert "unknown TrainingArguments field 'learning_rat'. Did you mean 'learning_rate'?" in text
    assert "unknown key 'samplng'. Did you mean 'sampling'?" in text
    assert "unknown key 'lable'. Did you mean 'label'?" in text
    assert len(info.value.problems) == 3


def test_unknown_flag_is_an_error():
    with pytest.raises(ConfigError, match="unknown flag '--max_stepz'. Did you mean 'max_steps'"):
        build_config(raw_config(), overrides=["--max_stepz", "3"])


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["tasks"][0].update(type="clasification"),
     r"unknown task type 'clasification'. Did you mean 'classification'\? Valid types: classification, multilabel"),
    (lambda r: r["tasks"][1].update(name="sentiment"), "the name 'sentiment' is used by 2 tasks"),
    (lambda r: r.update(sampling={"strategy": "random"}), "'strategy' is 'random'; valid choices: proportional"),
    (lambda r: r.update(sampling={"temperature": 0}), "'temperature' is 0.0; it must be > 0"),
    (lambda r: r["training"].update(metric_for_best_model="eval_acc"), "'eval_acc' names no metric of this run"),
    (lambda r: r["training"].update(train_sampling_strategy="sequential"), "manyheads sets this itself"),
    (lambda r: r["training"].update(learning_rate="fast"), r"'training.learning_rate': got 'fast', expected"),
    (lambda r: r["tasks"][0].update(main_metric="f2"), "main_metric: 'f2' is not a metric of type"),
    (lambda r: r["tasks"][0].update(text=["a", "b", "c"]), "give one column .single text. or two"),
    (lambda r: r["tasks"][2].update(threshold=1.5), "threshold: got 1.5; it must be between 0 and 1"),
    (lambda r: r["tasks"][0].update(data={}), "neither 'train' .a file. nor 'hub'"),
    (lambda r: r.pop("model"), "required key 'model' is missing"),
    (lambda r: r.update(tasks=[]), "at least one task is required"),
])
def test_config_errors_name_key_value_and_fix(mutate, message):
    raw = raw_config()
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        build_config(raw)


def test_best_metric_names_are_accepted():
    for metric in ("eval_average", "average", "eval_loss", "eval_score_spearman", "eval_colors_micro_f1"):
        build_config(raw_config(metric_for_best_model=metric))


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: x\ntasks:\n  - name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        load_config(path)


def test_validate_reports_five_mistakes_at_once(tmp_path, tiny_model_dir, data_dir, capsys):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"][0]["type"] = "classifcation"                 # 1 unknown type
    raw["tasks"][1]["data"]["train"] = "missing.jsonl"        # 2 missing file
    raw["tasks"][2]["label"] = "colours"                      # 3 missing column
    raw["tasks"][2]["data"] = {"train": "train.jsonl"}
    raw["training"]["learning_rate"] = "fast"                 # 4 bad value
    raw["sampling"] = {"strategy": "random"}                  # 5 bad choice
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2
    assert len(lines) == 5, err
    assert "Traceback" not in err
    for needle in ("classifcation", "missing.jsonl", "'colours'", "'fast'", "'random'"):
        assert any(needle in line for line in lines), needle


def test_validate_prints_the_plan(tmp_path, tiny_model_dir, data_dir, capsys):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["sampling"] = {"strategy": "uniform"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "config OK: 4 task(s)" in out
    row = next(line for line in out.splitlines() if line.startswith("colors"))
    # type, label count, train/eval/test sizes, probability, steps per epoch (4 tasks x 8 steps, uniform)
    assert row.split() == ["colors", "multilabel", "4", "64", "24", "0", "0.2500", "8"]
