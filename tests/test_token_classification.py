"""token_classification: CoNLL reading, word/sub-word alignment, entity decoding, metrics, end to end."""

import numpy as np
import pytest
from datasets import Dataset
from transformers import BertTokenizerFast

from manyheads import ConfigError
from manyheads.recipe import build_config, build_trainer, prepare_data
from manyheads.recipe.loading import read_conll
from manyheads.serving.predictor import MultiTaskPredictor
from manyheads.tasks.token_classification import TokenClassification, entity_spans

from .conftest import base_config

CONLL = """-DOCSTART- -X- -X- O

good NN B-NP B-POS
red JJ I-NP B-COL
box NN I-NP O

awful JJ B-NP B-NEG
blue JJ I-NP B-COL
green JJ I-NP I-COL
"""


def task(labels=None, **options):
    return TokenClassification(name="ner", text=["tokens"], label="tags", labels=labels, max_length=32, **options)


def piece_tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able", "##ly", "red", "box"]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)


def test_read_conll_skips_docstart_and_splits_sentences(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    data = read_conll(path)
    assert data["tokens"] == [["good", "red", "box"], ["awful", "blue", "green"]]
    assert data["tags"] == [["B-POS", "B-COL", "O"], ["B-NEG", "B-COL", "I-COL"]]
    assert read_conll(path, tag_column=2)["tags"][0] == ["B-NP", "I-NP", "I-NP"]


def test_conll_wrong_column_count_is_reported(tmp_path, tiny_model_dir):
    (tmp_path / "bad.conll").write_text("good NN B-NP O\nred JJ O\n", encoding="utf-8")
    raw = {"model": tiny_model_dir, "data_dir": str(tmp_path), "tasks": [
        {"name": "ner", "type": "token_classification", "text": "tokens", "label": "tags",
         "data": {"train": "bad.conll"}}], "training": {"output_dir": str(tmp_path / "o")}}
    with pytest.raises(ConfigError, match=r"bad.conll: cannot read as conll: line 2 has 3 columns, expected 4"):
        prepare_data(build_config(raw), tokenize=False)


def test_first_subtoken_carries_the_tag():
    t = task(labels=["O", "B-X", "I-X"])
    batch = {"tokens": [["unbelievablely", "red", "box"]], "tags": [["B-X", "I-X", "O"]]}
    encoded = t.encode(batch, piece_tokenizer())
    # One word split into four pieces: only the first carries the word's tag.
    assert encoded.tokens(0) == ["[CLS]", "un", "##believ", "##able", "##ly", "red", "box", "[SEP]"]
    assert t.encode_labels(batch, encoded)[0] == [-100, 1, -100, -100, -100, 2, 0, -100]


def test_label_all_subtokens_turns_b_into_i():
    t = task(labels=["O", "B-X", "I-X"], label_all_subtokens=True)
    batch = {"tokens": [["unbelievablely", "red"]], "tags": [["B-X", "O"]]}
    encoded = t.encode(batch, piece_tokenizer())
    assert t.encode_labels(batch, encoded)[0] == [-100, 1, 2, 2, 2, 0, -100]


def test_length_mismatch_and_unknown_tag_are_reported():
    t = task(labels=["O", "B-X"])
    bad = Dataset.from_dict({"tokens": [["a", "b"]], "tags": [["O"]]})
    assert "2 words but 1 tags" in t.check_data("train", bad, "f.jsonl")[0]
    unknown = Dataset.from_dict({"tokens": [["a"]], "tags": [["B-Y"]]})
    assert "tag 'B-Y' is not in the declared labels" in t.check_data("train", unknown, "f.jsonl")[0]


def test_entity_spans_iob2_and_iobes():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 6)]
    assert entity_spans(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"]) == [("PER", 0, 1), ("LOC", 1, 4)]


def test_metrics_against_hand_computed_values():
    t = task(labels=["O", "B-PER", "I-PER", "B-LOC"])
    # Gold entities: PER(words 0-1), LOC(3) | LOC(0). Predicted: PER(0-1) right, LOC(3) missed | LOC(0)
    # missed, a wrong PER at word 1. precision 1/2, recall 1/3, f1 0.4; token accuracy 3/6.
    gold = np.array([[-100, 1, 2, 0, 3, -100], [-100, 3, 0, -100, -100, -100]])
    pred_ids = np.array([[0, 1, 2, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    logits = np.eye(4)[pred_ids]
    metrics = t.compute_metrics(logits, gold)
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(0.4)
    assert metrics["accuracy"] == pytest.approx(3 / 6)


def write_conll(path, rows):
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*r)) for r in rows) + "\n", encoding="utf-8")


def colour_rows(n, seed):
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "the", "box", "item", "red", "green", "blue"]
    rows = []
    for _ in range(n):
        tokens = list(rng.choice(words, size=rng.integers(3, 8)))
        tags = ["B-COL" if w in ("red", "green", "blue") else "O" for w in tokens]
        rows.append((tokens, tags))
    return rows


