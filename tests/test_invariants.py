"""Invariants against the plain Trainer: one task == stock AutoModelFor... model; batch 8 == 4 x accumulation 2."""

import copy

import pytest
import torch
from transformers import BertForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

from manyheads.data.samplers import MultiTaskBatchSampler

from .run_helpers import logged_steps

ONE_TASK = {"max_steps": 8, "logging_steps": 1, "weight_decay": 0.0}


def test_one_task_weight_one_equals_plain_trainer(review_trainer, tmp_path):
    mt = review_trainer("mt", names=("sentiment",), **ONE_TASK)
    config = copy.deepcopy(mt.model.encoder.config)
    config.num_labels = 2
    stock = BertForSequenceClassification(config)
    # Same initial weights: the stock model takes the multi-task model's encoder and head.
    state = {f"bert.{k}": v for k, v in mt.model.encoder.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in mt.model.heads["sentiment"].classifier.state_dict().items()})
    missing, unexpected = stock.load_state_dict(state, strict=False)
    assert not missing and not unexpected

    # Same batches: the plain Trainer reads the rows in the order the multi-task sampler draws them (grouped by
    # length, the default, as the trainer's own sampler does).
    train = mt.train_dataset.datasets["sentiment"]
    assert mt.args.group_by_length
    sampler = MultiTaskBatchSampler({"sentiment": len(train)}, batch_size=8, seed=mt.args.seed,
                                    lengths={"sentiment": [len(ids) for ids in train["input_ids"]]})
    order = [i for _, batch in sampler.schedule(0) for i in batch]
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=8, max_steps=8,
                             learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
                             use_cpu=True, seed=7, weight_decay=0.0, train_sampling_strategy="sequential")
    plain = Trainer(model=stock, args=args, train_dataset=train.select(order).remove_columns("task"),
                    data_collator=DataCollatorWithPadding(mt.processing_class))
    plain.train()
    mt.train()

    mt_losses = [e["loss_sentiment"] for e in logged_steps(mt)]
    plain_losses = [e["loss"] for e in logged_steps(plain)]
    assert len(mt_losses) == 8
    assert mt_losses == pytest.approx(plain_losses, abs=1e-4)
    assert torch.allclose(mt.model.heads["sentiment"].classifier.weight, stock.classifier.weight, atol=1e-5)
    for name, value in mt.model.encoder.state_dict().items():
        assert torch.allclose(value, stock.bert.state_dict()[name], atol=1e-5), name


@pytest.mark.parametrize("name", ["sentiment", "colors", "score"], ids=["classification", "multilabel", "regression"])
def test_batch_8_equals_batch_4_with_accumulation_2(review_trainer, name):
    def run(folder, **args):
        trainer = review_trainer(folder, names=(name,), **ONE_TASK, **args)
        trainer.train()
        return trainer

    big = run("a")
    small = run("b", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    big_losses = [e["loss"] for e in logged_steps(big)]
    small_losses = [e["loss"] for e in logged_steps(small)]
    assert len(big_losses) == 8
    assert small_losses == pytest.approx(big_losses, abs=1e-4)
    for (key, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), key
