"""A head that scores below the best constant answer on the same eval labels is warned about once, by name
(issue 29 item 2 c). The multilabel task says what that constant scores; `StalledHeadsCallback` compares."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

from manyheads import Classification, MultiLabel, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments
from manyheads.callbacks import STALLED_FILE, StalledHeadsCallback
from manyheads.callbacks.stalled_heads import ConstantBaseline

from .conftest import COLORS, FILLER


def gold(rows: int = 60) -> np.ndarray:
    """Labels a, b, c on 50, 10 and 5 of 60 rows."""
    labels = np.zeros((rows, 3), dtype=int)
    labels[:50, 0] = 1
    labels[50:, 1] = 1
    labels[:5, 2] = 1
    return labels


def test_multilabel_constant_baseline_is_the_best_constant_label_set():
    task = MultiLabel(name="tags", labels=["a", "b", "c"])
    assert isinstance(task, ConstantBaseline)
    labels = gold()
    # Always {a}: 2 * 50 / (60 predicted + 65 actual) = 0.8; {a, b} 120 / 185, {a, b, c} 130 / 245, {} 0.
    score, answer = task.constant_baseline(labels)
    assert score == pytest.approx(0.8) and answer == "always the label set ['a']"
    # Exact match: the most frequent row label set, {a} (45 rows of 60).
    exact = MultiLabel(name="tags", labels=["a", "b", "c"], main_metric="exact_match").constant_baseline(labels)
    assert exact == (pytest.approx(0.75), "always the label set ['a']")
    # Macro-F1: every label on every row.
    macro = MultiLabel(name="tags", labels=["a", "b", "c"], main_metric="macro_f1").constant_baseline(labels)
    assert macro[1] == "always the label set ['a', 'b', 'c']"
    assert macro[0] == pytest.approx(np.mean([2 * n / (60 + n) for n in (50, 10, 5)]))


def evaluation(callback, tmp_path, value: float, step: int) -> None:
    """One evaluation of a model with the multilabel task `tags` whose eval micro-F1 is `value`."""
    task = MultiLabel(name="tags", labels=["a", "b", "c"])
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=step, is_world_process_zero=True)
    loader = SimpleNamespace(dataset=Dataset.from_dict({"labels": gold().astype(float).tolist(),
                                                        "task": ["tags"] * 60}))
    callback.on_prediction_step(args, state, None, eval_dataloader=loader)
    callback.on_evaluate(args, state, None, model=SimpleNamespace(tasks={"tags": task}),
                         metrics={"eval_tags_micro_f1": value, "eval_tags_constant_predictions": 0.0})


def test_a_head_below_the_constant_answer_is_warned_about_once(tmp_path):
    callback = StalledHeadsCallback(output_dir=str(tmp_path))
    evaluation(callback, tmp_path, 0.5, step=10)
    evaluation(callback, tmp_path, 0.6, step=20)
    (message,) = callback.warnings
    assert "task 'tags' scores below a constant answer at step 10" in message
    assert "micro_f1 is 0.5, below the 0.8 that a constant answer scores" in message
    assert "always the label set ['a']" in message and "Likely fixes:" in message
    # Recorded at each evaluation where it holds, for `manyheads report`; not once it no longer does.
    evaluation(callback, tmp_path, 0.85, step=30)
    records = [json.loads(line) for line in (tmp_path / STALLED_FILE).read_text().splitlines()]
    assert [(r["task"], r["step"]) for r in records] == [("tags", 10), ("tags", 20)]
    assert len(callback.warnings) == 1


def test_the_trainer_warns_when_a_multilabel_head_is_below_the_constant(tiny_encoder, tokenizer, tmp_path):
    """Every eval row is labelled `red` alone, so always answering {red} scores micro-F1 1; the untrained head
    at a flat 0.5, set to answer each label on about half of the rows, scores less."""
    rng = random.Random(0)
    texts = [" ".join(rng.sample(COLORS + FILLER, 5)) for _ in range(48)]
    train = Dataset.from_dict({"text": texts, "colors": [[c for c in COLORS if c in t] for t in texts],
                               "sentiment": [rng.choice(["pos", "neg"]) for _ in texts]})
    evaluation_rows = Dataset.from_dict({"text": texts[:32], "colors": [["red"]] * 32,
                                         "sentiment": [rng.choice(["pos", "neg"]) for _ in range(32)]})
    torch.manual_seed(0)
    tasks = [MultiLabel(name="colors", label="colors", labels=COLORS, threshold=0.5, pooling="mean"),
             Classification(name="sentiment", label="sentiment")]
    model = MultiTaskModel.from_encoder(tiny_encoder, tasks)
    # Row-dependent answers: each label's logit centred on its median over the eval rows, so each label is
    # answered on about half of them (an untrained head as built gives every row the same set).
    with torch.no_grad():
        model.heads["colors"].classifier.weight.normal_(0.0, 5.0)
        logits = model.eval().forward_all(**tokenizer(texts[:32], padding=True, return_tensors="pt"),
                                          tasks=["colors"])["colors"]
        model.heads["colors"].classifier.bias -= logits.median(0).values
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                                      disable_tqdm=True, per_device_eval_batch_size=8)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset={"colors": train, "sentiment": train},
                               eval_dataset={"colors": evaluation_rows, "sentiment": evaluation_rows},
                               processing_class=tokenizer)
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StalledHeadsCallback))
    for _ in range(2):
        metrics = trainer.evaluate()
    assert metrics["eval_colors_constant_predictions"] == 0.0 and metrics["eval_colors_micro_f1"] < 1.0
    flagged = [m for m in callback.warnings if "'colors'" in m]
    assert len(flagged) == 1, callback.warnings
    assert "scores below a constant answer" in flagged[0] and "always the label set ['red']" in flagged[0]
    assert not [m for m in callback.warnings if "'sentiment'" in m and "below a constant" in m]


def test_classification_constant_baseline_is_the_majority_label():
    task = Classification(name="s", labels=["neg", "pos", "mid"])
    assert isinstance(task, ConstantBaseline)
    labels = np.array([1] * 7 + [0] * 2 + [2])
    assert task.constant_baseline(labels) == (pytest.approx(0.7), "always 'pos'")
    # Macro-F1 of a constant: only the majority class scores, 2 * 0.7 / 1.7 over 3 classes.
    macro = Classification(name="s", labels=["neg", "pos", "mid"], main_metric="f1").constant_baseline(labels)
    assert macro[0] == pytest.approx((2 * 0.7 / 1.7) / 3)
