"""Bad data is reported before training, each problem naming the file, row, column, value and fix."""

import json

import pytest
import yaml

from manyheads import ConfigError
from manyheads.cli.main import main
from manyheads.recipe import build_config, prepare_data

from .conftest import base_config, review_rows, write_jsonl


def prepare(raw):
    return prepare_data(build_config(raw), tokenize=False)


@pytest.fixture
def raw(tmp_path, tiny_model_dir, data_dir):
    return base_config(tiny_model_dir, data_dir, tmp_path / "out")


def with_rows(data_dir, name, mutate):
    rows = review_rows(16, 9)
    mutate(rows)
    return write_jsonl(data_dir / name, rows)


@pytest.mark.parametrize("task_index,mutate,message", [
    (0, lambda rows: rows[3].update(sentiment="meh"), r"data row 4, column 'sentiment': label 'meh' is not in the "
                                                      r"declared labels \['neg', 'pos'\]"),
    (0, lambda rows: rows[2].update(text=None), r"data row 3, column 'text': text cell is None, not a string"),
    (3, lambda rows: rows[5].update(score="high"), r"data row 6, column 'score': regression target 'high' is not a"),
    (3, lambda rows: rows[1].update(score=float("nan")), r"data row 2, column 'score': regression target nan is not "
                                                         r"finite"),
    (2, lambda rows: rows[0].update(colors=["purple"]), r"label 'purple' is not in the declared labels"),
    (0, lambda rows: rows[7].update(sentiment=None), r"data row 8, column 'sentiment': the label is empty"),
])
def test_bad_cells(raw, data_dir, task_index, mutate, message):
    raw["tasks"][task_index]["data"] = {"train": "train.jsonl", "eval": with_rows(data_dir, "bad.jsonl", mutate)}
    if task_index == 0:
        raw["tasks"][0]["labels"] = ["neg", "pos"]
    with pytest.raises(ConfigError, match=message) as info:
        prepare(raw)
    assert "bad.jsonl" in str(info.value)


def test_multilabel_columns_must_be_zero_or_one(raw, data_dir):
    def mutate(rows):
        rows[4]["green"] = 2

    raw["tasks"][2] = {"name": "colors", "type": "multilabel", "text": "text",
                       "label_columns": ["red", "green", "blue", "yellow"],
                       "data": {"train": with_rows(data_dir, "ml.jsonl", mutate)}}
    with pytest.raises(ConfigError, match=r"data row 5, column 'green': multi-label value 2 is not 0 or 1"):
        prepare(raw)


def test_missing_file_missing_column_and_empty_split_reported_together(raw, data_dir):
    (data_dir / "empty.jsonl").write_text("", encoding="utf-8")
    raw["tasks"][0]["data"] = {"train": "nope.jsonl"}
    raw["tasks"][1]["text"] = ["text", "second"]
    raw["tasks"][3]["data"] = {"train": "train.jsonl", "eval": "empty.jsonl"}
    with pytest.raises(ConfigError) as info:
        prepare(raw)
    text = "\n".join(info.value.problems)
    assert "file not found" in text and "nope.jsonl" in text
    # The missing column is reported once per file that lacks it (train and eval).
    assert text.count("column 'second' (task 'match') not found") == 2
    assert "empty.jsonl: the eval file of task 'score' is empty" in text
    assert len(info.value.problems) == 4


def test_max_length_larger_than_encoder_allows(raw):
    raw["tasks"][0]["max_length"] = 512
    with pytest.raises(ConfigError, match=r"max_length: 512 is larger than the encoder allows \(64\)"):
        prepare(raw)


def test_cli_exit_code_two_and_nothing_written(raw, tmp_path, data_dir, capsys):
    raw["tasks"][3]["data"] = {"train": with_rows(data_dir, "nan.jsonl", lambda r: r[0].update(score=None))}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "regression target None is not a number" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_labels_inferred_and_stored_in_order(raw):
    prepared = prepare(raw)
    assert prepared.tasks["sentiment"].label_list == ["neg", "pos"]
    assert prepared.tasks["match"].label_list == ["0", "1"]
    assert json.loads(json.dumps(prepared.tasks["colors"].spec()))["labels"] == ["red", "green", "blue",
                                                                                        "yellow"]
