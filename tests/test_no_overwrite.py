"""A user's files are never lost to a command (issue 29, item 1): `export` never writes over a model folder unless
--overwrite says so (never over MODEL_DIR itself), and `predict` never replaces its input nor leaves an earlier
run's complete OUTPUT beside its own partial one. Each test failed on the code before."""

from __future__ import annotations

import json

import pytest

from manyheads import Classification, MultiTaskModel
from manyheads.cli.main import main
from manyheads.cli.predict import PREVIOUS

from .conftest import make_encoder, make_tokenizer, review_rows


@pytest.fixture
def model_dir(tmp_path) -> str:
    folder = tmp_path / "model"
    model = MultiTaskModel.from_encoder(make_encoder(), [Classification(name="sentiment", labels=["neg", "pos"],
                                                                        pooling="pooler")])
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("fmt", ["stock", "onnx"])
def test_export_into_model_dir_itself_is_refused_even_with_overwrite(model_dir, tmp_path, capsys, fmt):
    folder = tmp_path / "model"
    before = (folder / "config.json").read_bytes()
    for extra in ([], ["--overwrite"]):
        code = main(["export", model_dir, "--task", "sentiment", "--format", fmt, "--output", model_dir, *extra])
        assert code == 2
        assert "is MODEL_DIR itself; exporting there would overwrite the multi-task model" in capsys.readouterr().err
    assert (folder / "config.json").read_bytes() == before
    assert config_of(folder)["model_type"] == "manyheads"


@pytest.mark.parametrize("fmt", ["stock", "onnx"])
def test_export_over_another_model_needs_overwrite(model_dir, tmp_path, capsys, fmt):
    """stock: over another (manyheads) model folder; onnx: over an earlier ONNX export (a PyTorch model folder is
    never turned into a mix of both: the ONNX export refuses it even with --overwrite)."""
    other = tmp_path / "other"
    if fmt == "stock":
        MultiTaskModel.from_encoder(make_encoder(1), [Classification(name="x", labels=["a", "b"])]).save_pretrained(
            other)
        held = "config.json, model.safetensors"
    else:
        assert main(["export", model_dir, "--format", "onnx", "--output", str(other)]) == 0
        held = "config.json, model.onnx"
    (other / "mark.txt").write_text("the user's folder")
    before = (other / "config.json").read_bytes()
    code = main(["export", model_dir, "--task", "sentiment", "--format", fmt, "--output", str(other)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--output: {other} already holds a model ({held})" in err
    assert "add --overwrite to replace that model" in err
    assert (other / "config.json").read_bytes() == before
    assert main(["export", model_dir, "--task", "sentiment", "--format", fmt, "--output", str(other),
                 "--overwrite"]) == 0
    if fmt == "stock":
        assert (other / "config.json").read_bytes() != before
    assert (other / "mark.txt").exists()


def test_onnx_export_never_mixes_into_a_pytorch_model_folder(model_dir, tmp_path, capsys):
    other = tmp_path / "other"
    MultiTaskModel.from_encoder(make_encoder(1), [Classification(name="x", labels=["a", "b"])]).save_pretrained(other)
    assert main(["export", model_dir, "--format", "onnx", "--output", str(other), "--overwrite"]) == 2
    assert "holds a PyTorch model (model.safetensors)" in capsys.readouterr().err
    assert not (other / "model.onnx").exists()


def test_export_into_an_empty_or_new_folder_needs_no_flag(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["export", model_dir, "--task", "sentiment", "--output", str(tmp_path / "empty")]) == 0
    assert config_of(tmp_path / "empty")["architectures"] == ["BertForSequenceClassification"]


def write_rows(path, n: int = 5) -> str:
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in review_rows(n, 4)), encoding="utf-8")
    return str(path)


def test_predict_refuses_an_output_that_is_its_input(model_dir, tmp_path, capsys):
    rows = write_rows(tmp_path / "rows.jsonl")
    before = (tmp_path / "rows.jsonl").read_text()
    for output in (rows, str(tmp_path / "." / "rows.jsonl")):
        assert main(["predict", model_dir, "--input", rows, "--output", output]) == 2
        assert "is the --input file; predictions would replace the rows being read" in capsys.readouterr().err
    assert (tmp_path / "rows.jsonl").read_text() == before


def test_a_killed_predict_never_leaves_the_old_output_beside_its_partial(model_dir, tmp_path, monkeypatch):
    """A run killed part-way (simulated: the stream dies after the partial file is opened) leaves OUTPUT.partial
    and the earlier result as OUTPUT.previous, never under OUTPUT; a finished run removes OUTPUT.previous."""
    import manyheads.cli.predict as predict

    rows, out = write_rows(tmp_path / "rows.jsonl"), tmp_path / "out.jsonl"
    out.write_text("an earlier run's result\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGINT does; SIGKILL stops the process at the same place

    monkeypatch.setattr(predict, "_stream", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["predict", model_dir, "--input", rows, "--output", str(out)])
    assert not out.exists()
    assert (tmp_path / "out.jsonl.partial").exists()
    assert (tmp_path / f"out.jsonl{PREVIOUS}").read_text() == "an earlier run's result\n"
    monkeypatch.undo()
    assert main(["predict", model_dir, "--input", rows, "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert not (tmp_path / f"out.jsonl{PREVIOUS}").exists() and not (tmp_path / "out.jsonl.partial").exists()
