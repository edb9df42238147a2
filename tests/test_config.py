"""What the recipe adds to the library: YAML + flags parsed into `MultiTaskTrainingArguments` (as trl's `TrlParser`
does), task entries bound to their class, old keys upgraded with one deprecation line, every error at once."""

import dataclasses
import logging

import pytest
import yaml

from manyheads import ConfigError, MultiTaskTrainingArguments
from manyheads.cli.main import main
from manyheads.recipe import build_config, load_config
from manyheads.recipe.arguments import DEPRECATED_KEYS

from .conftest import base_config, task_section


def raw_config(**fields):
    return {"model": "some/model", "tasks": task_section(), "output_dir": "runs/x", **fields}


def deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


@pytest.mark.parametrize("key,value", [
    ("sampling_strategy", "uniform"), ("sampling_temperature", 3.0), ("group_by_length", False),
    ("loss_weighting", "dwa"), ("loss_weighting_kwargs", {"temperature": 3.0}), ("max_nonfinite_steps", 5),
    ("pad_to_multiple_of", 8), ("head_learning_rate", 1e-3), ("max_steps", 7), ("eval_strategy", "no"),
    ("lr_scheduler_kwargs", {"num_cycles": 2}), ("head_learning_rate_scaling", "share"),
])
def test_a_top_level_key_is_the_argument_field_of_that_name(key, value):
    extra = {"loss_weighting": "dwa"} if key == "loss_weighting_kwargs" else {}
    run = build_config(raw_config(**{key: value}, **extra))
    assert key in {f.name for f in dataclasses.fields(MultiTaskTrainingArguments)}
    assert run.training[key] == value
    assert getattr(run.training_arguments(), key) == value


def test_yaml_text_is_typed_by_the_field():
    run = build_config(raw_config(learning_rate="5e-5", num_train_epochs="2", bf16="false", save_strategy=False))
    assert run.training["learning_rate"] == 5e-5 and isinstance(run.training["learning_rate"], float)
    assert run.training["num_train_epochs"] == 2.0
    assert run.training["bf16"] is False
    assert run.training_arguments().save_strategy == "no"  # YAML reads an unquoted `no` as False
    assert run.task("match").text == ["text", "other"]
    assert run.task("score").max_length == 128  # default max_length filled in


def test_a_command_line_flag_overrides_the_yaml():
    run = build_config(raw_config(max_steps=100, sampling_strategy="temperature", sampling_temperature=2.0),
                       overrides=["--max_steps", "20", "--output_dir", "runs/y", "--sampling_strategy", "uniform",
                                  "--max_length", "64", "--group_by_length", "false", "--model", "other/model"])
    assert run.training["max_steps"] == 20
    assert run.training["output_dir"] == "runs/y"
    assert run.training["sampling_temperature"] == 2.0  # not overridden: the YAML's
    args = run.training_arguments()
    assert (args.max_steps, args.sampling_strategy, args.group_by_length) == (20, "uniform", False)
    assert run.max_length == 64 and run.task("score").max_length == 64
    assert run.model == "other/model"


def test_a_bad_flag_value_names_the_flag_and_the_choices():
    with pytest.raises(ConfigError, match=r"argument --eval_strategy.*: invalid choice: 'sometimes'"):
        build_config(raw_config(), overrides=["--eval_strategy", "sometimes"])


def test_an_unknown_key_fails_listing_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_config(raw_config(learning_rat=1e-4))
    (problem,) = info.value.problems
    assert "unknown key 'learning_rat'. Did you mean 'learning_rate'?" in problem
    for valid in ("model", "data_dir", "max_length", "tasks", "sharing", "freeze", "diagnostics",
                  "sampling_strategy", "loss_weighting", "task_group_size", "TrainingArguments field"):
        assert valid in problem


def test_an_unknown_flag_fails_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown flag '--max_stepz'. Did you mean 'max_steps'"):
        build_config(raw_config(), overrides=["--max_stepz", "3"])


@pytest.mark.parametrize("flags,message", [
    (["--evaluation_strategy", "steps"], "--evaluation_strategy no longer exists in transformers; use eval_strategy"),
    (["--label_names", "x"], "--label_names: manyheads sets this itself"),
    (["--report_to", "none", "wandb"], "unexpected value 'wandb'; each flag takes one value"),
    (["--sampling.nope", "1"], "unknown flag '--sampling.nope'"),
])
def test_a_wrong_flag_names_the_fix(flags, message):
    with pytest.raises(ConfigError, match=message):
        build_config(raw_config(), overrides=flags)


def test_one_output_dir_default(tmp_path):
    path = tmp_path / "my_recipe.yaml"
    raw = raw_config()
    del raw["output_dir"]
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_config(path).training_arguments().output_dir == "runs/my_recipe"
    assert build_config(raw).training_arguments().output_dir == "runs/manyheads"


@pytest.mark.parametrize("old,new", sorted(DEPRECATED_KEYS.items()))
def test_an_old_key_loads_with_one_deprecation_line_naming_the_new_key(caplog, old, new):
    section, key = old.split(".")
    value = {"strategy": "uniform", "temperature": 3.0, "group_by_length": False, "weighting": "dwa",
             "weighting_kwargs": {"temperature": 3.0}, "aggregator": "upgrad", "aggregator_kwargs": {},
             "group_size": 2}[key]
    raw = raw_config(**{section: {key: value}})
    if key == "group_size":
        raw["balancing"]["aggregator"] = "upgrad"
    if key == "weighting_kwargs":
        raw["balancing"]["weighting"] = "dwa"
    with caplog.at_level(logging.WARNING, logger="manyheads.recipe"):
        run = build_config(raw)
    assert run.training[new] == value
    lines = [line for line in deprecations(caplog) if f"'{old}'" in line]
    assert len(lines) == 1 and f"'{new}'" in lines[0], deprecations(caplog)


