"""Weighting methods and aggregators against analytic expectations, without a model."""

import math

import pytest
import torch

from manyheads import MultiTaskTrainingArguments
from manyheads.balancing import AGGREGATORS, WEIGHTINGS, LossWeighting, build_aggregator, build_weighting
from manyheads.balancing.dwa import DynamicWeightAverage
from manyheads.balancing.gradnorm import GradNormWeighting
from manyheads.balancing.rlw import RandomWeighting
from manyheads.balancing.static import StaticWeighting
from manyheads.balancing.uncertainty import UncertaintyWeighting

TASKS = ["a", "b", "c"]


def aggregate(name, matrix, **kwargs):
    aggregator = build_aggregator(name, matrix.shape[0], kwargs)
    weights = aggregator.weighting(matrix)
    return weights, weights @ matrix


def test_pcgrad_projects_each_conflicting_gradient_onto_the_others_normal_plane():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert g1 @ g2 < 0  # they conflict
    _, combined = aggregate("pcgrad", torch.stack([g1, g2]))
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # g1 without its component along g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert p1 @ g2 == pytest.approx(0.0) and p2 @ g1 == pytest.approx(0.0)
    torch.testing.assert_close(combined, p1 + p2)
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    g1, g2 = torch.tensor([1.0, 0.5]), torch.tensor([0.5, 1.0])
    _, combined = aggregate("pcgrad", torch.stack([g1, g2]))
    torch.testing.assert_close(combined, g1 + g2)


@pytest.mark.parametrize("name", ["upgrad", "mgda", "imtl_g", "mean"])
def test_identical_gradients_give_that_gradient(name):
    g = torch.tensor([0.3, -1.2, 2.0, 0.7])
    _, combined = aggregate(name, torch.stack([g, g, g]))
    torch.testing.assert_close(combined, g, atol=1e-4, rtol=1e-4)


def test_upgrad_update_does_not_conflict_with_any_task():
    matrix = torch.tensor([[1.0, 0.0, 0.2], [-0.8, 1.0, 0.0], [0.1, -0.5, 1.0]])
    _, combined = aggregate("upgrad", matrix)
    assert (matrix @ combined >= -1e-5).all()


def test_mean_is_the_average_of_task_gradients():
    matrix = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    weights, combined = aggregate("mean", matrix)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(combined, torch.tensor([2.0, -1.0]))


def test_unknown_aggregator_kwarg_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"aggregator 'cagrad' rejected .*'alpha'.*Valid kwargs: c, norm_eps"):
        build_aggregator("cagrad", 2, {"alpha": 1})


def test_uncertainty_gradient_matches_closed_form():
    weighting = UncertaintyWeighting(TASKS, init=0.3)
    loss = torch.tensor(2.5, requires_grad=True)
    out = weighting("b", loss)
    out.backward()
    s = 0.3
    # d/ds [0.5 exp(-s) L + 0.5 s] = 0.5 - 0.5 exp(-s) L; d/dL = 0.5 exp(-s); other tasks untouched.
    assert weighting.log_vars.grad[1].item() == pytest.approx(0.5 - 0.5 * math.exp(-s) * 2.5, rel=1e-6)
    assert weighting.log_vars.grad[0].item() == 0.0 and weighting.log_vars.grad[2].item() == 0.0
    assert loss.grad.item() == pytest.approx(0.5 * math.exp(-s), rel=1e-6)
    assert weighting.weights()["b"] == pytest.approx(0.5 * math.exp(-s), rel=1e-6)


def test_uncertainty_settles_where_exp_s_equals_the_loss():
    weighting = UncertaintyWeighting(["a"])
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        weighting("a", torch.tensor(4.0)).backward()
        optimizer.step()
    assert weighting.log_vars.item() == pytest.approx(math.log(4.0), abs=1e-3)


