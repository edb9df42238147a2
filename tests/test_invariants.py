"""Invariants against the plain Trainer: one task == stock AutoModelFor... model; batch 8 == 4 x accumulation 2."""

import pytest
import torch
from transformers import BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

from manyheads.data.samplers import MultiTaskBatchSampler
from manyheads.recipe import build_config, build_trainer, prepare_data

from .conftest import base_config


def one_task_run(tiny_model_dir, data_dir, tmp_path, index=0, **training):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "mt", max_steps=8, logging_steps=1,
                      weight_decay=0.0, **training)
    raw["tasks"] = [raw["tasks"][index]]
    return build_config(raw)


def test_one_task_weight_one_equals_plain_trainer(tiny_model_dir, data_dir, tmp_path):
    run = one_task_run(tiny_model_dir, data_dir, tmp_path)
    prepared = prepare_data(run)
    mt = build_trainer(run, prepared)
    stock = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    # Same initial weights: the stock model takes the multi-task model's encoder and head.
    state = {f"bert.{k}": v for k, v in mt.model.encoder.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in mt.model.heads["sentiment"].classifier.state_dict().items()})
    missing, unexpected = stock.load_state_dict(state, strict=False)
    assert not missing and not unexpected

    # Same batches: the plain Trainer reads the rows in the order the multi-task sampler draws them (grouped by
    # length, the default, as the trainer's own sampler does).
    train = prepared.train["sentiment"]
    assert mt.args.group_by_length
    sampler = MultiTaskBatchSampler({"sentiment": len(train)}, batch_size=8, seed=run.training["seed"],
                                    lengths={"sentiment": [len(ids) for ids in train["input_ids"]]})
    order = [i for _, batch in sampler.schedule(0) for i in batch]
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=8, max_steps=8,
                             learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
                             use_cpu=True, seed=7, weight_decay=0.0, train_sampling_strategy="sequential")
    plain = Trainer(model=stock, args=args, train_dataset=train.select(order).remove_columns("task"),
                    data_collator=DataCollatorWithPadding(prepared.tokenizer))
    plain.train()
    mt.train()

    mt_losses = [e["loss_sentiment"] for e in mt.state.log_history if "loss" in e]
    plain_losses = [e["loss"] for e in plain.state.log_history if "loss" in e]
    assert len(mt_losses) == 8
    assert mt_losses == pytest.approx(plain_losses, abs=1e-4)
    assert torch.allclose(mt.model.heads["sentiment"].classifier.weight, stock.classifier.weight, atol=1e-5)
    for name, value in mt.model.encoder.state_dict().items():
        assert torch.allclose(value, stock.bert.state_dict()[name], atol=1e-5), name


@pytest.mark.parametrize("index", [0, 2, 3], ids=["classification", "multilabel", "regression"])
def test_batch_8_equals_batch_4_with_accumulation_2(tiny_model_dir, data_dir, tmp_path, index):
    big = build_trainer(one_task_run(tiny_model_dir, data_dir, tmp_path / "a", index))
    small = build_trainer(one_task_run(tiny_model_dir, data_dir, tmp_path / "b", index,
                                       per_device_train_batch_size=4, gradient_accumulation_steps=2))
    big.train()
    small.train()
    big_losses = [e["loss"] for e in big.state.log_history if "loss" in e]
    small_losses = [e["loss"] for e in small.state.log_history if "loss" in e]
    assert len(big_losses) == 8
    assert small_losses == pytest.approx(big_losses, abs=1e-4)
    for (name, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
