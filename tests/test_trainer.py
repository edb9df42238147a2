"""MultiTaskTrainer end to end on a tiny BERT: every task type, logging, evaluation, freezing, best model."""

import numpy as np
import pytest
import torch

from manyheads.balancing.static import StaticWeighting
from manyheads.recipe import build_config, build_trainer, prepare_data
from manyheads.trainer import MultiTaskTrainer

from .conftest import base_config


def make_trainer(tiny_model_dir, data_dir, tmp_path, **overrides):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    for key in ("sampling", "freeze"):
        if key in overrides:
            raw[key] = overrides.pop(key)
    raw["training"].update(overrides)
    return build_trainer(build_config(raw))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_all_task_types_train_log_and_evaluate(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, max_steps=16)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    for name in ("encoder.embeddings.word_embeddings.weight", "encoder.encoder.layer.0.attention.self.query.weight",
                 "heads.sentiment.classifier.weight", "heads.match.classifier.weight",
                 "heads.colors.classifier.weight", "heads.score.classifier.weight"):
        assert not torch.equal(before[name], after[name]), name
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
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


def test_per_task_losses_are_unweighted_means_and_weights_scale_the_step(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, max_steps=1, logging_steps=1)
    trainer.weighting = StaticWeighting(list(trainer.tasks), {name: 0.0 for name in trainer.tasks})
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    # With every loss weight 0 no parameter moves (AdamW with weight_decay 0 and zero grads).
    assert all(torch.equal(before[k], after[k]) for k in before)
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    task_losses = [v for k, v in entry.items() if k.startswith("loss_")]
    assert entry["loss"] == 0.0 and len(task_losses) == 1 and task_losses[0] > 0


def test_freeze_first_layers_and_embeddings(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, freeze={"embeddings": True, "layers": 1})
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    frozen = [k for k in before if k.startswith(("encoder.embeddings.", "encoder.encoder.layer.0."))]
    moving = [k for k in before if k.startswith("encoder.encoder.layer.1.")]
    assert frozen and moving
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in moving if k.endswith("weight"))


def test_freeze_whole_encoder_trains_heads_only(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, freeze={"encoder": True})
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["heads.sentiment.classifier.weight"], after["heads.sentiment.classifier.weight"])


def test_best_model_selected_by_eval_average(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, max_steps=24, eval_strategy="steps", eval_steps=6,
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


def test_unknown_best_metric_rejected_before_training(tiny_model_dir, data_dir, tmp_path):
    run = build_config(base_config(tiny_model_dir, data_dir, tmp_path / "out"))
    prepared = prepare_data(run)
    trainer = build_trainer(run, prepared)
    args = run.training_arguments(metric_for_best_model="eval_sentiment_acc")
    with pytest.raises(ValueError, match="metric_for_best_model='eval_sentiment_acc' names no metric"):
        MultiTaskTrainer(model=trainer.model, args=args, train_dataset=prepared.train,
                         processing_class=prepared.tokenizer)


def test_auto_class_weights_and_pos_weight(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"][0]["class_weights"] = "auto"
    raw["tasks"][2]["pos_weight"] = "auto"
    prepared = prepare_data(build_config(raw), tokenize=False)
    train = prepared.raw["sentiment"].splits["train"]
    counts = [train["sentiment"].count(label) for label in ("neg", "pos")]
    expected = [len(train) / (2 * c) for c in counts]
    assert prepared.tasks["sentiment"].fitted["class_weights"] == pytest.approx(expected)
    colors = prepared.raw["colors"].splits["train"]["colors"]
    positives = [sum(c in row for row in colors) for c in ("red", "green", "blue", "yellow")]
    assert prepared.tasks["colors"].fitted["pos_weight"] == pytest.approx([(64 - p) / p for p in positives])


def test_train_dataloader_follows_sampling_and_pads_dynamically(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, data_dir, tmp_path, sampling={"strategy": "round_robin"})
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 4 * 8  # 64 rows per task, batch 8, one proportional pass
    assert [b["task"] for b in batches[:8]] == ["sentiment", "match", "colors", "score"] * 2
    for batch in batches:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) < 32  # longest in batch, not max_length
        assert batch["labels"].shape[0] == 8
    pair = next(b for b in batches if b["task"] == "match")
    assert int(pair["token_type_ids"].max()) == 1  # the pair task's second text gets segment id 1


def test_group_by_length_reduces_padding(tiny_model_dir, data_dir, tmp_path):
    def padded_share(trainer):
        batches = list(trainer.get_train_dataloader())
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        return 1 - real / sum(b["attention_mask"].numel() for b in batches)

    plain = make_trainer(tiny_model_dir, data_dir, tmp_path / "a", sampling={"group_by_length": False})
    grouped = make_trainer(tiny_model_dir, data_dir, tmp_path / "b")  # the default
    assert grouped.args.group_by_length and not plain.args.group_by_length
    assert padded_share(grouped) < padded_share(plain)


def test_trainer_rejects_a_model_without_tasks(tiny_encoder, tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(ValueError, match="MultiTaskTrainer needs a MultiTaskModel .with .tasks., got BertModel"):
        MultiTaskTrainer(model=tiny_encoder, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
