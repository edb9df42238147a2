"""Export one task as a stock AutoModelFor... folder; stock pipelines give manyheads' own predictions."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, pipeline

from manyheads.cli.main import main
from manyheads.export.stock import ExportError, build_stock_model, export_task
from manyheads.recipe import build_config, build_trainer
from manyheads.serving.predictor import MultiTaskPredictor
from manyheads.tasks.question_answering import NO_OFFSET, best_span

from .conftest import COLORS, FILLER, GOOD, base_config
from .test_question_answering import squad_file, synthetic_articles
from .test_token_classification import colour_rows, write_conll


def train_every_type(folder, tiny_model_dir: str, steps: int, with_pair: bool) -> str:
    """A briefly trained model with one task of every type (four poolings; the pair task `match` optional),
    saved in `folder/model`."""
    from .conftest import review_rows as rows
    from .conftest import write_jsonl

    write_jsonl(folder / "train.jsonl", rows(64, 1))
    write_jsonl(folder / "eval.jsonl", rows(24, 2))
    write_conll(folder / "ner.conll", colour_rows(48, 1))
    squad_file(folder / "squad.json", synthetic_articles(6, 0))
    # One rate for all heads: lr 5e-3 suits this tiny model; eight heads at 8x it overshoot.
    raw = base_config(tiny_model_dir, folder, folder / "out", max_steps=steps, learning_rate=5e-3,
                      head_learning_rate_scaling="none")
    raw["tasks"] = [t for t in raw["tasks"] if with_pair or t["name"] != "match"] + [
        {"name": "ner", "type": "token_classification", "text": "tokens", "label": "tags",
         "data": {"train": "ner.conll", "tag_column": 1}},
        {"name": "qa", "type": "question_answering", "text": ["question", "context"], "label": "answers",
         "max_length": 24, "doc_stride": 8, "data": {"train": "squad.json", "format": "squad"}},
        {"name": "mean", "type": "classification", "text": "text", "label": "sentiment", "pooling": "mean",
         "data": {"train": "train.jsonl"}},
        {"name": "max", "type": "classification", "text": "text", "label": "sentiment", "pooling": "max",
         "data": {"train": "train.jsonl"}},
    ]
    trainer = build_trainer(build_config(raw))
    trainer.train()
    trainer.save_model(str(folder / "model"))
    return str(folder / "model")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_model_dir):
    """A briefly trained model with one task of every type, saved (no pair task: no stock model reads pairs here)."""
    return train_every_type(tmp_path_factory.mktemp("export"), tiny_model_dir, steps=20, with_pair=False)


def inputs(n=50, seed=0):
    rng = np.random.default_rng(seed)
    words = GOOD + COLORS + FILLER + ["bad", "awful"]
    return [" ".join(rng.choice(words, size=int(rng.integers(2, 9)))) for _ in range(n)]


@pytest.mark.parametrize("task", ["sentiment", "colors", "score"])
def test_sequence_exports_match_manyheads(saved_model, tmp_path, task):
    out = tmp_path / task
    assert export_task(saved_model, task, out) == "BertForSequenceClassification"
    texts = inputs()
    ours = MultiTaskPredictor(saved_model).predict([{"text": t} for t in texts], tasks=[task])
    stock = AutoModelForSequenceClassification.from_pretrained(out)
    if task == "sentiment":
        assert stock.config.id2label == {0: "neg", 1: "pos"}
        theirs = pipeline("text-classification", model=str(out), device="cpu")(texts)
        assert [t["label"] for t in theirs] == [o[task]["label"] for o in ours]
        assert [t["score"] for t in theirs] == pytest.approx([o[task]["score"] for o in ours], abs=1e-5)
    elif task == "colors":
        theirs = pipeline("text-classification", model=str(out), device="cpu", top_k=None,
                          function_to_apply="sigmoid")(texts)
        for row, o in zip(theirs, ours):
            scores = {d["label"]: d["score"] for d in row}
            assert scores == pytest.approx(o[task]["scores"], abs=1e-5)
            assert sorted(k for k, v in scores.items() if v >= 0.5) == sorted(o[task]["labels"])
    else:
        tok = MultiTaskPredictor(saved_model).tokenizer
        with torch.no_grad():
            values = stock(**tok(texts, padding=True, return_tensors="pt")).logits.squeeze(-1).tolist()
        assert values == pytest.approx([o[task]["score"] for o in ours], abs=1e-4)  # target units, not z-scores


def compare_entities_with_pipeline(saved_model: str, out, texts: list[str]) -> list[dict]:
    """manyheads' entities of `texts` equal the stock pipeline's on the exported model; returns ours."""
    ours = MultiTaskPredictor(saved_model).predict([{"text": t} for t in texts], tasks=["ner"])
    tagger = pipeline("token-classification", model=str(out), aggregation_strategy="first", device="cpu")
    for text, o in zip(texts, ours):
        theirs = {(e["entity_group"], e["start"], e["end"]) for e in tagger(text)}
        assert theirs == {(e["type"], e["start"], e["end"]) for e in o["ner"]["entities"]}, text
    assert sum(len(o["ner"]["entities"]) for o in ours) > 0  # the comparison covered real entities
    return ours


def test_token_classification_export_matches_pipeline_entities(saved_model, tmp_path):
    out = tmp_path / "ner"
    assert export_task(saved_model, "ner", out) == "BertForTokenClassification"
    compare_entities_with_pipeline(saved_model, out, inputs(seed=1))


def test_token_predictions_split_punctuation_as_the_stock_pipeline_does(saved_model, tmp_path):
    """Raw text with punctuation: "box," is the words "box" and ",", as in CoNLL training data and in the stock
    pipeline, so an entity ends at "box" unless the punctuation itself is tagged."""
    out = tmp_path / "ner"
    export_task(saved_model, "ner", out)
    rng = np.random.default_rng(4)
    texts = [" ".join(f"{w}{rng.choice(['', ',', '.', '!'], p=[0.4, 0.2, 0.2, 0.2])}"
                      for w in rng.choice(COLORS + FILLER + ["box"], size=8)) for _ in range(40)]
    ours = compare_entities_with_pipeline(saved_model, out, texts)
    for text, o in zip(texts, ours):
        assert all(e["text"] == text[e["start"]:e["end"]] for e in o["ner"]["entities"])
        assert len(o["ner"]["words"]) == len(o["ner"]["tags"]) == len(text.split()) + sum(map(text.count, ",.!"))


def test_question_answering_export_gives_the_same_answers(saved_model, tmp_path):
    out = tmp_path / "qa"
    assert export_task(saved_model, "qa", out) == "BertForQuestionAnswering"
    stock = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    predictor = MultiTaskPredictor(saved_model)
    rng = np.random.default_rng(3)
    records = [{"question": f"{c} item", "context": " ".join(rng.choice(FILLER + COLORS + ["box"], size=14))}
               for c in rng.choice(COLORS, size=50)]
    ours = predictor.predict(records, tasks=["qa"])
    qa = predictor.model.tasks["qa"]
    for record, o in zip(records, ours):
        # transformers 5 ships no question-answering pipeline: decode the stock model's logits with the same
        # windowing and span search, and compare the answers.
        encoded, metas = qa.encode_for_prediction([[record["question"]], [record["context"]]], predictor.tokenizer,
                                                  False)
        with torch.no_grad():
            result = stock(**encoded)
        spans = [best_span(result.start_logits[i].numpy(), result.end_logits[i].numpy(), m["offsets"], 30)
                 for i, m in enumerate(metas)]
        score, first, last = max(s for s in spans if s is not None)
        assert (record["context"][first:last], first, last) == (o["qa"]["answer"], o["qa"]["start"], o["qa"]["end"])
        assert score == pytest.approx(o["qa"]["score"], abs=1e-5)
        assert all(m["offsets"][0] == NO_OFFSET for m in metas)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_mean_and_max_pooling_cannot_be_exported(saved_model, tmp_path, pooling):
    with pytest.raises(ExportError, match=f"task '{pooling}' uses {pooling} pooling, which no stock AutoModelFor"):
        export_task(saved_model, pooling, tmp_path / "x")


def test_export_cli(saved_model, tmp_path, capsys):
    assert main(["export", saved_model, "--task", "sentiment", "--output", str(tmp_path / "s")]) == 0
    assert "exported as BertForSequenceClassification" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert main(["export", saved_model, "--task", "nope", "--output", str(tmp_path / "n")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_stock_model_check_catches_a_wrong_head(saved_model):
    from manyheads import MultiTaskModel

    model = MultiTaskModel.from_pretrained(saved_model)
    model.tasks["score"].fitted["std"] = 0.0  # corrupt the target scaling: the fold no longer matches
    layout = model.tasks["score"].stock_layout  # and the check's view of our logits, off by one
    model.tasks["score"].stock_layout = lambda head: dataclasses.replace(layout(head), our_logits=lambda x: x + 1.0)
    with pytest.raises(ExportError, match="does not reproduce"):
        build_stock_model(model, "score")
