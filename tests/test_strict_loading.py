"""A model folder whose weights do not match its config is an error naming the task and the file, in Python and
in `predict` / `export` / `evaluate`: never a silently random head."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from manyheads import Classification, MultiTaskModel, Regression
from manyheads.cli.main import main
from manyheads.modeling.model import ModelLoadError

from .conftest import make_encoder, make_tokenizer


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    model = MultiTaskModel.from_encoder(make_encoder(), [Classification(name="sentiment", labels=["neg", "pos"]),
                                                         Regression(name="score")])
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def damaged(saved, tmp_path, name, weights=None, config=None, raw=None):
    folder = tmp_path / name
    shutil.copytree(saved, folder)
    if weights is not None:
        state = load_file(saved / "model.safetensors")
        weights(state)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        values = json.loads((saved / "config.json").read_text())
        config(values)
        (folder / "config.json").write_text(json.dumps(values))
    if raw is not None:
        (folder / "model.safetensors").write_bytes(raw((saved / "model.safetensors").read_bytes()))
    return folder


CASES = {
    "missing_head_tensor": ({"weights": lambda s: s.pop("heads.score.classifier.weight")},
                            r"task 'score' has no weights in the weight file \(heads.score.classifier.weight\)"),
    "task_without_weights": ({"config": lambda c: c["tasks"].append(
        {**c["tasks"][0], "name": "topic", "labels": ["a", "b"]})}, "task 'topic' has no weights in the weight file"),
    "weights_of_an_unlisted_task": ({"config": lambda c: c["tasks"].pop()},
                                    "holds weights of task 'score', which config.json does not list"),
    "labels_edited": ({"config": lambda c: c["tasks"][0].update(labels=["neg", "pos", "meh"])},
                      "task 'sentiment''s head in the weight file has another size than config.json says"),
    "truncated_weights": ({"raw": lambda data: data[: len(data) // 2]},
                          r"the weight file cannot be read \(.*\); it is truncated or corrupted"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_from_pretrained_is_strict(saved, tmp_path, case):
    change, message = CASES[case]
    with pytest.raises(ModelLoadError, match=message):
        MultiTaskModel.from_pretrained(damaged(saved, tmp_path, case, **change))


@pytest.mark.parametrize("case", ["missing_head_tensor", "labels_edited", "truncated_weights"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_cli_commands_refuse_a_damaged_model_with_one_line(saved, tmp_path, capsys, case, command):
    change, message = CASES[case]
    folder = damaged(saved, tmp_path, case, **change)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "good box"}) + "\n")
    output = tmp_path / "out"
    argv = {"predict": ["predict", str(folder), "--input", str(rows), "--output", str(output / "p.jsonl")],
            "export": ["export", str(folder), "--task", "sentiment", "--output", str(output)]}[command]
    output.mkdir()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder}: ") and "Traceback" not in err, err
    assert re.search(message, errors[0])
    assert list(output.iterdir()) == []  # nothing written


def test_export_to_an_existing_file_is_refused(saved, tmp_path, capsys):
    target = tmp_path / "exported"
    target.write_text("not a folder")
    assert main(["export", str(saved), "--task", "sentiment", "--output", str(target)]) == 2
    assert "--output: " in capsys.readouterr().err and target.read_text() == "not a folder"


def test_an_intact_folder_still_loads(saved):
    model = MultiTaskModel.from_pretrained(saved)
    assert model.tasks["sentiment"].label_list == ["neg", "pos"]
