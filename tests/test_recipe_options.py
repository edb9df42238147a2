"""The YAML recipe on top of the library: typed flags, renamed keys, label options, user classes by import path."""

from __future__ import annotations

import json
import textwrap

import pytest

from manyheads import ConfigError
from manyheads.recipe import build_config, build_trainer, prepare_data

from .conftest import base_config, review_rows, write_jsonl

USER_CODE = '''
import torch
from dataclasses import dataclass
from manyheads import Classification, LossWeighting


@dataclass(kw_only=True)
class Shouting(Classification):
    """A classification task whose labels are upper-cased in predictions."""

    def postprocess(self, logits, inputs=None):
        return [{**p, "label": p["label"].upper()} for p in super().postprocess(logits, inputs)]


class Thirds(LossWeighting):
    def current(self):
        return torch.full((len(self.tasks),), 1 / 3)


def first_task_only(sizes):
    return [1.0] + [0.0] * (len(sizes) - 1)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_code.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_code"


def test_command_line_values_are_typed_by_their_field(tiny_model_dir, data_dir, tmp_path):
    run = build_config(base_config(tiny_model_dir, data_dir, tmp_path / "out"), overrides=[
        "--eval_strategy", "no", "--learning_rate", "3e-4", "--bf16", "false", "--report_to", "none"])
    assert run.training["eval_strategy"] == "no"  # an enum choice, not YAML's boolean False
    assert run.training["learning_rate"] == 3e-4 and run.training["bf16"] is False
    assert run.training_arguments().eval_strategy == "no"


def test_unquoted_yaml_no_for_an_enum_field_means_the_choice_no(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", save_strategy=False)  # YAML reads `no` as False
    assert build_config(raw).training_arguments().save_strategy == "no"


@pytest.mark.parametrize("key,value,message", [
    ("evaluation_strategy", "steps", "evaluation_strategy: this TrainingArguments field no longer exists; "
                                     "use eval_strategy instead"),
    ("logging_dir", "logs", "use the TENSORBOARD_LOGGING_DIR environment variable"),
    ("no_cuda", True, "use use_cpu instead"),
    ("label_names", ["a"], "label_names: manyheads sets this itself"),
    ("eval_strategy", "sometimes", r"'eval_strategy': got 'sometimes', expected one of no, steps, epoch"),
])
def test_training_keys_that_moved_or_are_wrong_name_the_fix(tiny_model_dir, data_dir, tmp_path, key, value, message):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", **{key: value})
    with pytest.raises(ConfigError, match=message):
        build_config(raw)


def test_an_unknown_file_extension_lists_every_format(tiny_model_dir, data_dir, tmp_path):
    (data_dir / "train.data").write_text("x\n")
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{**raw["tasks"][0], "data": {"train": "train.data"}}]
    with pytest.raises(ConfigError, match="set 'format' to one of csv, tsv, json, jsonl, parquet, conll, squad"):
        prepare_data(build_config(raw), tokenize=False)


@pytest.mark.parametrize("index,labels,row_change,shown", [
    (0, ["pos", "neg"], {"sentiment": "meh"}, "['pos', 'neg']"),
    (2, ["yellow", "red", "green", "blue"], {"colors": ["purple"]}, "['yellow', 'red', 'green', 'blue']"),
])
def test_an_undeclared_label_is_shown_against_the_labels_in_the_users_order(tiny_model_dir, data_dir, tmp_path,
                                                                             index, labels, row_change, shown):
    rows = review_rows(12, 3)
    rows[4].update(row_change)
    write_jsonl(data_dir / "bad.jsonl", rows)
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{**raw["tasks"][index], "labels": labels, "data": {"train": "train.jsonl", "eval": "bad.jsonl"}}]
    with pytest.raises(ConfigError, match="data row 5, .* is not in the declared labels " + shown.replace("[", r"\[")):
        prepare_data(build_config(raw), tokenize=False)


def test_delimited_index_labels_with_a_names_file(tiny_model_dir, data_dir, tmp_path):
    colors = ["red", "green", "blue", "yellow"]
    (data_dir / "colors.txt").write_text("\n".join(colors) + "\n")
    rows = [{"text": r["text"], "ids": ",".join(str(colors.index(c)) for c in r["colors"])} for r in review_rows(32, 1)]
    write_jsonl(data_dir / "ids.jsonl", rows)
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{"name": "colors", "type": "multilabel", "text": "text", "label": "ids", "label_separator": ",",
                     "label_names": "colors.txt", "data": {"train": "ids.jsonl"}}]
    run = build_config(raw)
    assert run.task("colors").label_names == colors  # the file, read relative to data_dir
    trainer = build_trainer(run)
    assert trainer.model.tasks["colors"].label_list == colors
    first = review_rows(32, 1)[0]["colors"]
    assert trainer.train_dataset.datasets["colors"][0]["labels"] == [float(c in first) for c in colors]
    assert run.task("colors").fitted == {}  # the recipe's own task object is never fitted


def test_an_index_outside_label_names_is_a_data_error(tiny_model_dir, data_dir, tmp_path):
    write_jsonl(data_dir / "ids.jsonl", [{"text": "good", "label": 0}, {"text": "bad", "label": 5}])
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{"name": "s", "type": "classification", "label_names": ["neg", "pos"],
                     "data": {"train": "ids.jsonl"}}]
    with pytest.raises(ConfigError, match=r"data row 2, column 'label': label index 5 is outside label_names \(0..1\)"):
        prepare_data(build_config(raw), tokenize=False)


def test_user_classes_by_import_path(tiny_model_dir, data_dir, tmp_path, user_module):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=4)
    raw["tasks"] = raw["tasks"][:2]
    raw["tasks"][0]["type"] = f"{user_module}.Shouting"
    raw["loss_weighting"] = f"{user_module}.Thirds"
    raw["sampling_strategy"] = f"{user_module}.first_task_only"
    trainer = build_trainer(build_config(raw))
    assert type(trainer.model.tasks["sentiment"]).__name__ == "Shouting"
    assert type(trainer.weighting).__name__ == "Thirds"
    assert {batch["task"] for batch in trainer.get_train_dataloader()} == {"sentiment"}
    trainer.train()
    assert trainer.state.log_history[0]["weight_match"] == pytest.approx(1 / 3)
    trainer.save_model(str(tmp_path / "model"))
    assert json.loads((tmp_path / "model" / "config.json").read_text())["tasks"][0]["type"] == "user_code.Shouting"


@pytest.mark.parametrize("section,message", [
    ({"tasks": [{"name": "x", "type": "user_code.Nothing", "data": {"train": "train.jsonl"}}]},
     r"unknown task type 'user_code.Nothing'"),
    ({"loss_weighting": "user_code.Nothing"}, r"'user_code.Nothing'.*valid choices: equal"),
])
def test_a_wrong_import_path_is_reported_with_the_valid_names(tiny_model_dir, data_dir, tmp_path, user_module, section,
                                                              message):
    raw = {**base_config(tiny_model_dir, data_dir, tmp_path / "out"), **section}
    with pytest.raises(ConfigError, match=message):
        build_config(raw)
