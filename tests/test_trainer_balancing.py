"""Balancing inside MultiTaskTrainer: weightings, task-group steps, clipping, accumulation, bf16, validation."""

import functools

import pytest
import torch
from transformers import Trainer

from manyheads import MultiTaskTrainer
from manyheads.balancing import build_aggregator
from manyheads.balancing.group_step import TaskGroupStep
from manyheads.errors import ConfigError
from manyheads.recipe import build_config

from .conftest import base_config
from .run_helpers import REVIEW_TASKS, logged_steps, review_data, snapshot, training_args

SEQUENCE_TASKS = ("sentiment", "match", "score")


@pytest.fixture
def make_trainer(review_trainer):
    """The conftest trainer builder, of the three sequence tasks unless `names` says otherwise."""
    return functools.partial(review_trainer, names=SEQUENCE_TASKS)


class CoreTrainer(MultiTaskTrainer):
    """The core trainer's step without any balancing code: plain routed loss, Trainer's own training_step."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        return Trainer.training_step(self, model, inputs, num_items_in_batch)


def test_equal_weighting_reproduces_the_core_trainer_bitwise(make_trainer):
    settings = {"names": REVIEW_TASKS, "gradient_accumulation_steps": 2, "max_steps": 6}
    balanced = make_trainer("a", **settings)
    assert type(balanced.weighting).__name__ == "EqualWeighting"
    balanced.train()
    core = make_trainer("b", trainer_class=CoreTrainer, **settings)
    core.train()
    a, b = snapshot(balanced.model), snapshot(core.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("balancing", [
    {"loss_weighting": "static", "loss_weighting_kwargs": {"weights": {"sentiment": 2.0}}},
    {"loss_weighting": "uncertainty"},
    {"loss_weighting": "dwa", "loss_weighting_kwargs": {"period": 2}},
    {"loss_weighting": "rlw"},
    {"loss_weighting": "gradnorm"},
], ids=lambda b: b["loss_weighting"])
def test_weightings_train_and_log_weights(balancing, make_trainer):
    trainer = make_trainer(max_steps=8, logging_steps=2, **balancing)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert not torch.equal(before["heads.sentiment.classifier.weight"], after["heads.sentiment.classifier.weight"])
    logs = logged_steps(trainer)
    assert len(logs) == 4
    for entry in logs:
        assert {f"weight_{t}" for t in SEQUENCE_TASKS} <= set(entry)
        # Shares of the window's micro-batches: 2 per window here, so each is 0, 0.5 or 1 and they sum to 1.
        shares = [entry[f"share_{t}"] for t in SEQUENCE_TASKS]
        assert sum(shares) == pytest.approx(1.0) and set(shares) <= {0.0, 0.5, 1.0}
    name = balancing["loss_weighting"]
    if name == "static":
        assert logs[-1]["weight_sentiment"] == 2.0 and logs[-1]["weight_match"] == 1.0
    if name == "uncertainty":
        # The log-variances are trained (their own optimizer group) and the logged weight is 0.5 exp(-s).
        s = trainer.weighting.log_vars.detach()
        assert (s != 0).all()
        own = [g for g in trainer.optimizer.param_groups if any(p is trainer.weighting.log_vars for p in g["params"])]
        assert len(own) == 1 and len(own[0]["params"]) == 1 and own[0]["weight_decay"] == 0.0  # a group of their own
    if name in ("dwa", "gradnorm", "rlw"):
        assert len({round(e["weight_sentiment"], 6) for e in logs}) > 1  # the weights moved


@pytest.mark.parametrize("aggregator", ["upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "mean"])
def test_aggregators_train_with_task_group_steps(aggregator, make_trainer):
    trainer = make_trainer(gradient_aggregator=aggregator, max_steps=3, logging_steps=1)
    seen = []
    original = trainer.group_step.backward

    def spy(model, groups, scale, context, adjust=None):
        seen.append(sorted(groups))
        return original(model, groups, scale, context, adjust)

    trainer.group_step.backward = spy
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert seen == [sorted(SEQUENCE_TASKS)] * 3  # every step holds one batch of every task
    assert not torch.equal(before["encoder.encoder.layer.0.attention.self.query.weight"],
                           after["encoder.encoder.layer.0.attention.self.query.weight"])
    for task in SEQUENCE_TASKS:
        assert not torch.equal(before[f"heads.{task}.classifier.weight"], after[f"heads.{task}.classifier.weight"])
    entry = logged_steps(trainer)[0]
    for task in SEQUENCE_TASKS:
        assert entry[f"weight_{task}"] == entry[f"weight_{task}"]  # logged and not NaN
        assert entry[f"grad_norm_{task}"] > 0 and entry[f"loss_{task}"] > 0
    assert -1.0 <= entry["grad_cos_sentiment_match"] <= 1.0
    assert entry["share_sentiment"] == pytest.approx(1 / 3, abs=1e-4)  # one sub-batch of each task per step
    if aggregator == "mean":
        assert entry["weight_sentiment"] == pytest.approx(1 / 3)


def test_mean_aggregation_equals_the_gradient_of_the_mean_loss(make_trainer):
    trainer = make_trainer(gradient_aggregator="mean")
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


def test_upgrad_accumulation_equals_the_larger_batch(make_trainer):
    """Rows accumulate over micro-batches and are aggregated once: batch 4 x 2 == batch 8 x 1."""
    big = make_trainer("a", gradient_aggregator="upgrad", per_device_train_batch_size=8, max_steps=3)
    big.train()
    small = make_trainer("b", gradient_aggregator="upgrad", per_device_train_batch_size=4,
                         gradient_accumulation_steps=2, max_steps=3)
    small.train()
    a, b = snapshot(big.model), snapshot(small.model)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4)


def test_clipping_applies_to_the_aggregated_gradient(make_trainer):
    # SGD with lr 1 and a tiny clip: the whole update has exactly the clip norm, which holds only if the
    # clip saw the final (aggregated) gradient.
    trainer = make_trainer(gradient_aggregator="upgrad", max_steps=1, optim="sgd", learning_rate=1.0,
                           lr_scheduler_type="constant", max_grad_norm=1e-3, weight_decay=0.0)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    update = torch.sqrt(sum(((after[k] - before[k]).double() ** 2).sum() for k in before))
    assert update.item() == pytest.approx(1e-3, rel=1e-3)


def test_task_groups_work_under_bf16_autocast(make_trainer):
    trainer = make_trainer(gradient_aggregator="upgrad", max_steps=2, bf16=True, logging_steps=1)
    trainer.train()
    entry = logged_steps(trainer)[0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert entry["grad_norm_sentiment"] > 0


def test_smaller_groups_follow_the_sampling_probabilities():
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


@pytest.mark.parametrize("arguments, message", [
    ({"gradient_aggregator": "upgrad", "loss_weighting": "uncertainty"}, "choose one"),
    ({"loss_weighting": "softmax"}, "'loss_weighting' is 'softmax'; valid choices: equal, static"),
    ({"gradient_aggregator": "graddrop"}, "'gradient_aggregator' is 'graddrop'; valid choices: upgrad"),
    ({"task_group_size": 2}, "'task_group_size' applies to task-group steps; set 'gradient_aggregator' too"),
])
def test_conflicting_balancing_arguments_are_rejected_when_built(arguments, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        training_args(tmp_path, **arguments)


@pytest.mark.parametrize("arguments, freeze, error, message", [
    ({"gradient_aggregator": "upgrad"}, {"encoder": True}, ConfigError, "the encoder is frozen"),
    ({"gradient_aggregator": "upgrad", "task_group_size": 9}, None, ConfigError,
     "group_size is 9 but the run has 3 tasks"),
    ({"gradient_aggregator": "cagrad", "gradient_aggregator_kwargs": {"alpha": 1}}, None, ConfigError,
     "Valid kwargs: c, norm_eps"),
    ({"loss_weighting": "dwa", "loss_weighting_kwargs": {"periods": 3}}, None, TypeError,
     "unexpected keyword argument 'periods'"),
    ({"loss_weighting": "dwa", "loss_weighting_kwargs": {"temperature": 0}}, None, ValueError,
     "temperature must be > 0"),
])
def test_balancing_the_model_cannot_serve_is_rejected_by_the_trainer(arguments, freeze, error, message,
                                                                     make_trainer):
    with pytest.raises(error, match=message):
        make_trainer(freeze=freeze, train=review_data(8, 1, SEQUENCE_TASKS), **arguments)


def test_aggregator_needs_several_tasks(make_trainer):
    with pytest.raises(ConfigError, match="this run has 1. Remove 'gradient_aggregator' or add tasks"):
        make_trainer(names=("sentiment",), train=review_data(8, 1, ("sentiment",)), gradient_aggregator="mgda")


def test_a_task_weight_selects_static_weighting(make_trainer):
    trainer = make_trainer(task_options={"sentiment": {"weight": 3.0}}, max_steps=2, logging_steps=1)
    assert trainer.weighting.weights() == {"sentiment": 3.0, "match": 1.0, "score": 1.0}
    trainer.train()
    assert logged_steps(trainer)[-1]["weight_sentiment"] == 3.0


def test_static_weights_in_kwargs_still_work_with_a_deprecation_warning(make_trainer):
    with pytest.warns(FutureWarning, match="loss_weighting_kwargs 'weights' is deprecated.*set each task's `weight`"):
        trainer = make_trainer(loss_weighting="static", loss_weighting_kwargs={"weights": {"sentiment": 2.0}})
    assert trainer.weighting.weights()["sentiment"] == 2.0


@pytest.mark.parametrize("options", [{"loss_weighting": "dwa"}, {"gradient_aggregator": "upgrad"},
                                     {"loss_weighting": "static",
                                      "loss_weighting_kwargs": {"weights": {"sentiment": 2.0}}}])
def test_a_task_weight_that_would_be_ignored_or_given_twice_is_refused(make_trainer, options):
    """Through the Python API as through the recipe: a task's `weight` is never dropped silently."""
    with pytest.raises(ValueError, match=r"tasks \['sentiment'\] set 'weight'"):
        make_trainer(task_options={"sentiment": {"weight": 3.0}}, **options)


@pytest.mark.parametrize("balancing, training, message", [
    ({"aggregator": "upgrad"}, {"fp16": True}, "Use bf16: true"),
    ({"weighting": "dwa"}, {}, r"\['sentiment'\] set 'weight', which only 'loss_weighting: static' uses"),
])
def test_the_recipe_rejects_balancing_problems_at_config_time(balancing, training, message, tiny_model_dir, data_dir,
                                                              tmp_path):
    """What the recipe adds: problems found before any weight loads, worded with its keys. The aggregator's fp16
    rule is checked here only: on a machine without a GPU, MultiTaskTrainingArguments refuses fp16 itself first."""
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", **training)
    raw["tasks"] = raw["tasks"][:3]
    raw["tasks"][0]["weight"] = 3.0
    raw["balancing"] = balancing
    with pytest.raises(ConfigError, match=message):
        build_config(raw)
