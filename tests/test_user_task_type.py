"""A task type defined in user code (tests/user_tasks/pair_ranking.py), with its own head module and stock layout,
goes through the whole library without a line of the package changed: it trains with `MultiTaskTrainer`, saves,
and in a FRESH Python process reloads by its import path, predicts, and exports (stock folder and ONNX graph)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments
from manyheads.serving.predictor import MultiTaskPredictor

from .conftest import COLORS

TESTS = Path(__file__).resolve().parent
TYPE_PATH = "user_tasks.pair_ranking.PairRanking"
RECORDS = [{"query": "red", "passage": "the red box"}, {"query": "blue", "passage": "a green thing"},
           {"query": "yellow", "passage": "it is yellow and nice"}]

# Runs in a new interpreter: nothing of the test process (its imported modules, sys.path) is there.
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
    task = model.tasks["rank"]
    result = {"type": task.type, "class": f"{type(task).__module__}.{type(task).__qualname__}",
              "head": type(model.heads["rank"]).__name__, "margin": task.margin}
    result["predictions"] = MultiTaskPredictor(folder, device="cpu").predict(records)
    result["stock_class"] = export_task(folder, "rank", f"{out}/stock")
    stock = AutoModelForSequenceClassification.from_pretrained(f"{out}/stock").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer([r["query"] for r in records], [r["passage"] for r in records], padding=True,
                        return_tensors="pt")
    with torch.no_grad():
        ours = model(**encoded, task="rank").logits
        theirs = stock(**encoded).logits
    result["logits"] = ours.tolist()
    result["stock_logits"] = theirs.tolist()
    result["id2label"] = stock.config.id2label
    if with_onnx:
        from manyheads.export.onnx import export_onnx

        export_onnx(folder, f"{out}/onnx", tasks=["rank"])
        result["onnx_predictions"] = MultiTaskPredictor(f"{out}/onnx", backend="onnx").predict(records)
    print("RESULT " + json.dumps(result))
''')


def _pairs(n: int, seed: int) -> Dataset:
    """(query, passage, relevant): relevant when the passage names the query's colour."""
    rng = random.Random(seed)
    rows = {"query": [], "passage": [], "relevant": []}
    for i in range(n):
        color = rng.choice(COLORS)
        relevant = i % 2 == 0
        named = color if relevant else rng.choice([c for c in COLORS if c != color])
        rows["query"].append(color)
        rows["passage"].append(f"the {named} {rng.choice(['box', 'thing', 'item'])}")
        rows["relevant"].append(relevant)
    return Dataset.from_dict(rows)


def _sentiment(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    labels = [rng.choice(["neg", "pos"]) for _ in range(n)]
    texts = [f"it is {rng.choice(['good', 'great'] if y == 'pos' else ['bad', 'awful'])}" for y in labels]
    return Dataset.from_dict({"text": texts, "label": labels})


def _onnx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def test_a_user_task_type_trains_saves_and_is_served_and_exported_from_a_fresh_process(tiny_encoder, tokenizer,
                                                                                        tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # the user's package, importable as `user_tasks`
    from user_tasks.pair_ranking import PairRanking, PairRankingHead

    task = PairRanking(name="rank", margin=0.25)
    assert task.type == PairRanking.type == TYPE_PATH  # one name, the import path (not in TASK_TYPES)
    model = MultiTaskModel.from_encoder(tiny_encoder, [task, Classification(name="sentiment")])
    assert isinstance(model.heads["rank"], PairRankingHead)  # built before training: its labels are fixed
    before = model.heads["rank"].ranker.weight.detach().clone()

    args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=8,
                                      learning_rate=1e-3, report_to="none", save_strategy="no", use_cpu=True,
                                      seed=3, dataloader_pin_memory=False)
    trainer = MultiTaskTrainer(model=model, args=args,
                               train_dataset={"rank": _pairs(48, 0), "sentiment": _sentiment(48, 1)},
                               eval_dataset={"rank": _pairs(16, 2), "sentiment": _sentiment(16, 3)},
                               processing_class=tokenizer)
    trainer.train()
    assert not torch.equal(before, model.heads["rank"].ranker.weight.detach())  # the user's head trained
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_rank_accuracy"] <= 1.0 and "eval_rank_mean_relevance_gap" in metrics
    assert metrics["eval_rank_constant_predictions"] in (0.0, 1.0)  # its DetectsConstant capability was asked

    folder = tmp_path / "model"
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    specs = {spec["name"]: spec for spec in json.loads((folder / "config.json").read_text())["tasks"]}
    assert specs["rank"]["type"] == TYPE_PATH and specs["rank"]["margin"] == 0.25
    assert specs["sentiment"]["type"] == "classification"
    expected = MultiTaskPredictor(model, tokenizer, device="cpu").predict(RECORDS)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    onnx = _onnx_installed()
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(tmp_path / "exports"), "1" if onnx else "0",
                           json.dumps(RECORDS)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])

    assert result["type"] == result["class"] == TYPE_PATH
    assert result["head"] == "PairRankingHead" and result["margin"] == 0.25
    # Reloaded predictions: every row, both tasks (the records have no `text`, so sentiment is left out), equal
    # to the trained model's in the test process.
    predictions = result["predictions"]
    assert [sorted(p) for p in predictions] == [["rank"]] * len(RECORDS)
    for got, want in zip(predictions, expected):
        assert got["rank"]["label"] == want["rank"]["label"] in ("irrelevant", "relevant")
        assert got["rank"]["relevance"] == pytest.approx(want["rank"]["relevance"], abs=1e-5)
    # The stock export: the head's `ranker` became BERT's `classifier`, and gives the same logits.
    assert result["stock_class"] == "BertForSequenceClassification"
    assert result["id2label"] == {"0": "irrelevant", "1": "relevant"}
    assert torch.allclose(torch.tensor(result["stock_logits"]), torch.tensor(result["logits"]), atol=1e-5)
    assert torch.tensor(result["logits"]).shape == (len(RECORDS), 2)
    if onnx:
        for got, want in zip(result["onnx_predictions"], expected):
            assert got["rank"]["label"] == want["rank"]["label"]
            assert got["rank"]["relevance"] == pytest.approx(want["rank"]["relevance"], abs=1e-4)
