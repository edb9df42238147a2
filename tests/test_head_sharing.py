"""Head sharing across datasets (`head: nli` on an RTE-like and an MNLI-like set): each dataset keeps its own
sampling, loss and metrics; the model has ONE head `nli`, saved once, and predict, export and serve answer `nli`.
End to end: train, save, reload in a fresh process, predict, stock and ONNX export, serve."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open

from manyheads import (
    Classification,
    ConfigError,
    MultiTaskModel,
    MultiTaskTrainer,
    MultiTaskTrainingArguments,
    Regression,
)
from manyheads.serving.predictor import MultiTaskPredictor

from .conftest import COLORS
from .test_user_task_type import _onnx_installed

RECORDS = [{"premise": "the red box", "hypothesis": "red", "text": "it is good"},
           {"premise": "a green thing", "hypothesis": "blue", "text": "it is awful"}]

CHILD = textwrap.dedent('''
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from manyheads import MultiTaskModel
    from manyheads.export.stock import export_task
    from manyheads.serving.predictor import MultiTaskPredictor

    folder, out, with_onnx = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    records = json.loads(sys.argv[4])
    model = MultiTaskModel.from_pretrained(folder).eval()
    result = {"heads": sorted(model.heads), "tasks": list(model.tasks), "groups": model.head_groups}
    predictor = MultiTaskPredictor(folder, device="cpu")
    result["predictor_tasks"] = predictor.tasks
    result["predictions"] = predictor.predict(records)
    result["stock_class"] = export_task(folder, "nli", f"{out}/stock")
    stock = AutoModelForSequenceClassification.from_pretrained(f"{out}/stock").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer([r["premise"] for r in records], [r["hypothesis"] for r in records], padding=True,
                        return_tensors="pt")
    with torch.no_grad():
        result["logits_rte"] = model(**encoded, task="rte").logits.tolist()
        result["logits_mnli"] = model(**encoded, task="mnli").logits.tolist()
        result["stock_logits"] = stock(**encoded).logits.tolist()
    result["id2label"] = stock.config.id2label
    if with_onnx:
        from manyheads.export.onnx import export_onnx

        export = export_onnx(folder, f"{out}/onnx")
        result["onnx_tasks"] = export.tasks
        onnx = MultiTaskPredictor(f"{out}/onnx", backend="onnx")
        result["onnx_predictor_tasks"] = onnx.tasks
        result["onnx_predictions"] = onnx.predict(records)
    print("RESULT " + json.dumps(result))
''')


def _nli(n: int, seed: int) -> Dataset:
    """(premise, hypothesis, label): entailment when the premise names the hypothesis's colour."""
    rng = random.Random(seed)
    rows = {"premise": [], "hypothesis": [], "label": []}
    for i in range(n):
        color = rng.choice(COLORS)
        entailed = i % 2 == 0
        named = color if entailed else rng.choice([c for c in COLORS if c != color])
        rows["premise"].append(f"the {named} {rng.choice(['box', 'thing'])}")
        rows["hypothesis"].append(color)
        rows["label"].append("entailment" if entailed else "not_entailment")
    return Dataset.from_dict(rows)


def _sentiment(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    labels = [rng.choice(["neg", "pos"]) for _ in range(n)]
    texts = [f"it is {rng.choice(['good', 'great'] if y == 'pos' else ['bad', 'awful'])}" for y in labels]
    return Dataset.from_dict({"text": texts, "label": labels})


def _tasks() -> list:
    pair = ["premise", "hypothesis"]
    return [Classification(name="rte", text=pair, head="nli"), Classification(name="mnli", text=pair, head="nli"),
            Classification(name="sst2")]


def _args(tmp_path, **kwargs) -> MultiTaskTrainingArguments:
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=12, learning_rate=1e-3,
                  report_to="none", save_strategy="no", use_cpu=True, seed=3, dataloader_pin_memory=False,
                  logging_steps=4)
    values.update(kwargs)
    return MultiTaskTrainingArguments(**values)


