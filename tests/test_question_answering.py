"""question_answering: windows, labels, SQuAD EM/F1, span search mapped back to characters, end to end."""

import json

import numpy as np
import pytest
from datasets import Dataset

from manyheads import ConfigError
from manyheads.recipe import build_config, build_trainer, prepare_data
from manyheads.serving.predictor import MultiTaskPredictor
from manyheads.tasks.question_answering import (
    NO_OFFSET,
    QuestionAnswering,
    exact_match,
    normalize_answer,
    token_f1,
)

from .conftest import FILLER, base_config, make_tokenizer


def qa_task(max_length=16, doc_stride=4, **options):
    return QuestionAnswering(name="qa", text=["question", "context"], label="answers", max_length=max_length,
                             doc_stride=doc_stride, **options)


def qa_rows(contexts_answers):
    rows = {"question": [], "context": [], "answers": []}
    for question, context, answer in contexts_answers:
        rows["question"].append(question)
        rows["context"].append(context)
        rows["answers"].append({"text": [answer], "answer_start": [context.index(answer)]})
    return Dataset.from_dict(rows)


def test_squad_normalisation_em_and_f1_hand_computed():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Red box", "red box") == 1.0
    assert exact_match("red", "red box") == 0.0
    # prediction "red big box" vs gold "the red box": common {red, box} -> P 2/3, R 2/2, F1 0.8
    assert token_f1("red big box", "the red box") == pytest.approx(0.8)
    assert token_f1("blue", "red box") == 0.0


def test_short_context_is_one_window_with_exact_labels():
    task = qa_task(max_length=32)
    data = qa_rows([("red", "the red box was good", "box was good")])
    features = task.preprocess(data, make_tokenizer())
    assert len(features) == 1
    start, end = features[0]["labels"]
    offsets = features[0]["offset_mapping"]
    context = features[0]["context"]
    assert context[offsets[start][0]:offsets[end][1]] == "box was good"
    # Question and special tokens carry no offsets, so no span can start there.
    assert offsets[0] == NO_OFFSET and offsets[1] == NO_OFFSET


def test_answer_straddling_a_window_edge_is_labelled_cls_there_and_found_in_another_window():
    task = qa_task(max_length=12, doc_stride=4)
    words = (FILLER * 3)[:20]
    # 8 context tokens per window, advancing by 4: tokens 6-8 are cut by the first window, whole in the second.
    context = " ".join(words[:6] + ["red", "green", "blue"] + words[6:])
    data = qa_rows([("red", context, "red green blue")])
    features = task.preprocess(data, make_tokenizer())
    assert len(features) > 2  # the context needs several windows
    labels = [tuple(f["labels"]) for f in features]
    inside = [f for f in features if tuple(f["labels"]) != (0, 0)]
    assert (0, 0) in labels and inside
    for feature in inside:
        start, end = feature["labels"]
        offs = feature["offset_mapping"]
        assert context[offs[start][0]:offs[end][1]] == "red green blue"
    # A window that cuts the answer (holds its start but not its end) points at [CLS].
    cut = [f for f in features if any(o != NO_OFFSET and o[0] == context.index("red") for o in f["offset_mapping"])
           and not any(o != NO_OFFSET and o[1] == context.index("blue") + 4 for o in f["offset_mapping"])]
    assert cut and all(tuple(f["labels"]) == (0, 0) for f in cut)


def test_span_search_maps_logits_back_to_characters_and_scores_em():
    task = qa_task(max_length=12, doc_stride=4)
    context = " ".join((FILLER * 2)[:12]) + " red green blue"
    data = qa_rows([("red", context, "green blue"), ("box", "the box is red", "red")])
    features = task.preprocess(data, make_tokenizer())
    length = max(len(f["input_ids"]) for f in features)
    logits = np.full((len(features), length, 2), -5.0)
    for i, f in enumerate(features):  # peak exactly on the gold tokens of the windows that hold the answer
        start, end = f["labels"]
        if (start, end) != (0, 0):
            logits[i, start, 0] = logits[i, end, 1] = 5.0
    metrics = task.compute_metrics(logits, np.array([f["labels"] for f in features]), features)
    assert metrics == {"f1": 1.0, "exact_match": 1.0}
    logits[:, :, :] = -5.0  # now the best span is an arbitrary one: EM drops
    assert task.compute_metrics(logits, None, features)["exact_match"] < 1.0


