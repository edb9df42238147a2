"""No silent wrong output (issue 29, item 2): settings and data that used to be accepted and then trained or
predicted something else than the user meant now fail at config time with one line, or warn. Each test failed on
the code before."""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset

from manyheads import (
    Classification,
    ConfigError,
    MultiTaskModel,
    MultiTaskPredictor,
    MultiTaskTrainer,
    MultiTaskTrainingArguments,
    Sharing,
    TokenClassification,
)
from manyheads.recipe import build_config

from .conftest import base_config, make_encoder, make_tokenizer, review_rows


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), True])
def test_lora_alpha_must_be_a_finite_number(alpha):
    with pytest.raises(ConfigError, match=r"alpha: got .*; give a finite number > 0"):
        Sharing(mode="lora", alpha=alpha)


def test_lora_with_no_task_adapter_is_refused_from_python_and_the_recipe(tiny_model_dir, data_dir, tmp_path):
    tasks = [Classification(name="a", labels=["x", "y"], adapter=False),
             Classification(name="b", labels=["x", "y"], adapter=False)]
    with pytest.raises(ConfigError, match=r"sharing 'lora' .* every task \(\['a', 'b'\]\) has adapter: false"):
        MultiTaskModel.from_encoder(make_encoder(), tasks, sharing="lora")
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = [{**t, "adapter": False} for t in raw["tasks"][:2]]
    raw["sharing"] = "lora"
    with pytest.raises(ConfigError, match=r"sharing: sharing 'lora' freezes the encoder .* only the heads would"):
        build_config(raw)


def test_adapter_must_be_true_or_false_not_a_string(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"adapter: got 'yes'; give true or false"):
        Classification(name="a", adapter="yes")
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"][0]["adapter"] = "yes"  # quoted in YAML: text, not a switch
    with pytest.raises(ConfigError, match=r"adapter.: got 'yes', expected true or false"):
        build_config(raw)


def test_a_label_that_is_an_object_is_refused_with_its_row(tokenizer, tmp_path):
    rows = [{"text": "good item", "label": {"name": "pos"}}, {"text": "bad item", "label": {"name": "neg"}}]
    model = MultiTaskModel.from_encoder(make_encoder(), [Classification(name="s")])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none")
    with pytest.raises(ValueError, match=r"data row 1, column 'label': the label is an object .*; a classification "
                                         r"label is one name or number"):
        MultiTaskTrainer(model=model, args=args, train_dataset={"s": Dataset.from_list(rows)},
                         processing_class=tokenizer)


def test_a_user_metric_named_like_a_builtin_is_not_silent(tiny_encoder, tokenizer, tmp_path, caplog):
    rows = review_rows(24, 1)
    data = {"s": Dataset.from_list([{"text": r["text"], "label": r["sentiment"]} for r in rows])}
    model = MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="s")])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", save_strategy="no")
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                               processing_class=tokenizer, compute_metrics=lambda p: {"precision": 0.125})
    with caplog.at_level(logging.WARNING, logger="manyheads.tasks.metrics"):
        metrics = trainer.evaluate()
    assert metrics["eval_s_precision"] == 0.125  # the user's value, as a ported script expects
    assert "compute_metrics returned ['precision'] for task 's', which it also reports built in" in caplog.text


def test_predict_keeps_pre_split_words_as_given(tmp_path):
    """A row of words (`tokens`) is predicted word for word: "spider-man" is one word with one tag, never three."""
    model = MultiTaskModel.from_encoder(make_encoder(), [TokenClassification(name="ner", labels=["O", "B-COL"])])
    predictor = MultiTaskPredictor(model, make_tokenizer())
    words = ["the", "spider-man", "box", "red", "e.g."]
    result = predictor.predict([{"tokens": words}])[0]["ner"]
    assert result["words"] == words and len(result["tags"]) == len(words)
    for entity in result["entities"]:
        assert entity["text"] in words
    # A string is still split as the tokenizer splits words.
    assert predictor.predict([{"text": "the spider-man box"}])[0]["ner"]["words"] == ["the", "spider", "-", "man",
                                                                                     "box"]