def test_two_datasets_train_one_head_and_it_is_served_as_one_from_a_fresh_process(tiny_encoder, tokenizer, tmp_path):
    model = MultiTaskModel.from_encoder(tiny_encoder, _tasks())
    trainer = MultiTaskTrainer(model=model, args=_args(tmp_path),
                               train_dataset={"rte": _nli(40, 0), "mnli": _nli(64, 1), "sst2": _sentiment(40, 2)},
                               eval_dataset={"rte": _nli(16, 3), "mnli": _nli(16, 4), "sst2": _sentiment(16, 5)},
                               processing_class=tokenizer)
    assert sorted(model.heads) == ["nli", "sst2"]
    assert model.head_groups == {"nli": ["rte", "mnli"], "sst2": ["sst2"]}
    # Both datasets update the same parameters: the head is one module.
    assert [id(p) for _, p in model.task_parameters("rte")] == [id(p) for _, p in model.task_parameters("mnli")]
    assert [n for n, _ in model.task_parameters("rte")][0].startswith("heads.nli.")
    before = {n: p.detach().clone() for n, p in model.heads["nli"].named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.heads["nli"].named_parameters())
    # Each dataset keeps its own sampling share, loss and metrics.
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss_rte", "loss_mnli", "loss_sst2"} <= logged
    metrics = trainer.evaluate()
    for name in ("rte", "mnli", "sst2"):
        assert 0.0 <= metrics[f"eval_{name}_accuracy"] <= 1.0
    # Same head, same inputs: the two datasets' logits are the same numbers.
    encoded = tokenizer(["the red box"], ["red"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**encoded, task="rte").logits, model(**encoded, task="mnli").logits)

    folder = tmp_path / "model"
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        heads = {key.split(".")[1] for key in weights.keys() if key.startswith("heads.")}
    assert heads == {"nli", "sst2"}  # the shared head is stored once; no per-dataset copies
    card = (folder / "README.md").read_text()
    assert "2 heads for 3 tasks" in card and "| rte | classification | premise + hypothesis |" in card
    specs = {spec["name"]: spec for spec in json.loads((folder / "config.json").read_text())["tasks"]}
    assert specs["rte"]["head"] == specs["mnli"]["head"] == "nli" and specs["sst2"]["head"] is None
    predictor = MultiTaskPredictor(model, tokenizer, device="cpu")
    assert predictor.tasks == ["nli", "sst2"]
    expected = predictor.predict(RECORDS)
    assert [sorted(row) for row in expected] == [["nli", "sst2"]] * len(RECORDS)
    assert predictor.predict(RECORDS, tasks=["nli"])[0] == {"nli": expected[0]["nli"]}

    onnx = _onnx_installed()
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(tmp_path / "exports"), "1" if onnx else "0",
                           json.dumps(RECORDS)], capture_output=True, text=True, env=dict(os.environ), timeout=600,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["heads"] == ["nli", "sst2"] and result["tasks"] == ["rte", "mnli", "sst2"]
    assert result["groups"] == {"nli": ["rte", "mnli"], "sst2": ["sst2"]}
    assert result["predictor_tasks"] == ["nli", "sst2"]
    for got, want in zip(result["predictions"], expected):
        assert sorted(got) == ["nli", "sst2"]
        for name in ("nli", "sst2"):
            assert got[name]["label"] == want[name]["label"]
            assert got[name]["score"] == pytest.approx(want[name]["score"], abs=1e-5)
    assert result["stock_class"] == "BertForSequenceClassification"
    assert result["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert result["logits_rte"] == result["logits_mnli"]
    assert torch.allclose(torch.tensor(result["stock_logits"]), torch.tensor(result["logits_rte"]), atol=1e-5)
    if onnx:
        assert result["onnx_tasks"] == result["onnx_predictor_tasks"] == ["nli", "sst2"]
        for got, want in zip(result["onnx_predictions"], expected):
            assert got["nli"]["label"] == want["nli"]["label"]
            assert got["nli"]["score"] == pytest.approx(want["nli"]["score"], abs=1e-4)

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from manyheads.serving.server import create_app

    with TestClient(create_app(MultiTaskPredictor(str(folder), device="cpu"))) as client:
        described = client.get("/").json()
        assert [entry["name"] for entry in described["tasks"]] == ["nli", "sst2"]
        assert described["tasks"][0]["labels"] == ["entailment", "not_entailment"]
        answer = client.post("/predict", json={"records": RECORDS, "tasks": ["nli"]}).json()
        assert [row["nli"]["label"] for row in answer["predictions"]] == [row["nli"]["label"] for row in expected]


def test_datasets_whose_labels_disagree_cannot_share_a_head_and_the_error_names_both(tiny_encoder, tokenizer,
                                                                                      tmp_path):
    three = _nli(30, 1).map(lambda row, i: {"label": "neutral" if i % 3 == 0 else row["label"]}, with_indices=True)
    model = MultiTaskModel.from_encoder(tiny_encoder, _tasks())
    with pytest.raises(ConfigError) as err:
        MultiTaskTrainer(model=model, args=_args(tmp_path),
                         train_dataset={"rte": _nli(30, 0), "mnli": three, "sst2": _sentiment(20, 2)},
                         processing_class=tokenizer)
    message = str(err.value)
    assert "head 'nli'" in message and "'rte'" in message and "'mnli'" in message
    assert "['entailment', 'not_entailment']" in message and "neutral" in message


def test_head_groups_of_mixed_types_or_own_adapters_are_refused_when_the_model_is_built(tiny_encoder):
    pair = ["premise", "hypothesis"]
    with pytest.raises(ConfigError) as err:
        MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="a", text=pair, head="nli"),
                                                   Regression(name="b", text=pair, head="nli")])
    assert "head 'nli'" in str(err.value) and "different types" in str(err.value)
    pytest.importorskip("peft")
    with pytest.raises(ConfigError) as err:
        MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="a", text=pair, head="nli"),
                                                   Classification(name="b", text=pair, head="nli")], sharing="lora")
    assert "own LoRA adapter" in str(err.value) and "adapter: false" in str(err.value)
    # Without their own adapters, the datasets share the head on the plain shared encoder.
    model = MultiTaskModel.from_encoder(tiny_encoder, [
        Classification(name="a", text=pair, head="nli", adapter=False, labels=["no", "yes"]),
        Classification(name="b", text=pair, head="nli", adapter=False, labels=["no", "yes"]),
        Classification(name="c", labels=["neg", "pos"])], sharing="lora")
    assert sorted(model.heads) == ["c", "nli"]
    with pytest.raises(ConfigError) as err:
        Classification(name="a", head="n l i")
    assert "head: got" in str(err.value)
