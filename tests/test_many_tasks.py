"""Many tasks (issue 27): per-task training caps, temperature sampling over 50 tasks, exact resume with 50 tasks."""

import copy
import itertools
import math
from collections import Counter

import pytest
from datasets import Dataset

from manyheads import Classification, MultiLabel, MultiTaskTrainingArguments, Regression
from manyheads.data.samplers import task_probabilities

from .conftest import COLORS, FILLER, GOOD, make_encoder
from .run_helpers import RecordingTrainer, assert_same_model_state, new_trainer, review_data

# Distinct texts, so that a tokenized row tells which raw row it came from.
TEXTS = [" ".join(words) for words in itertools.product(GOOD, FILLER, COLORS)]


def numbered(n: int) -> Dataset:
    """`n` rows with distinct texts (in order) and a sentiment label each."""
    return Dataset.from_dict({"text": TEXTS[:n], "sentiment": ["pos" if i % 3 else "neg" for i in range(n)]})


def many_tasks(count: int) -> list:
    """`count` tasks over the review columns, cycling classification, pair classification, multilabel, regression."""
    make = [
        lambda name: Classification(name=name, label="sentiment", max_length=32),
        lambda name: Classification(name=name, text=["text", "other"], label="match", max_length=32),
        lambda name: MultiLabel(name=name, label="colors", labels=list(COLORS), max_length=32),
        lambda name: Regression(name=name, label="score", max_length=32),
    ]
    return [make[i % 4](f"t{i:02d}") for i in range(count)]


def decoded(trainer, task: str) -> list[str]:
    dataset = trainer.train_dataset.datasets[task]
    return [trainer.processing_class.decode(ids, skip_special_tokens=True) for ids in dataset["input_ids"]]


def test_cap_keeps_a_seeded_subset_of_each_large_task_in_order(new_encoder, tokenizer, tmp_path):
    sizes = {"big": 40, "small": 6, "exact": 10}
    tasks = [Classification(name=name, label="sentiment", max_length=32) for name in sizes]

    def build(folder, **args):
        return new_trainer(new_encoder(), tokenizer, tmp_path / folder, tasks=copy.deepcopy(tasks),
                           train={name: numbered(n) for name, n in sizes.items()}, **args)

    capped = build("a", max_train_samples_per_task=10)
    assert capped.train_dataset.sizes == {"big": 10, "small": 6, "exact": 10}
    rows = decoded(capped, "big")
    assert len(set(rows)) == 10 and set(rows) <= set(TEXTS[:40])
    assert rows == sorted(rows, key=TEXTS.index)  # the dataset's order is kept
    assert rows != TEXTS[:10]  # a random subset, not the first rows
    assert decoded(capped, "small") == TEXTS[:6] and decoded(capped, "exact") == TEXTS[:10]  # short tasks untouched
    # The same rows in every run with this seed, other rows with another data_seed.
    assert decoded(build("b", max_train_samples_per_task=10), "big") == rows
    assert decoded(build("c", max_train_samples_per_task=10, data_seed=99), "big") != rows
    assert build("d").train_dataset.sizes == sizes  # no cap: every row


@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_cap_must_be_a_positive_whole_number(value, tmp_path):
    with pytest.raises(ValueError, match=r"'max_train_samples_per_task' is .*; give a whole number of rows >= 1"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), max_train_samples_per_task=value)


