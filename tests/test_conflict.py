"""Gradient conflict: cosine matrices of constructed task pairs, the callback in a run, probe batches."""

import json

import pytest
import torch

from manyheads import Classification, MultiTaskConfig, MultiTaskModel
from manyheads.callbacks import (
    CONFLICT_FILE,
    GradientConflictCallback,
    diagnostics_dir,
    make_probe_batches,
    measure_conflict,
)
from manyheads.data.collator import MultiTaskCollator
from manyheads.recipe import build_config, build_trainer, prepare_data

from .conftest import base_config, make_encoder

TEXTS = ["good great item", "bad awful thing", "the box was fine", "it is broken and poor", "nice superb box",
         "weak item", "a very good thing", "red green blue"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]


def twin_model(encoder, head_std=None):
    """Two binary classification tasks 'a' and 'b' on one encoder, with identical heads."""
    specs = [Classification(name=n, labels=["neg", "pos"], max_length=16).spec() for n in ("a", "b")]
    model = MultiTaskModel(MultiTaskConfig(encoder=encoder.config.to_dict(), tasks=specs), encoder=encoder)
    with torch.no_grad():
        if head_std is not None:
            for p in model.heads["a"].parameters():
                p.normal_(0.0, head_std)
        for p, q in zip(model.heads["a"].parameters(), model.heads["b"].parameters()):
            q.copy_(p)
    return model.train()


def batch(tokenizer, task, labels):
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return {**encoded, "labels": torch.tensor(labels), "task": task}


def test_identical_tasks_have_cosine_one(tokenizer):
    # With dropout in the model: the probes run in eval mode, so both tasks see the same network.
    model = twin_model(make_encoder(dropout=0.3))
    probes = {"a": batch(tokenizer, "a", LABELS), "b": batch(tokenizer, "b", LABELS)}
    result = measure_conflict(model, probes, step=3)
    assert result.tasks == ["a", "b"] and result.step == 3
    assert torch.allclose(torch.tensor(result.cosine), torch.ones(2, 2), atol=1e-6)
    assert result.grad_norm["a"] == pytest.approx(result.grad_norm["b"], rel=1e-6) and result.grad_norm["a"] > 0
    # Observed only: the model is back in training mode and no .grad was written.
    assert model.training and all(p.grad is None for p in model.parameters())


def test_opposite_labels_on_identical_heads_have_cosine_minus_one(tiny_encoder, tokenizer):
    # Small head weights put both classes at p = 0.5 (to ~1e-3), where the cross-entropy gradient of a label is
    # the exact negative of its opposite's: cos = -1 + O((p0 - p1)^2). One label for the whole batch, so that
    # the examples' contributions add up instead of cancelling (which would leave only the O(p0 - p1) rest).
    model = twin_model(tiny_encoder, head_std=1e-3)
    result = measure_conflict(model, {"a": batch(tokenizer, "a", [1] * len(TEXTS)),
                                      "b": batch(tokenizer, "b", [0] * len(TEXTS))})
    cosine = torch.tensor(result.cosine)
    assert cosine[0, 1] == pytest.approx(-1.0, abs=1e-5) and cosine[1, 0] == pytest.approx(-1.0, abs=1e-5)
    assert cosine[0, 0] == pytest.approx(1.0, abs=1e-6) and cosine[1, 1] == pytest.approx(1.0, abs=1e-6)
    assert result.grad_norm["a"] == pytest.approx(result.grad_norm["b"], rel=1e-2)


def test_callback_in_a_run_writes_matrices_and_scalars(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=4, logging_steps=2)
    raw["diagnostics"] = {"conflict_every": 2, "probe_batch_size": 5}
    trainer = build_trainer(build_config(raw))
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, GradientConflictCallback))
    assert {name: len(b["input_ids"]) for name, b in callback.probe_batches.items()} == {
        "sentiment": 5, "match": 5, "colors": 5, "score": 5}
    trainer.train()
    path = f"{diagnostics_dir(trainer.args.output_dir)}/{CONFLICT_FILE}"
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert record["tasks"] == ["sentiment", "match", "colors", "score"]
        cosine = torch.tensor(record["cosine"])
        assert cosine.shape == (4, 4)
        assert torch.allclose(cosine, cosine.T) and torch.allclose(cosine.diagonal(), torch.ones(4), atol=1e-5)
        assert (cosine.abs() <= 1).all() and all(v > 0 for v in record["grad_norm"].values())
    last = callback.history[-1].scalars()
    assert set(last) == {*(f"conflict/grad_norm/{t}" for t in records[0]["tasks"]),
                         "conflict/cosine/sentiment/match", "conflict/cosine/sentiment/colors",
                         "conflict/cosine/sentiment/score", "conflict/cosine/match/colors",
                         "conflict/cosine/match/score", "conflict/cosine/colors/score"}
    assert last["conflict/cosine/match/score"] == pytest.approx(records[-1]["cosine"][1][3])


def test_probe_batches_are_fixed_seeded_draws(tiny_model_dir, data_dir, tmp_path):
    run = build_config(base_config(tiny_model_dir, data_dir, tmp_path / "out"))
    prepared = prepare_data(run)
    collator = MultiTaskCollator(prepared.tokenizer, prepared.tasks)
    first = make_probe_batches(prepared.train, collator, size=6, seed=1)
    again = make_probe_batches(prepared.train, collator, size=6, seed=1)
    other = make_probe_batches(prepared.train, collator, size=6, seed=2)
    assert all(torch.equal(first[t]["input_ids"], again[t]["input_ids"]) for t in first)
    assert any(not torch.equal(first[t]["input_ids"], other[t]["input_ids"]) for t in first)
    assert first["sentiment"]["task"] == "sentiment" and first["score"]["labels"].shape == (6,)
    assert len(make_probe_batches(prepared.train, collator, size=1000)["match"]["input_ids"]) == 64
    with pytest.raises(ValueError, match="size=0"):
        make_probe_batches(prepared.train, collator, size=0)
    with pytest.raises(ValueError, match="every=0"):
        GradientConflictCallback(first, every=0)


def test_frozen_encoder_switches_conflict_off_with_a_reason(tiny_encoder, tokenizer):
    model = twin_model(tiny_encoder)
    model.freeze(encoder=True)
    with pytest.raises(ValueError, match="conflict_every: 0"):
        measure_conflict(model, {"a": batch(tokenizer, "a", LABELS)})


def test_many_tasks_send_summaries_not_every_pair_to_the_trackers():
    from manyheads.callbacks.conflict import PAIR_SCALARS_UP_TO, ConflictMeasurement

    n = 40
    tasks = [f"t{i}" for i in range(n)]
    cosine = torch.full((n, n), 0.5).fill_diagonal_(1.0)
    cosine[0, 1] = cosine[1, 0] = -0.8
    measurement = ConflictMeasurement(step=1, tasks=tasks, grad_norm=dict.fromkeys(tasks, 1.0),
                                      cosine=cosine.tolist(), loss=dict.fromkeys(tasks, 0.1))
    scalars = measurement.scalars()
    assert n > PAIR_SCALARS_UP_TO and not any(k.startswith("conflict/cosine/") for k in scalars)
    assert len(scalars) == 2 * n + 3  # norms, mean cosines, min / median / share of negative pairs
    assert scalars["conflict/cosine_min"] == pytest.approx(-0.8)
    assert scalars["conflict/mean_cosine/t0"] == pytest.approx((-0.8 + 0.5 * (n - 2)) / (n - 1))
    assert scalars["conflict/negative_pairs"] == pytest.approx(1 / (n * (n - 1) / 2))