def test_dwa_equal_loss_ratios_give_equal_weights():
    history = torch.tensor([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(DynamicWeightAverage.weights_from_history(history, 2.0), torch.ones(3))


def test_dwa_favours_the_task_whose_loss_falls_slowest():
    weighting = DynamicWeightAverage(TASKS, period=1, temperature=1.0)
    for losses in ([1.0, 1.0, 1.0], [0.5, 0.9, 1.0]):  # two periods: ratios 0.5, 0.9, 1.0
        for task, loss in zip(TASKS, losses):
            weighting.observe(task, torch.tensor(loss))
        weighting.step_end()
    expected = 3 * torch.softmax(torch.tensor([0.5, 0.9, 1.0]), dim=0)
    torch.testing.assert_close(weighting.current(), expected)
    assert weighting.weights()["c"] > weighting.weights()["b"] > weighting.weights()["a"]
    # The state round-trips through state_dict (what checkpoints store).
    restored = DynamicWeightAverage(TASKS, period=1, temperature=1.0)
    restored.load_state_dict(weighting.state_dict())
    torch.testing.assert_close(restored.current(), weighting.current())
    assert restored.step == 2


def test_dwa_is_equal_until_two_periods_have_passed():
    weighting = DynamicWeightAverage(TASKS, period=2)
    for _ in range(3):
        weighting.observe("a", torch.tensor(1.0))
        weighting.step_end()
    torch.testing.assert_close(weighting.current(), torch.ones(3))


def test_rlw_is_a_pure_function_of_seed_and_step_with_mean_one():
    first, second = RandomWeighting(TASKS, seed=3), RandomWeighting(TASKS, seed=3)
    draws = []
    for _ in range(5):
        torch.testing.assert_close(first.current(), second.current())
        assert first.current().sum().item() == pytest.approx(3.0)
        draws.append(first.current())
        first.step_end()
        second.step_end()
    assert not torch.equal(draws[0], draws[1])


def test_static_weights_scale_the_loss_and_reject_unknown_tasks():
    weighting = StaticWeighting(TASKS, {"a": 2.0})
    assert weighting("a", torch.tensor(3.0)).item() == 6.0 and weighting("b", torch.tensor(3.0)).item() == 3.0
    with pytest.raises(ValueError, match=r"unknown tasks \['z'\]"):
        StaticWeighting(TASKS, {"z": 1.0})


def test_gradnorm_moves_weight_towards_the_slow_task():
    # Equal gradient norms; task a's loss fell to 10% of its start, task b's only to 90%: b trains slower,
    # so its target norm is larger and its weight must grow.
    weights = torch.ones(2, dtype=torch.float64)
    loss = torch.tensor([0.1, 0.9], dtype=torch.float64)
    initial = torch.ones(2, dtype=torch.float64)
    norm = torch.ones(2, dtype=torch.float64)
    new = GradNormWeighting.update(weights, loss, initial, norm, torch.tensor([True, True]), alpha=1.5, lr=0.1)
    assert new[1] > 1.0 > new[0]
    assert new.sum().item() == pytest.approx(2.0)


def test_gradnorm_measures_the_norm_on_the_anchor_parameters():
    weighting = GradNormWeighting(["a", "b"])
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    weighting.anchor = [w]
    weighting("a", (w * torch.tensor([1.0, 1.0])).sum())  # gradient (1, 1): norm sqrt(2)
    weighting("b", (w * torch.tensor([3.0, 4.0])).sum())  # gradient (3, 4): norm 5
    weighting.step_end()
    torch.testing.assert_close(weighting.last_norm, torch.tensor([math.sqrt(2), 5.0], dtype=torch.float64))
    # The weighted norm of b is above the mean, so b's weight goes down.
    assert weighting.weights()["b"] < 1.0 < weighting.weights()["a"]


class TwoTaskModel(torch.nn.Module):
    """Two regression tasks on one shared linear layer (what `bind` anchors a gradient-based weighting to)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = torch.nn.Linear(3, 1)
        self.inputs = torch.randn(4, 3)

    def encoder_layers(self):
        return [self.shared]

    def loss(self, target: float) -> torch.Tensor:
        return (self.shared(self.inputs) - target).pow(2).mean()


def run_steps(weighting, model, steps=3):
    """One-task micro-batches of tasks a and b per optimizer step, as the trainer calls a weighting."""
    if hasattr(weighting, "bind"):
        weighting.bind(model)
    seen = []
    for _ in range(steps):
        for task, target in (("a", 1.0), ("b", -2.0)):
            loss = model.loss(target)
            weighting.observe(task, loss.detach())
            weighting(task, loss).backward()
        weighting.step_end()
        seen.append(weighting.weights())
    return seen


# Constructor arguments for methods whose defaults need more steps than run_steps takes to act.
WEIGHTING_KWARGS = {"dwa": {"period": 1}}


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_registered_weighting_built_by_name_gives_finite_weights(name, tmp_path):
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), use_cpu=True, loss_weighting=name,
                                      loss_weighting_kwargs=WEIGHTING_KWARGS.get(name, {}))
    weighting = build_weighting(args.loss_weighting, args.loss_weighting_kwargs, {"a": 1.0, "b": 1.0})
    assert isinstance(weighting, LossWeighting) and weighting.tasks == ["a", "b"]
    for weights in run_steps(weighting, TwoTaskModel()):
        assert set(weights) == {"a", "b"}
        assert all(math.isfinite(w) and w > 0 for w in weights.values()), weights


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_every_registered_aggregator_built_by_name_gives_finite_weights(name, tmp_path):
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), use_cpu=True, gradient_aggregator=name)
    aggregator = build_aggregator(args.gradient_aggregator, 2, args.gradient_aggregator_kwargs)
    weights = aggregator.weighting(torch.tensor([[1.0, 0.0, 2.0], [-0.5, 1.0, 0.5]]))
    assert weights.shape == (2,) and torch.isfinite(weights).all(), weights


class Halves(LossWeighting):
    """A user's weighting: every task's loss counts half."""

    def current(self) -> torch.Tensor:
        return torch.full((len(self.tasks),), 0.5)


@pytest.mark.parametrize("given", [Halves, f"{__name__}.Halves"], ids=["class", "import path"])
def test_a_user_defined_weighting_is_accepted_as_a_class_or_an_import_path(given, tmp_path):
    if isinstance(given, str):
        args = MultiTaskTrainingArguments(output_dir=str(tmp_path), use_cpu=True, loss_weighting=given)
        given = args.loss_weighting
    weighting = build_weighting(given, {}, {"a": 1.0, "b": 1.0})
    assert type(weighting) is Halves
    assert run_steps(weighting, TwoTaskModel(), steps=1) == [{"a": 0.5, "b": 0.5}]


def test_a_weighting_that_is_neither_registered_nor_importable_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'loss_weighting' is 'softmax'; valid choices: equal, static, uncertainty"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), use_cpu=True, loss_weighting="softmax")
    with pytest.raises(ValueError, match=r"'loss_weighting' is 'my_pkg.Nope'; valid choices: .*import path"):
        build_weighting("my_pkg.Nope", {}, {"a": 1.0})
    with pytest.raises(ValueError, match="is not a LossWeighting subclass"):
        build_weighting(f"{__name__}.TwoTaskModel", {}, {"a": 1.0})