def test_temperature_schedule_over_50_tasks_has_the_target_shares(new_encoder, tokenizer, tmp_path):
    sizes = [4 * (1 + (7 * i) % 25) for i in range(50)]  # 4 to 100 rows
    tasks = [Classification(name=f"t{i:02d}", label="sentiment", max_length=32) for i in range(50)]
    trainer = new_trainer(new_encoder(), tokenizer, tmp_path, tasks=tasks,
                          train={t.name: numbered(n) for t, n in zip(tasks, sizes)},
                          sampling_strategy="temperature", sampling_temperature=2.0, per_device_train_batch_size=4,
                          group_by_length=False)
    loader = trainer.get_train_dataloader()
    served = Counter(batch["task"] for batch in loader)
    steps = sum(math.ceil(n / 4) for n in sizes)  # an epoch: as many steps as one proportional pass
    assert sum(served.values()) == len(loader) == steps
    # Exact shares: size**(1/T) normalised, rounded to whole batches (largest remainder) over the epoch.
    target = [s ** 0.5 / sum(x ** 0.5 for x in sizes) for s in sizes]
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx(target)
    for task, share in zip(tasks, target):
        assert abs(served[task.name] - share * steps) < 1, task.name
    # 4 rows: 1 batch in a proportional pass, 3.80 by temperature -> 4; 100 rows: 25 batches, 18.98 -> 19.
    assert served["t00"] == 4 and served["t07"] == 19
    # A pure function of (seed, epoch): the same epoch again is the same schedule, the next epoch another order.
    sampler = trainer._batch_sampler()
    assert sampler.schedule(0) == sampler.schedule(0)
    assert [t for t, _ in sampler.schedule(1)] != [t for t, _ in sampler.schedule(0)]


def test_resume_with_50_tasks_is_exact(tokenizer, tmp_path):
    """Temperature sampling over 50 tasks of four types, capped rows, dropout on: a run resumed from its midway
    checkpoint trains on the same batches to bitwise the same weights and per-task losses."""
    encoder = make_encoder(dropout=0.1)
    args = {"max_steps": 10, "save_steps": 5, "logging_steps": 1, "save_strategy": "steps",
            "sampling_strategy": "temperature", "max_train_samples_per_task": 12, "per_device_train_batch_size": 4}

    def train(folder, resume=None):
        trainer = new_trainer(copy.deepcopy(encoder), tokenizer, tmp_path / folder, tasks=many_tasks(50),
                              train=review_data(24, 1, tuple(f"t{i:02d}" for i in range(50))),
                              trainer_class=RecordingTrainer, **args)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = train("full")
    resumed = train("resumed", resume=str(tmp_path / "full" / "checkpoint-5"))
    assert resumed.state.global_step == full.state.global_step == 10
    assert len({task for task, _ in full.seen}) > 5  # many tasks took part
    assert resumed.seen == full.seen[5:]
    assert_same_model_state(full.model, resumed.model)

    def task_losses(trainer):
        return [{k: v for k, v in e.items() if k.startswith("loss_")} for e in trainer.state.log_history
                if "loss" in e and e["step"] > 5]
    assert task_losses(resumed) == task_losses(full)


def test_tokenized_splits_are_fingerprinted_by_task_tokenizer_and_rows_with_the_tokenizer_hashed_once(tokenizer,
                                                                                                        monkeypatch):
    import manyheads.tasks.fingerprint as fingerprint

    hashed = []
    real = fingerprint.Hasher.hash
    monkeypatch.setattr(fingerprint.Hasher, "hash", staticmethod(lambda value: hashed.append(value) or real(value)))
    rows = numbered(12)
    tasks = [Classification(name=f"t{i}", label="sentiment", labels=["neg", "pos"], max_length=32) for i in range(3)]
    prints = [task.preprocess(rows, tokenizer)._fingerprint for task in tasks]
    assert sum(value is tokenizer for value in hashed) == 1  # once for three tasks, not once per task
    assert len(set(prints)) == 3  # the task's name is part of its rows (the task column)
    again = copy.deepcopy(tasks[0])
    assert again.preprocess(rows, tokenizer)._fingerprint == prints[0]
    relabelled = Classification(name="t0", label="sentiment", labels=["pos", "neg"], max_length=32)
    assert relabelled.preprocess(rows, tokenizer)._fingerprint != prints[0]
    assert tasks[0].preprocess(numbered(11), tokenizer)._fingerprint != prints[0]
    tokenizer.add_tokens(["zzzword"])
    assert tasks[0].preprocess(rows, tokenizer)._fingerprint != prints[0]
