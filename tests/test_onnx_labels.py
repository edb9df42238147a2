"""An ONNX export's labels: a config.json whose label list no longer fits the graph (fewer labels, another order) is
refused at load instead of predicting under the wrong names; the int8 check compares a multilabel head's decisions
at its thresholds, not its arg-max (issue 29 item 2 a, d)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest

from manyheads import Classification, MultiLabel, MultiTaskModel
from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.export.onnx_runtime import MANIFEST, labels_key, open_session, run_graph
from manyheads.serving.predictor import MultiTaskPredictor

from .conftest import COLORS, make_encoder, make_tokenizer, write_jsonl

SENTIMENT = ["neg", "pos"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict:
    """An untrained two-task model (a two-label classifier, a four-label multilabel head with uneven thresholds),
    saved and exported by `manyheads export --format onnx --quantize int8`; returns the folders and the stdout."""
    root = tmp_path_factory.mktemp("onnx-labels")
    colors = MultiLabel(name="colors", labels=COLORS)
    colors.fitted["thresholds"] = [0.3, 0.5, 0.52, 0.7]
    model = MultiTaskModel.from_encoder(make_encoder(), [Classification(name="sentiment", labels=SENTIMENT), colors])
    model.save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", str(root / "model"), "--format", "onnx", "--quantize", "int8",
                     "--output", str(root / "graph")])
    assert code == 0
    return {"model": root / "model", "graph": root / "graph", "stdout": printed.getvalue()}


def edited(export: dict, tmp_path, task: str, change) -> str:
    """A copy of the exported folder whose config.json gives `task` the labels `change(labels)`."""
    folder = tmp_path / f"graph-{task}"
    shutil.copytree(export["graph"], folder)
    config = json.loads((folder / "config.json").read_text())
    spec = next(s for s in config["tasks"] if s["name"] == task)
    spec["labels"] = change(list(spec["labels"]))
    if spec.get("fitted", {}).get("labels"):
        spec["fitted"]["labels"] = spec["labels"]
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def swap_first_two(labels: list) -> list:
    return [labels[1], labels[0], *labels[2:]]


FEWER = r"config\.json: task '{task}' has {n} label\(s\) {labels} but the graph's output logits_{task} has {w} column"
ORDER = r"config\.json: task '{task}' lists its labels as {labels} but the graph's output logits_{task} was exported "


def pattern(template: str, task: str, labels: list, **extra) -> str:
    return template.format(task=task, labels=re.escape(str(labels)), **extra)


@pytest.mark.parametrize(("task", "change", "message"), [
    ("sentiment", lambda labels: labels[1:], pattern(FEWER, "sentiment", ["pos"], n=1, w=2)),
    ("colors", lambda labels: labels[:-1], pattern(FEWER, "colors", COLORS[:-1], n=3, w=4)),
    ("sentiment", swap_first_two, pattern(ORDER, "sentiment", ["pos", "neg"])),
    ("colors", swap_first_two, pattern(ORDER, "colors", swap_first_two(COLORS))),
])
def test_a_config_whose_labels_do_not_fit_the_graph_is_refused(export, tmp_path, task, change, message):
    folder = edited(export, tmp_path, task, change)
    for graph in ("model.onnx", "model_int8.onnx"):  # both graphs carry the check
        with pytest.raises(ConfigError, match=message + ".*export the model again") as info:
            MultiTaskPredictor(folder, backend="onnx", onnx_file=graph)
        assert "\n" not in str(info.value)


def test_predict_backend_onnx_exits_2_with_one_line(export, tmp_path, capsys):
    folder = edited(export, tmp_path, "sentiment", lambda labels: labels[1:])
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "good item"}])
    assert main(["predict", folder, "--backend", "onnx", "--input", source,
                 "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "config.json" in line]
    assert len(lines) == 1 and "task 'sentiment' has 1 label(s) ['pos']" in lines[0] and "has 2 column" in lines[0]
    assert "manyheads export" in lines[0]
    assert not (tmp_path / "out.jsonl").exists()


def test_the_graphs_record_the_label_order_and_an_intact_export_loads(export):
    for graph in ("model.onnx", "model_int8.onnx"):
        recorded = open_session(str(export["graph"] / graph)).get_modelmeta().custom_metadata_map
        assert json.loads(recorded[labels_key("sentiment")]) == SENTIMENT
        assert json.loads(recorded[labels_key("colors")]) == COLORS
    predictions = MultiTaskPredictor(str(export["graph"]), backend="onnx").predict([{"text": "good red box"}])
    assert set(predictions[0]["sentiment"]["scores"]) == set(SENTIMENT)


def test_an_export_without_recorded_labels_still_loads(export, tmp_path):
    """Graphs exported before the labels were recorded: the column count is still checked, the order cannot be."""
    import onnx

    folder = tmp_path / "old"
    shutil.copytree(export["graph"], folder)
    graph = onnx.load(str(folder / "model.onnx"))
    del graph.metadata_props[:]
    onnx.save(graph, str(folder / "model.onnx"))
    MultiTaskPredictor(str(folder), backend="onnx")
    fewer = edited({"graph": folder}, tmp_path, "colors", lambda labels: labels[:2])
    with pytest.raises(ConfigError, match=pattern(FEWER, "colors", COLORS[:2], n=2, w=4)):
        MultiTaskPredictor(fewer, backend="onnx")


def test_int8_check_compares_multilabel_decisions_at_the_thresholds(export):
    from manyheads.export.onnx import _probes

    checks = json.loads((export["graph"] / MANIFEST).read_text())["checks"]["int8"]
    assert checks["sentiment"]["decision"] == "arg-max"
    assert checks["colors"]["decision"] == "thresholds"
    # The reported share is the rows whose whole label set at the thresholds is fp32's, on the export's probes.
    model = MultiTaskModel.from_pretrained(str(export["model"]))
    thresholds = np.array([0.3, 0.5, 0.52, 0.7])
    fp32, int8 = (open_session(str(export["graph"] / f)) for f in ("model.onnx", "model_int8.onnx"))

    def decide(logits: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-logits)) >= thresholds

    same = total = 0
    for probe in _probes(model, ["input_ids", "attention_mask", "token_type_ids"]):
        a, b = (run_graph(s, probe, ["colors"])[0] for s in (fp32, int8))
        same += int((decide(a) == decide(b)).all(-1).sum())
        total += len(a)
    assert checks["colors"]["agreement"] == pytest.approx(same / total)
    printed = export["stdout"]
    assert "decision agreement with fp32 per task" in printed and "arg-max agreement" not in printed
    assert re.search(r"colors \d+\.\d% same label set at its thresholds", printed), printed
    assert re.search(r"sentiment \d+\.\d% same arg-max", printed), printed
