"""ONNX export of the encoder and every head as one graph, and the ONNX Runtime backend of the predictor.

The graph must give PyTorch's `forward_all` logits (1e-4) at any batch size and length, and the predictor must
give the same predictions from either backend; int8 quantization must keep the predicted classes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from manyheads import MultiTaskModel
from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.export.onnx import OnnxExportError, export_onnx
from manyheads.export.onnx_runtime import MANIFEST, OnnxMultiTaskModel
from manyheads.recipe import build_config, build_trainer
from manyheads.serving.predictor import MultiTaskPredictor

from .conftest import BAD, COLORS, FILLER, GOOD, base_config, review_rows, write_jsonl
from .test_export import train_every_type

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> str:
    """A briefly trained model with one task of every encoder type (four poolings, a pair task), saved."""
    return train_every_type(tmp_path_factory.mktemp("onnx-model"), tiny_model_dir, steps=24, with_pair=True)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("onnx-export") / "graph"
    assert main(["export", trained, "--format", "onnx", "--output", str(out)]) == 0
    return str(out)


def records(n: int, seed: int) -> list[dict]:
    """Rows every task can read: texts and pairs of several lengths, questions over short contexts."""
    rng = np.random.default_rng(seed)
    words = GOOD + BAD + COLORS + FILLER
    rows = []
    for _ in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 14))))
        context = " ".join(rng.choice(FILLER + COLORS + ["box"], size=int(rng.integers(4, 30))))
        rows.append({"text": text, "other": " ".join(rng.choice(words, size=3)),
                     "question": f"{rng.choice(COLORS)} item", "context": context})
    return rows


def assert_same(ours, theirs, where: str = "") -> None:
    """Equal JSON predictions: strings, ints and lists exactly, floats (scores) within the tolerance."""
    if isinstance(ours, float):
        assert ours == pytest.approx(theirs, abs=TOLERANCE), where
    elif isinstance(ours, dict):
        assert list(ours) == list(theirs), where
        for key in ours:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


def test_the_graph_gives_forward_all_logits_at_any_batch_size_and_length(trained, exported):
    model = MultiTaskModel.from_pretrained(trained).eval()
    graph = OnnxMultiTaskModel(exported)
    assert list(graph.tasks) == list(model.tasks)
    assert {t.type for t in graph.tasks.values()} == {"classification", "multilabel", "regression",
                                                       "token_classification", "question_answering"}
    inputs = {i.name: i.shape for i in graph.session.get_inputs()}
    assert inputs == {n: ["batch", "sequence"] for n in ("input_ids", "attention_mask", "token_type_ids")}
    manifest = json.loads(open(os.path.join(exported, MANIFEST)).read())
    assert manifest["outputs"]["logits_sentiment"] == ["batch", 2]
    assert manifest["outputs"]["logits_qa"] == ["batch", "sequence", 2]
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch, length in [(1, 2), (5, 9), (3, 33), (8, 64)]:  # none of them the traced example's (2, 8)
        ids = torch.randint(5, model.config.encoder["vocab_size"], (batch, length), generator=generator)
        mask = torch.ones_like(ids)
        mask[batch // 2:, max(1, length // 3):] = 0  # padded rows
        types = torch.zeros_like(ids)
        types[:, length // 2:] = 1  # a pair's second segment
        with torch.no_grad():
            expected = model.forward_all(ids, mask, types)
        got = graph.forward_all(ids.numpy(), mask.numpy(), types.numpy())
        for name, value in expected.items():
            assert got[name].shape == tuple(value.shape), (name, batch, length)
            diff = float(np.abs(got[name] - value.numpy()).max())
            assert diff <= TOLERANCE, (name, batch, length, diff)
            worst = max(worst, diff)
    print(f"max |ONNX - forward_all| over all tasks and shapes: {worst:.2e}")


def test_onnx_backend_predicts_what_the_torch_backend_predicts(trained, exported):
    rows = records(60, 0)
    ours = MultiTaskPredictor(trained, batch_size=7).predict(rows)
    theirs = MultiTaskPredictor(exported, backend="onnx", batch_size=5).predict(rows)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert set(a) == {"sentiment", "match", "colors", "score", "ner", "qa", "mean", "max"}
        assert (a["qa"]["answer"], a["qa"]["start"]) == (b["qa"]["answer"], b["qa"]["start"])
        assert [(e["type"], e["start"], e["end"]) for e in a["ner"]["entities"]] == \
            [(e["type"], e["start"], e["end"]) for e in b["ner"]["entities"]]
        assert_same(a, b, f"row {i}")
    assert sum(len(r["ner"]["entities"]) for r in ours) > 0  # entities were really compared
    assert len({r["qa"]["answer"] for r in ours}) > 1


def test_cli_predict_backend_onnx_writes_the_torch_lines(trained, exported, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", records(30, 1))
    for backend, folder in (("torch", trained), ("onnx", exported)):
        code = main(["predict", folder, "--input", source, "--output", str(tmp_path / f"{backend}.jsonl"),
                     "--backend", backend, "--batch_size", "4"])
        assert code == 0, capsys.readouterr().err
    lines = [[json.loads(line) for line in open(tmp_path / f"{b}.jsonl")] for b in ("torch", "onnx")]
    assert len(lines[0]) == 30
    assert_same(lines[0], lines[1])


@pytest.fixture(scope="module")
def sentiment_int8(tmp_path_factory, tiny_model_dir) -> tuple[str, dict]:
    """A one-task classifier trained for 48 steps, exported with --quantize int8; returns (folder, manifest).

    Mean pooling and balanced class weights: with the pooler, the tiny encoder still predicts the majority class
    for every row after a few dozen steps, and agreement would be trivially 100%."""
    folder = tmp_path_factory.mktemp("onnx-int8")
    write_jsonl(folder / "train.jsonl", review_rows(128, 5))
    write_jsonl(folder / "eval.jsonl", review_rows(24, 6))
    raw = base_config(tiny_model_dir, folder, folder / "out", max_steps=48, learning_rate=3e-3)
    raw["tasks"] = [{**raw["tasks"][0], "pooling": "mean", "class_weights": "auto"}]
    trainer = build_trainer(build_config(raw))
    trainer.train()
    trainer.save_model(str(folder / "model"))
    assert main(["export", str(folder / "model"), "--format", "onnx", "--quantize", "int8",
                 "--output", str(folder / "graph")]) == 0
    return str(folder / "graph"), json.loads((folder / "graph" / MANIFEST).read_text())


def test_int8_graph_agrees_with_fp32_on_most_rows(sentiment_int8):
    folder, manifest = sentiment_int8
    assert manifest["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    assert 0.0 <= manifest["checks"]["int8"]["sentiment"]["agreement"] <= 1.0
    rows = [{"text": r["text"]} for r in review_rows(120, 11)]
    fp32 = [r["sentiment"]["label"] for r in MultiTaskPredictor(folder, backend="onnx").predict(rows)]
    int8 = [r["sentiment"]["label"] for r in MultiTaskPredictor(folder, backend="onnx",
                                                                 onnx_file="model_int8.onnx").predict(rows)]
    assert len(set(fp32)) > 1  # the model learnt something: agreement is not trivially 100%
    agreement = np.mean([a == b for a, b in zip(fp32, int8)])
    print(f"int8 agrees with fp32 on {agreement:.1%} of {len(rows)} rows")
    assert agreement >= 0.95


def test_export_errors_name_the_option(trained, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [
        (["--format", "onnx", "--output", str(a_file)], "--output: .* is a file"),
        (["--format", "onnx", "--output", trained], "--output: .* is MODEL_DIR itself; exporting there"),
        (["--format", "onnx", "--task", "nope", "--output", str(tmp_path / "n")], "--task: unknown task 'nope'"),
        (["--task", "sentiment", "--quantize", "int8", "--output", str(tmp_path / "q")],
         "--quantize: int8 quantization applies to ONNX graphs; add --format onnx"),
        (["--task", "sentiment", "--task", "score", "--output", str(tmp_path / "s")],
         "--task: --format stock exports one task; got 2"),
    ]
    for options, message in cases:
        assert main(["export", trained, *options]) == 2
        err = capsys.readouterr().err
        assert re.search("^error: " + message, err, re.MULTILINE), (options, err)
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # nothing written


def test_a_graph_that_differs_from_pytorch_writes_nothing(trained, tmp_path, monkeypatch):
    from manyheads.export import onnx as onnx_export

    real = onnx_export._compare
    monkeypatch.setattr(onnx_export, "_compare", lambda *a: {**real(*a), "score": 0.25})
    with pytest.raises(OnnxExportError, match=r"task 'score': the ONNX graph's logits differ from PyTorch's by "
                                              r"0\.25 .*tolerance 0\.0001.*nothing was written"):
        export_onnx(trained, tmp_path / "graph", tasks=["sentiment", "score"])
    assert os.listdir(tmp_path) == []  # neither the folder nor its staging copy


def test_a_head_without_static_logits_is_refused(trained, tmp_path):
    from manyheads.modeling.model import MultiTaskModel as Model

    model = Model.from_pretrained(trained)

    class Generating(torch.nn.Module):
        def forward(self, sequence_output, pooled, attention_mask=None):
            return {"sequences": sequence_output.argmax(-1)}

    model.heads["score"] = Generating()
    with pytest.raises(ConfigError, match="task 'score' .*cannot be exported to ONNX: its head returns dict, not "
                                          r"static logits"):
        export_onnx(model, tmp_path / "graph", tokenizer=MultiTaskPredictor(trained).tokenizer)
    assert not (tmp_path / "graph").exists()


def test_backend_and_folder_mismatches_are_explained(trained, exported, tmp_path, capsys):
    with pytest.raises(ConfigError, match="is an ONNX export without PyTorch weights; .*backend='onnx'"):
        MultiTaskPredictor(exported)
    with pytest.raises(ConfigError, match="is not a manyheads ONNX export .*--format onnx"):
        MultiTaskPredictor(trained, backend="onnx")
    with pytest.raises(ConfigError, match=r"--onnx_file: model_int8.onnx is not a file in .*'model.onnx'"):
        MultiTaskPredictor(exported, backend="onnx", onnx_file="model_int8.onnx")
    source = write_jsonl(tmp_path / "in.jsonl", records(2, 0))
    assert main(["predict", trained, "--input", source, "--output", str(tmp_path / "o.jsonl"),
                 "--onnx_file", "model.onnx"]) == 2
    assert "--onnx_file: model.onnx is a graph of an ONNX export; add --backend onnx" in capsys.readouterr().err


def test_missing_onnx_packages_give_one_line_with_the_install_hint(trained, exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    hint = r'onnxruntime is not installed\); install them with: pip install "manyheads\[onnx\]"'
    with pytest.raises(ConfigError, match=hint) as info:
        export_onnx(trained, tmp_path / "graph")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=hint):
        MultiTaskPredictor(exported, backend="onnx")
    assert not (tmp_path / "graph").exists()


def test_import_manyheads_needs_no_onnx_package():
    code = ("import sys; sys.modules.update(onnx=None, onnxruntime=None, onnxscript=None); import manyheads, "
            "manyheads.serving.predictor, manyheads.export.onnx, manyheads.cli.main")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