def test_token_task_trains_evaluates_and_predicts_per_word(tiny_model_dir, data_dir, tmp_path):
    write_conll(data_dir / "ner_train.conll", colour_rows(64, 1))
    write_conll(data_dir / "ner_eval.conll", colour_rows(16, 2))
    # 80 steps: with length-grouped batches (the default) this tiny task needed more than the 40 random ones did.
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=80, learning_rate=5e-3,
                      head_learning_rate_scaling="none")  # tuned at one rate for all heads
    raw["tasks"] = [raw["tasks"][0], {"name": "ner", "type": "token_classification", "text": "tokens",
                                      "label": "tags", "data": {"train": "ner_train.conll",
                                                                "eval": "ner_eval.conll", "tag_column": 1}}]
    trainer = build_trainer(build_config(raw))
    assert trainer.model.tasks["ner"].label_list == ["O", "B-COL"]
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_ner_f1", "eval_ner_precision", "eval_ner_recall", "eval_ner_accuracy"} <= set(metrics)
    assert metrics["eval_ner_f1"] > 0.9  # colour words are trivially taggable

    trainer.save_model(str(tmp_path / "model"))
    text = "the  red box and blue"
    for predictor in (MultiTaskPredictor(trainer.model, trainer.processing_class),
                      MultiTaskPredictor(str(tmp_path / "model"))):
        result = predictor.predict([{"text": text}])[0]
        assert set(result) == {"sentiment", "ner"}
        ner = result["ner"]
        assert ner["words"] == ["the", "red", "box", "and", "blue"]
        assert ner["tags"] == ["O", "B-COL", "O", "O", "B-COL"]
        assert [(e["text"], e["start"], e["end"]) for e in ner["entities"]] == [("red", 5, 8), ("blue", 17, 21)]
        assert all(text[e["start"]:e["end"]] == e["text"] for e in ner["entities"])


def test_unlabelled_test_split_is_checked_for_words_only(tiny_model_dir, data_dir, tmp_path):
    write_conll(data_dir / "ner_train.conll", colour_rows(8, 1))
    (data_dir / "ner_test.jsonl").write_text('{"tokens": ["the", "red", "box"]}\n', encoding="utf-8")
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{"name": "ner", "type": "token_classification", "text": "tokens", "label": "tags",
                     "data": {"train": "ner_train.conll", "test": "ner_test.jsonl", "tag_column": 1}}]
    prepared = prepare_data(build_config(raw), tokenize=False)
    assert len(prepared.raw["ner"].splits["test"]) == 1
    (data_dir / "ner_test.jsonl").write_text('{"tokens": "the red box"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="column 'tokens': expected a list of words, got 'the red box'"):
        prepare_data(build_config(raw), tokenize=False)


def test_tags_that_are_not_spans_need_scheme_none_and_the_error_says_so():
    pos = Dataset.from_dict({"tokens": [["the", "box"]], "tags": [["DT", "NN"]]})
    problems = task().check_data("train", pos, "pos.jsonl")
    assert problems == ["pos.jsonl: data row 1, column 'tags': tag 'DT' is not an IOB2 tag (O, B-TYPE, I-TYPE). "
                        "For tags that are not entity spans (POS tags) set scheme: none; f1 is then averaged over "
                        "tags and entities are not predicted."]
    assert "tag 'X' is not an IOBES tag" in task(scheme="IOBES").check_data(
        "train", Dataset.from_dict({"tokens": [["a", "b"]], "tags": [["S-PER", "X"]]}), "f")[0]
    assert task(scheme="none").check_data("train", pos, "pos.jsonl") == []


def test_scheme_none_scores_tags_by_macro_average_against_hand_computed_values():
    t = task(labels=["DT", "NN", "JJ"], scheme="none")
    # Gold DT NN | JJ NN ; predicted DT JJ | JJ NN. DT: p1 r1; NN: p 1/1, r 1/2; JJ: p 1/2, r 1.
    gold = np.array([[-100, 0, 1, -100], [-100, 2, 1, -100]])
    logits = np.eye(3)[np.array([[0, 0, 2, 0], [0, 2, 1, 0]])]
    metrics = t.compute_metrics(logits, gold)
    f1 = {"DT": 1.0, "NN": 2 * 0.5 / 1.5, "JJ": 2 * 0.5 / 1.5}
    assert metrics["precision"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert metrics["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["f1"] == pytest.approx(sum(f1.values()) / 3)
    assert metrics["accuracy"] == pytest.approx(3 / 4)


def test_a_pos_task_trains_evaluates_and_predicts_tags_without_entities(tiny_encoder, tokenizer, tmp_path):
    from manyheads import MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments

    def rows(n, seed):
        rng = np.random.default_rng(seed)
        tag_of = {"the": "DT", "red": "JJ", "blue": "JJ", "box": "NN", "item": "NN"}
        tokens = [list(rng.choice(list(tag_of), size=rng.integers(2, 6))) for _ in range(n)]
        return Dataset.from_dict({"tokens": tokens, "tags": [[tag_of[w] for w in row] for row in tokens]})

    pos = TokenClassification(name="pos", scheme="none", main_metric="accuracy")
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=40,
                                      learning_rate=5e-3, report_to="none", save_strategy="no", use_cpu=True)
    trainer = MultiTaskTrainer(model=MultiTaskModel.from_encoder(tiny_encoder, [pos]), args=args,
                               train_dataset={"pos": rows(64, 1)}, eval_dataset={"pos": rows(16, 2)},
                               processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_pos_accuracy"] > 0.9
    assert 0 <= metrics["eval_pos_f1"] <= 1
    result = MultiTaskPredictor(trainer.model, tokenizer).predict([{"text": "the red box"}])[0]["pos"]
    assert result["tags"] == ["DT", "JJ", "NN"]
    assert result["entities"] == []