def test_answer_not_at_its_offset_is_reported():
    task = qa_task()
    bad = Dataset.from_dict({"question": ["q"], "context": ["the red box"],
                             "answers": [{"text": ["red"], "answer_start": [0]}]})
    assert "answer 'red' not found at offset 0 of the context (found 'the')" in task.check_data("t", bad, "f")[0]


def squad_file(path, articles):
    data = {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": c, "qas": [
            {"id": f"{title}-{i}", "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
            for i, (q, a) in enumerate(qas)]} for c, qas in paragraphs]}
        for title, paragraphs in articles]}
    path.write_text(json.dumps(data), encoding="utf-8")


def synthetic_articles(n, seed):
    rng = np.random.default_rng(seed)
    colors = ["red", "green", "blue", "yellow"]
    articles = []
    for a in range(n):
        paragraphs = []
        for _ in range(3):
            color = str(rng.choice(colors))
            words = list(rng.choice(FILLER, size=6))
            position = int(rng.integers(0, 6))
            context = " ".join(words[:position] + [color, "box"] + words[position:])
            paragraphs.append((context, [(f"{color} item", f"{color} box")]))
        articles.append((f"article{a}", paragraphs))
    return articles


def test_squad_json_split_by_article_trains_and_predicts(tiny_model_dir, data_dir, tmp_path):
    squad_file(data_dir / "squad.json", synthetic_articles(10, 0))
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=30, learning_rate=5e-3)
    raw["tasks"] = [raw["tasks"][0], {
        "name": "qa", "type": "question_answering", "text": ["question", "context"], "label": "answers",
        "doc_stride": 8, "max_length": 24,
        "data": {"train": "squad.json", "format": "squad", "split_by": "title", "eval_fraction": 0.2}}]
    run = build_config(raw)
    prepared = prepare_data(run, tokenize=False)
    train_titles = set(prepared.raw["qa"].splits["train"]["title"])
    eval_titles = set(prepared.raw["qa"].splits["eval"]["title"])
    assert eval_titles == {"article8", "article9"} and not train_titles & eval_titles

    trainer = build_trainer(run)
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_qa_f1", "eval_qa_exact_match", "eval_qa_loss"} <= set(metrics)
    assert 0.0 <= metrics["eval_qa_exact_match"] <= metrics["eval_qa_f1"] <= 1.0

    trainer.save_model(str(tmp_path / "model"))
    records = [{"question": "red item", "context": "the item was red box and it is very thing"},
               {"question": "blue item", "context": " ".join(FILLER * 3) + " blue box"}]
    in_memory = MultiTaskPredictor(trainer.model, trainer.processing_class).predict(records, tasks=["qa"])
    reloaded = MultiTaskPredictor(str(tmp_path / "model"), batch_size=1).predict(records, tasks=["qa"])
    for a, b, record in zip(in_memory, reloaded, records):
        assert a["qa"]["answer"] == b["qa"]["answer"]
        assert a["qa"]["score"] == pytest.approx(b["qa"]["score"], abs=1e-5)
        answer = a["qa"]
        assert record["context"][answer["start"]:answer["end"]] == answer["answer"]
        assert 0.0 <= answer["score"] <= 1.0


def test_eval_fraction_and_eval_file_are_exclusive(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"][0]["data"]["eval_fraction"] = 0.2
    with pytest.raises(ConfigError, match="either 'eval' .a file. or 'eval_fraction'"):
        build_config(raw)
