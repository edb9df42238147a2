"""`head_learning_rate_scaling="share"`: each head's rate divided by its share of the training steps."""

from __future__ import annotations

import pytest
from datasets import Dataset

from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments, Regression

from .conftest import require, review_rows


def data(sizes: dict[str, int]) -> dict[str, Dataset]:
    rows = review_rows(max(sizes.values()), 4)
    out = {}
    for name, n in sizes.items():
        label = "score" if name == "score" else "sentiment"
        out[name] = Dataset.from_dict({"text": [r["text"] for r in rows[:n]], "label": [r[label] for r in rows[:n]]})
    return out


def trainer_for(encoder, tokenizer, tmp_path, sizes: dict[str, int], shared_head: bool = False, sampling=None,
                **args):
    tasks = [Regression(name=n) if n == "score" else
             Classification(name=n, head="sentiment" if shared_head else None) for n in sizes]
    arguments = MultiTaskTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-4, max_steps=6,
        warmup_steps=0, lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
        sampling_strategy="proportional", **args)
    model = MultiTaskModel.from_encoder(encoder, tasks)
    return MultiTaskTrainer(model=model, args=arguments, train_dataset=data(sizes), processing_class=tokenizer,
                            sampling=sampling)


def rates(trainer) -> dict[str, float]:
    """Every trainable parameter's rate, by name."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)]: group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}


def head_rates(trainer) -> dict[str, float]:
    found: dict[str, set[float]] = {}
    for name, lr in rates(trainer).items():
        if name.startswith("heads."):
            found.setdefault(name.split(".")[1], set()).add(lr)
    assert all(len(v) == 1 for v in found.values()), found  # one rate per head, weights and biases alike
    return {head: lr.pop() for head, lr in found.items()}


def test_each_head_gets_the_rate_over_its_share_of_steps(tiny_encoder, tokenizer, tmp_path):
    # 64, 32 and 32 rows at batch 8, proportional: 8, 4 and 4 of every 16 steps.
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, {"big": 64, "small": 32, "score": 32},
                          head_learning_rate_scaling="share")
    trainer.train()
    assert head_rates(trainer) == pytest.approx({"big": 2e-4, "small": 4e-4, "score": 4e-4})
    encoder = {lr for n, lr in rates(trainer).items() if not n.startswith("heads.")}
    assert encoder == {1e-4}
    assert set(rates(trainer)) == {n for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_the_rule_scales_head_learning_rate_and_a_shared_head_sums_its_datasets(tiny_encoder, tokenizer, tmp_path):
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, {"big": 64, "small": 32, "score": 32},
                          shared_head=True, head_learning_rate=1e-3, head_learning_rate_scaling="share")
    trainer.create_optimizer()
    assert head_rates(trainer) == pytest.approx({"sentiment": 1e-3 / 0.75, "score": 1e-3 / 0.25})


def test_one_task_keeps_its_rate_share_is_the_default_and_none_turns_it_off(new_encoder, tokenizer, tmp_path):
    alone = trainer_for(new_encoder(), tokenizer, tmp_path / "a", {"big": 64})
    alone.create_optimizer()
    assert alone.args.head_learning_rate_scaling == "share"
    assert head_rates(alone) == pytest.approx({"big": 1e-4})
    default = trainer_for(new_encoder(), tokenizer, tmp_path / "b", {"big": 64, "small": 32}, head_learning_rate=3e-4)
    default.create_optimizer()
    assert head_rates(default) == pytest.approx({"big": 3e-4 * 3 / 2, "small": 3e-4 * 3})
    off = trainer_for(new_encoder(), tokenizer, tmp_path / "c", {"big": 64, "small": 32}, head_learning_rate=3e-4,
                      head_learning_rate_scaling="none")
    off.create_optimizer()
    assert head_rates(off) == pytest.approx({"big": 3e-4, "small": 3e-4})


@pytest.mark.parametrize("group_size", [None, 2])
def test_with_task_group_steps_the_share_is_of_steps_that_hold_the_task(new_encoder, tokenizer, tmp_path, group_size):
    require("torchjd")
    trainer = trainer_for(new_encoder(), tokenizer, tmp_path, {"big": 64, "small": 32, "score": 32},
                          gradient_aggregator="mean", task_group_size=group_size, head_learning_rate_scaling="share")
    trainer.create_optimizer()
    shares = {head: 1e-4 / rate for head, rate in head_rates(trainer).items()}
    if group_size is None:  # every step holds every task: every head trains on every step
        assert shares == pytest.approx({"big": 1.0, "small": 1.0, "score": 1.0})
    else:  # two of the three tasks in each step: the shares add up to 2, the big task (half the batches) in most
        assert sum(shares.values()) == pytest.approx(2.0)
        assert 1.0 >= shares["big"] > max(shares["small"], shares["score"]) > 0


def test_with_accumulation_a_step_trains_every_head_it_holds(new_encoder, tokenizer, tmp_path):
    sizes = {"big": 64, "small": 32, "score": 32}  # 16 micro-batches an epoch
    whole = trainer_for(new_encoder(), tokenizer, tmp_path / "a", sizes, gradient_accumulation_steps=16,
                        head_learning_rate_scaling="share")
    whole.create_optimizer()
    assert head_rates(whole) == pytest.approx({"big": 1e-4, "small": 1e-4, "score": 1e-4})  # one step holds all
    two = trainer_for(new_encoder(), tokenizer, tmp_path / "b", sizes, gradient_accumulation_steps=2,
                      head_learning_rate_scaling="share")
    two.create_optimizer()
    shares = {head: 1e-4 / rate for head, rate in head_rates(two).items()}
    # 8 steps of 2 micro-batches: at least the batch share (8, 4, 4 of 16), at most twice it.
    for head, batches in (("big", 0.5), ("small", 0.25), ("score", 0.25)):
        assert batches <= shares[head] <= 2 * batches and shares[head] * 8 == pytest.approx(round(shares[head] * 8))


def test_a_task_never_sampled_keeps_the_base_rate(tiny_encoder, tokenizer, tmp_path):
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, {"big": 64, "small": 32, "score": 32},
                          sampling=lambda sizes: [1.0, 1.0, 0.0], head_learning_rate_scaling="share")
    trainer.create_optimizer()
    assert head_rates(trainer) == pytest.approx({"big": 2e-4, "small": 2e-4, "score": 1e-4})


def test_an_unknown_scaling_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"'head_learning_rate_scaling' is 'inverse'; valid choices: none, share"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), head_learning_rate_scaling="inverse")


def test_compare_plans_the_rates_the_trainer_sets_on_both_sides(tiny_model_dir, tmp_path, capsys):
    from manyheads.cli.main import main
    from manyheads.recipe import build_config, build_trainer
    from manyheads.recipe.compare_plan import plan_comparison

    from .test_compare_groups import write_config

    config = write_config(tmp_path, tiny_model_dir)  # 48, 24 and 32 rows at batch 8: 6, 3 and 4 of 13 batches
    plan = plan_comparison(str(config), ["--head_learning_rate_scaling", "share"], [1], tmp_path / "cmp",
                           groups=[["sentiment", "score"]], finetune=1.0)
    runs = {r.name: r for r in plan.runs}
    lr = 1e-3
    assert runs["mt"].head_rates == pytest.approx({"sentiment": lr * 13 / 6, "score": lr * 13 / 3, "red": lr * 13 / 4})
    assert runs["group-sentiment+score"].head_rates == pytest.approx({"sentiment": lr * 9 / 6, "score": lr * 9 / 3})
    for name in ("single-red", "finetune-red"):
        assert runs[name].head_rates == pytest.approx({"red": lr})
    trainer = build_trainer(build_config(runs["mt"].config, config_dir=str(tmp_path)))
    trainer.create_optimizer()
    assert head_rates(trainer) == pytest.approx(runs["mt"].head_rates)
    assert main(["compare", str(config), "--seeds", "1", "--output_dir", str(tmp_path / "cmp"), "--plan_only",
                 "--head_learning_rate_scaling", "share"]) == 0
    printed = capsys.readouterr().out
    assert "| heads' learning rate |" in printed and "| single-red/seed-1 | " in printed
    assert "sentiment 0.00217, score 0.00433, red 0.00325 |" in printed
