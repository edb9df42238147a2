"""MultiTaskTrainer end to end on a tiny BERT: every task type, logging, evaluation, freezing, best model."""

import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from manyheads import Classification, MultiTaskTrainer
from manyheads.balancing.static import StaticWeighting

from .run_helpers import REVIEW_TASKS, logged_steps, review_data, snapshot


def test_all_task_types_train_log_and_evaluate(review_trainer):
    trainer = review_trainer(eval_=review_data(24, 2), max_steps=16)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    for name in ("encoder.embeddings.word_embeddings.weight", "encoder.encoder.layer.0.attention.self.query.weight",
                 "heads.sentiment.classifier.weight", "heads.match.classifier.weight",
                 "heads.colors.classifier.weight", "heads.score.classifier.weight"):
        assert not torch.equal(before[name], after[name]), name
    logged = logged_steps(trainer)
    assert len(logged) == 4
    seen = {k for entry in logged for k in entry if k.startswith("loss_")}
    assert seen == {"loss_sentiment", "loss_match", "loss_colors", "loss_score"}
    assert all(np.isfinite(v) for entry in logged for k, v in entry.items() if k.startswith("loss_"))

    metrics = trainer.evaluate()
    for key in ("eval_sentiment_accuracy", "eval_sentiment_f1", "eval_sentiment_mcc", "eval_match_accuracy",
                "eval_colors_micro_f1", "eval_colors_macro_f1", "eval_colors_exact_match",
                "eval_score_pearson", "eval_score_spearman", "eval_score_mse", "eval_score_loss", "eval_loss"):
        assert key in metrics, key
    main = [metrics["eval_sentiment_accuracy"], metrics["eval_match_accuracy"], metrics["eval_colors_micro_f1"],
            metrics["eval_score_pearson"]]
    assert metrics["eval_average"] == pytest.approx(np.mean(main))
    assert 0.0 <= metrics["eval_sentiment_accuracy"] <= 1.0


def test_per_task_losses_are_unweighted_means_and_weights_scale_the_step(review_trainer):
    weighting = StaticWeighting(list(REVIEW_TASKS), {name: 0.0 for name in REVIEW_TASKS})
    trainer = review_trainer(trainer_kwargs={"weighting": weighting}, max_steps=1, logging_steps=1)
    assert trainer.weighting is weighting
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    # With every loss weight 0 no parameter moves (AdamW with weight_decay 0 and zero grads).
    assert all(torch.equal(before[k], after[k]) for k in before)
    entry = logged_steps(trainer)[0]
    task_losses = [v for k, v in entry.items() if k.startswith("loss_")]
    assert entry["loss"] == 0.0 and len(task_losses) == 1 and task_losses[0] > 0


def test_freeze_first_layers_and_embeddings(review_trainer):
    trainer = review_trainer(freeze={"embeddings": True, "layers": 1})
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    frozen = [k for k in before if k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0."))]
    moving = [k for k in before if k.startswith("encoder.encoder.layer.1.")]
    assert frozen and moving
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in moving if k.endswith("weight"))


def test_freeze_whole_encoder_trains_heads_only(review_trainer):
    trainer = review_trainer(freeze={"encoder": True})
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["heads.sentiment.classifier.weight"], after["heads.sentiment.classifier.weight"])


def test_best_model_selected_by_eval_average(review_trainer):
    trainer = review_trainer(eval_=review_data(24, 2), max_steps=24, eval_strategy="steps", eval_steps=6,
                           save_strategy="steps", save_steps=6, load_best_model_at_end=True,
                           metric_for_best_model="eval_average", learning_rate=3e-3)
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_average" in e]
    assert len(evals) == 4
    best = max(evals, key=lambda e: e["eval_average"])
    assert trainer.state.best_metric == pytest.approx(best["eval_average"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    # The model in memory is the best checkpoint's: evaluating again reproduces its score.
    assert trainer.evaluate()["eval_average"] == pytest.approx(best["eval_average"], abs=1e-6)


def test_unknown_best_metric_rejected_before_training(review_trainer):
    with pytest.raises(ValueError, match="metric_for_best_model='eval_sentiment_acc' names no metric"):
        review_trainer(metric_for_best_model="eval_sentiment_acc")


def test_auto_class_weights_and_pos_weight_are_fitted_on_the_training_split(review_trainer):
    train = review_data(64, 1)
    trainer = review_trainer(task_options={"sentiment": {"class_weights": "auto"}, "colors": {"pos_weight": "auto"}},
                             train=train)
    rows = train["sentiment"]
    counts = [rows["sentiment"].count(label) for label in ("neg", "pos")]
    expected = [len(rows) / (2 * c) for c in counts]
    assert trainer.tasks["sentiment"].fitted["class_weights"] == pytest.approx(expected)
    positives = [sum(c in row for row in rows["colors"]) for c in ("red", "green", "blue", "yellow")]
    assert trainer.tasks["colors"].fitted["pos_weight"] == pytest.approx([(64 - p) / p for p in positives])


def test_a_training_split_with_one_class_is_warned_about(review_trainer, caplog):
    train = {"s": Dataset.from_dict({"text": ["good", "great"], "label": ["pos", "pos"]})}
    with caplog.at_level(logging.WARNING, logger="manyheads"):
        review_trainer(tasks=[Classification(name="s")], train=train)
    assert "task 's': every training row has the label 'pos'" in caplog.text


def test_train_dataloader_follows_sampling_and_pads_dynamically(review_trainer):
    trainer = review_trainer(sampling_strategy="round_robin")
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 4 * 8  # 64 rows per task, batch 8, one proportional pass
    assert [b["task"] for b in batches[:8]] == ["sentiment", "match", "colors", "score"] * 2
    for batch in batches:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) < 32  # longest in batch, not max_length
        assert batch["labels"].shape[0] == 8
    pair = next(b for b in batches if b["task"] == "match")
    assert int(pair["token_type_ids"].max()) == 1  # the pair task's second text gets segment id 1


def test_group_by_length_reduces_padding(review_trainer):
    def padded_share(trainer):
        batches = list(trainer.get_train_dataloader())
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        return 1 - real / sum(b["attention_mask"].numel() for b in batches)

    plain = review_trainer("a", group_by_length=False)
    grouped = review_trainer("b")  # the default
    assert grouped.args.group_by_length and not plain.args.group_by_length
    assert padded_share(grouped) < padded_share(plain)


def test_trainer_rejects_a_model_without_tasks(tiny_encoder, tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(ValueError, match="MultiTaskTrainer needs a MultiTaskModel .with .tasks., got BertModel"):
        MultiTaskTrainer(model=tiny_encoder, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
