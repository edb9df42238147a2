"""Balancing inside MultiTaskTrainer: weightings, task-group steps, clipping, accumulation, bf16, validation."""

import pytest
import torch
from transformers import Trainer

from manyheads.balancing import build_aggregator
from manyheads.balancing.group_step import TaskGroupStep
from manyheads.errors import ConfigError
from manyheads.recipe import build_config, build_trainer, prepare_data
from manyheads.trainer import MultiTaskTrainer

from .conftest import base_config

SEQUENCE_TASKS = ("sentiment", "match", "score")


def config(tiny_model_dir, data_dir, tmp_path, balancing=None, tasks=SEQUENCE_TASKS, **training):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", **training)
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in tasks]
    if balancing is not None:
        raw["balancing"] = balancing
    return build_config(raw)


def weights_of(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class CoreTrainer(MultiTaskTrainer):
    """The core trainer's step without any balancing code: plain routed loss, Trainer's own training_step."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        return Trainer.training_step(self, model, inputs, num_items_in_batch)


def test_equal_weighting_reproduces_the_core_trainer_bitwise(tiny_model_dir, data_dir, tmp_path):
    run = config(tiny_model_dir, data_dir, tmp_path, tasks=("sentiment", "match", "colors", "score"),
                 gradient_accumulation_steps=2, max_steps=6)
    balanced = build_trainer(run)
    assert type(balanced.weighting).__name__ == "EqualWeighting"
    balanced.train()
    core = build_trainer(run, trainer_class=CoreTrainer)
    core.train()
    a, b = weights_of(balanced), weights_of(core)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("balancing", [
    {"weighting": "static", "weighting_kwargs": {"weights": {"sentiment": 2.0}}},
    {"weighting": "uncertainty"},
    {"weighting": "dwa", "weighting_kwargs": {"period": 2}},
    {"weighting": "rlw"},
    {"weighting": "gradnorm"},
])
def test_weightings_train_and_log_weights(balancing, tiny_model_dir, data_dir, tmp_path):
    trainer = build_trainer(config(tiny_model_dir, data_dir, tmp_path, balancing, max_steps=8, logging_steps=2))
    before = weights_of(trainer)
    trainer.train()
    after = weights_of(trainer)
    assert not torch.equal(before["heads.sentiment.classifier.weight"], after["heads.sentiment.classifier.weight"])
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 4
    for entry in logs:
        assert {f"weight_{t}" for t in SEQUENCE_TASKS} <= set(entry)
        # Shares of the window's micro-batches: 2 per window here, so each is 0, 0.5 or 1 and they sum to 1.
        shares = [entry[f"share_{t}"] for t in SEQUENCE_TASKS]
        assert sum(shares) == pytest.approx(1.0) and set(shares) <= {0.0, 0.5, 1.0}
    if balancing["weighting"] == "static":
        assert logs[-1]["weight_sentiment"] == 2.0 and logs[-1]["weight_match"] == 1.0
    if balancing["weighting"] == "uncertainty":
        # The log-variances are trained (their own optimizer group) and the logged weight is 0.5 exp(-s).
        s = trainer.weighting.log_vars.detach()
        assert (s != 0).all()
        assert len(trainer.optimizer.param_groups) == 3  # decay, no decay, log-variances
    if balancing["weighting"] in ("dwa", "gradnorm", "rlw"):
        assert len({round(e["weight_sentiment"], 6) for e in logs}) > 1  # the weights moved


@pytest.mark.parametrize("aggregator", ["upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "mean"])
def test_aggregators_train_with_task_group_steps(aggregator, tiny_model_dir, data_dir, tmp_path):
    trainer = build_trainer(config(tiny_model_dir, data_dir, tmp_path, {"aggregator": aggregator}, max_steps=3,
                                   logging_steps=1))
    seen = []
    original = trainer.group_step.backward

    def spy(model, groups, scale, context, adjust=None):
        seen.append(sorted(groups))
        return original(model, groups, scale, context, adjust)

    trainer.group_step.backward = spy
    before = weights_of(trainer)
    trainer.train()
    after = weights_of(trainer)
    assert seen == [sorted(SEQUENCE_TASKS)] * 3  # every step holds one batch of every task
    assert not torch.equal(before["encoder.encoder.layer.0.attention.self.query.weight"],
                           after["encoder.encoder.layer.0.attention.self.query.weight"])
    for task in SEQUENCE_TASKS:
        assert not torch.equal(before[f"heads.{task}.classifier.weight"], after[f"heads.{task}.classifier.weight"])
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    for task in SEQUENCE_TASKS:
        assert entry[f"weight_{task}"] == entry[f"weight_{task}"]  # logged and not NaN
        assert entry[f"grad_norm_{task}"] > 0 and entry[f"loss_{task}"] > 0
    assert -1.0 <= entry["grad_cos_sentiment_match"] <= 1.0
    assert entry["share_sentiment"] == pytest.approx(1 / 3, abs=1e-4)  # one sub-batch of each task per step
    if aggregator == "mean":
        assert entry["weight_sentiment"] == pytest.approx(1 / 3)


def test_mean_aggregation_equals_the_gradient_of_the_mean_loss(tiny_model_dir, data_dir, tmp_path):
    run = config(tiny_model_dir, data_dir, tmp_path, {"aggregator": "mean"})
    trainer = build_trainer(run)
    model = trainer.model
    batches = {}
    for name in SEQUENCE_TASKS:
        rows = [trainer.train_dataset.datasets[name][i] for i in range(6)]
        batches[name] = trainer.data_collator(rows)
    step = TaskGroupStep(model, build_aggregator("mean", 3))
    model.zero_grad()
    step.backward(model, batches, 1.0, torch.enable_grad)
    step.step()
    aggregated = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    losses = [model(**batches[name]).loss for name in SEQUENCE_TASKS]
    (sum(losses) / 3).backward()
    for name, p in model.named_parameters():
        if name.startswith("encoder.") and p.grad is not None:
            torch.testing.assert_close(aggregated[name], p.grad, atol=1e-6, rtol=1e-5)
    # Each head gets its own task's full gradient (3x its share of the mean loss).
    head = "heads.match.classifier.weight"
    torch.testing.assert_close(aggregated[head], 3 * dict(model.named_parameters())[head].grad, atol=1e-6, rtol=1e-5)


def test_upgrad_accumulation_equals_the_larger_batch(tiny_model_dir, data_dir, tmp_path):
    """Rows accumulate over micro-batches and are aggregated once: batch 4 x 2 == batch 8 x 1."""
    big = build_trainer(config(tiny_model_dir, data_dir, tmp_path / "a", {"aggregator": "upgrad"},
                               per_device_train_batch_size=8, max_steps=3))
    big.train()
    small = build_trainer(config(tiny_model_dir, data_dir, tmp_path / "b", {"aggregator": "upgrad"},
                                 per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3))
    small.train()
    a, b = weights_of(big), weights_of(small)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)


def test_clipping_applies_to_the_aggregated_gradient(tiny_model_dir, data_dir, tmp_path):
    # SGD with lr 1 and a tiny clip: the whole update has exactly the clip norm, which holds only if the
    # clip saw the final (aggregated) gradient.
    trainer = build_trainer(config(tiny_model_dir, data_dir, tmp_path, {"aggregator": "upgrad"}, max_steps=1,
                                   optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                                   max_grad_norm=1e-3, weight_decay=0.0))
    before = weights_of(trainer)
    trainer.train()
    after = weights_of(trainer)
    update = torch.sqrt(sum(((after[k] - before[k]).double() ** 2).sum() for k in before))
    assert update.item() == pytest.approx(1e-3, rel=1e-3)


def test_task_groups_work_under_bf16_autocast(tiny_model_dir, data_dir, tmp_path):
    trainer = build_trainer(config(tiny_model_dir, data_dir, tmp_path, {"aggregator": "upgrad"}, max_steps=2,
                                   bf16=True, logging_steps=1))
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert entry["grad_norm_sentiment"] > 0


def test_smaller_groups_follow_the_sampling_probabilities(tiny_model_dir, data_dir, tmp_path):
    from manyheads.data.samplers import TaskGroupBatchSampler

    sampler = TaskGroupBatchSampler({"a": 100, "b": 100, "c": 10}, batch_size=4, group_size=2,
                                    strategy="proportional", seed=1)
    groups = sampler.groups(0)
    assert all(len(set(g)) == 2 for g in groups)
    counts = [sum(t in g for g in groups) for t in range(3)]
    assert counts[2] < counts[0] and counts[2] < counts[1]
    # Pure function of the epoch; the streams continue across epochs without repeating a batch within a cycle.
    assert sampler.schedule(1) == TaskGroupBatchSampler({"a": 100, "b": 100, "c": 10}, batch_size=4, group_size=2,
                                                        strategy="proportional", seed=1).schedule(1)
    ranks = [TaskGroupBatchSampler({"a": 100, "b": 100}, batch_size=4, rank=r, world_size=2, seed=1) for r in (0, 1)]
    first = [next(iter(s)) for s in ranks]
    assert len(first[0]) == 8 and not set(first[0]) & set(first[1])


@pytest.mark.parametrize("balancing, extra, message", [
    ({"aggregator": "upgrad"}, {"training": {"fp16": True}}, "Use bf16: true"),
    ({"aggregator": "upgrad"}, {"freeze": {"encoder": True}}, "freeze.encoder is true"),
    ({"aggregator": "upgrad", "group_size": 9}, {}, "group_size is 9 but the run has 3 tasks"),
    ({"aggregator": "cagrad", "aggregator_kwargs": {"alpha": 1}}, {}, "Valid kwargs: c, norm_eps"),
    ({"weighting": "dwa", "weighting_kwargs": {"periods": 3}}, {}, "unexpected keyword argument 'periods'"),
    ({"weighting": "dwa", "weighting_kwargs": {"temperature": 0}}, {}, "temperature must be > 0"),
    ({"weighting": "uncertainty", "aggregator": "upgrad"}, {}, "choose one"),
    ({"weighting": "softmax"}, {}, "'weighting' is 'softmax'; valid choices: equal, static"),
    ({"aggregator": "graddrop"}, {}, "'aggregator' is 'graddrop'; valid choices: upgrad"),
])
def test_incompatible_balancing_is_rejected_at_config_time(balancing, extra, message, tiny_model_dir, data_dir,
                                                            tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = raw["tasks"][:3]
    raw["balancing"] = balancing
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value} if key == "training" else value
    with pytest.raises(ConfigError, match=message):
        build_config(raw)


def test_aggregator_needs_several_tasks(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"] = raw["tasks"][:1]
    raw["balancing"] = {"aggregator": "mgda"}
    with pytest.raises(ConfigError, match="this run has 1. Remove 'aggregator' or add tasks"):
        build_config(raw)


def test_task_weight_needs_static_weighting(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["tasks"][0]["weight"] = 3.0
    run = build_config(raw)  # no weighting named: static with the task weights
    trainer = build_trainer(run, prepare_data(run))
    assert trainer.weighting.weights()["sentiment"] == 3.0
    raw["balancing"] = {"weighting": "dwa"}
    with pytest.raises(ConfigError, match=r"\['sentiment'\] set 'weight', which only 'weighting: static' uses"):
        build_config(raw)