def test_the_old_training_section_and_dotted_flags_still_work(caplog):
    raw = {"model": "some/model", "tasks": task_section(), "training": {"output_dir": "runs/x", "max_steps": 9}}
    with caplog.at_level(logging.WARNING, logger="manyheads.recipe"):
        run = build_config(raw, overrides=["--sampling.strategy", "uniform", "--training.seed", "3"])
    assert (run.training["max_steps"], run.training["sampling_strategy"], run.training["seed"]) == (9, "uniform", 3)
    lines = deprecations(caplog)
    assert len(lines) == 3, lines
    assert any("'training:'" in line and "top level" in line for line in lines)
    assert any("'--sampling.strategy'" in line and "'--sampling_strategy'" in line for line in lines)


def test_a_field_given_both_ways_is_an_error():
    with pytest.raises(ConfigError, match="'sampling_strategy' is given both at the top level and as "
                                          "'sampling.strategy'"):
        build_config(raw_config(sampling_strategy="uniform", sampling={"strategy": "temperature"}))


def test_many_errors_are_reported_at_once():
    raw = raw_config(learning_rat=1e-4, learning_rate="fast", sampling_strategy="random", loss_weighting="equl",
                     evaluation_strategy="steps", metric_for_best_model="eval_acc")
    raw["tasks"][0]["lable"] = "x"
    raw["tasks"][1]["type"] = "clasification"
    with pytest.raises(ConfigError) as info:
        build_config(raw, overrides=["--max_stepz", "3"])
    text = str(info.value)
    for needle in ("'learning_rat'", "'learning_rate': got 'fast'", "'sampling_strategy' is 'random'",
                   "'loss_weighting' is 'equl'", "evaluation_strategy: this TrainingArguments field no longer exists",
                   "'eval_acc' names no metric", "unknown key 'lable'. Did you mean 'label'?",
                   "unknown task type 'clasification'", "'--max_stepz'"):
        assert needle in text, needle
    assert len(info.value.problems) == 9, info.value.problems


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["tasks"][0].update(type="clasification"),
     r"unknown task type 'clasification'. Did you mean 'classification'\? Valid types: classification, multilabel"),
    (lambda r: r["tasks"][0].update(lable="x"), r"tasks\[0\] \(sentiment\): unknown key 'lable'. Did you mean "
                                                r"'label'\? Valid keys: adapter, .*text, type, weight"),
    (lambda r: r["tasks"][1].update(name="sentiment"), "the name 'sentiment' is used by 2 tasks"),
    (lambda r: r.update(sampling_strategy="random"), "'sampling_strategy' is 'random'; valid choices: proportional"),
    (lambda r: r.update(sampling_temperature=0), "'sampling_temperature' is 0.0; it must be > 0"),
    (lambda r: r.update(metric_for_best_model="eval_acc"), "'eval_acc' names no metric of this run"),
    (lambda r: r.update(train_sampling_strategy="sequential"), "manyheads samples one task per micro-batch itself"),
    (lambda r: r.update(label_names=["x"]), "manyheads sets this itself"),
    (lambda r: r.update(learning_rate="fast"), r"'learning_rate': got 'fast', expected float"),
    (lambda r: r.update(eval_strategy="sometimes"), r"'eval_strategy': got 'sometimes', expected one of no, steps"),
    (lambda r: r.update(run_name=["a", "b"]), r"'run_name': got \['a', 'b'\], expected str"),
    (lambda r: r["tasks"][0].update(main_metric="f2"), "main_metric: 'f2' is not a metric of type"),
    (lambda r: r["tasks"][0].update(text=["a", "b", "c"]), "give one column .single text. or two"),
    (lambda r: r["tasks"][2].update(threshold=1.5), "threshold: got 1.5; it must be between 0 and 1"),
    (lambda r: r["tasks"][0].update(data={}), "neither 'train' .a file. nor 'hub'"),
    (lambda r: r.pop("model"), "required key 'model' is missing"),
    (lambda r: r.update(tasks=[]), "at least one task is required"),
    (lambda r: r.update(freeze={"encoder": True, "layerz": 2}), r"config.freeze: unknown key 'layerz'. Did you mean "
                                                                 r"'layers'\? Valid keys: embeddings, encoder, layers"),
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
    raw["learning_rate"] = "fast"                             # 4 bad value
    raw["sampling_strategy"] = "random"                       # 5 bad choice
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
    raw.update(sampling_strategy="uniform")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["validate", str(path), "--max_steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "config OK: 4 task(s)" in out
    assert "sampling_strategy: uniform" in out and "loss_weighting: equal" in out
    row = next(line for line in out.splitlines() if line.startswith("colors"))
    # type, label count, train/eval/test sizes, probability, steps per epoch (4 tasks x 8 steps, uniform)
    assert row.split() == ["colors", "multilabel", "4", "64", "24", "0", "0.2500", "8"]
