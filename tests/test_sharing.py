"""Soft and hybrid sharing: one LoRA adapter per task (PEFT) inside the shared encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from manyheads import (
    Classification,
    MultiTaskModel,
    MultiTaskPredictor,
    MultiTaskTrainer,
    MultiTaskTrainingArguments,
    Regression,
    Sharing,
)
from manyheads.callbacks.update_monitor import parameter_groups
from manyheads.errors import ConfigError
from manyheads.export.stock import build_stock_model
from manyheads.modeling.adapters import adapter_of, is_adapter_parameter
from manyheads.recipe import build_config
from manyheads.recipe.config import load_config

from .conftest import base_config, make_encoder, require, review_rows
from .run_helpers import RecordingTrainer, assert_same_model_state

require("peft")  # every test here builds adapters: a missing PEFT fails collection with the install hint


def raw_sets(n: int = 48, seed: int = 1) -> dict[str, Dataset]:
    rows = review_rows(n, seed)
    return {"sentiment": Dataset.from_list([{"text": r["text"], "label": r["sentiment"]} for r in rows]),
            "score": Dataset.from_list([{"text": r["text"], "label": r["score"]} for r in rows])}


def tasks(**options):
    return [Classification(name="sentiment", **options.get("sentiment", {})),
            Regression(name="score", **options.get("score", {}))]


def train(encoder, tokenizer, tmp_path, sharing, steps=12, task_options=None, callbacks=None, **args):
    model = MultiTaskModel.from_encoder(encoder, tasks(**(task_options or {})), sharing=sharing)
    arguments = MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                                           max_steps=steps, learning_rate=args.pop("learning_rate", 5e-3),
                                           report_to="none", use_cpu=True, seed=3, save_strategy="no", **args)
    trainer = MultiTaskTrainer(model=model, args=arguments, train_dataset=raw_sets(), processing_class=tokenizer,
                               callbacks=callbacks)
    return trainer


def encoder_base(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items() if not is_adapter_parameter(k)}


def adapters(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items() if is_adapter_parameter(k)}


def test_lora_trains_each_task_adapter_and_leaves_the_encoder_bitwise_unchanged(tiny_encoder, tokenizer, tmp_path):
    trainer = train(tiny_encoder, tokenizer, tmp_path, "lora")
    model = trainer.model
    base, before = encoder_base(model), adapters(model)
    heads = {k: v.clone() for k, v in model.heads.state_dict().items()}
    assert {adapter_of(k) for k in before} == {"sentiment", "score"}
    trainer.train()
    for key, value in encoder_base(model).items():
        assert torch.equal(value, base[key]), key
    after = adapters(model)
    for task in ("sentiment", "score"):
        changed = [k for k in after if adapter_of(k) == task and not torch.equal(after[k], before[k])]
        assert changed, f"adapter of {task} never changed"
    assert all(not torch.equal(v, heads[k]) for k, v in model.heads.state_dict().items() if k.endswith("weight"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(is_adapter_parameter(n) or n.startswith("heads.") for n in trainable)


class GradientSpy:
    """Which tasks' adapters hold a gradient when each optimizer step is taken (accumulation 1: one task)."""

    def __init__(self):
        self.steps: list[set[str]] = []

    def __call__(self, args, state, control, model=None, **kwargs):
        self.steps.append({adapter_of(n) for n, p in model.named_parameters()
                           if is_adapter_parameter(n) and p.grad is not None})


def test_only_the_active_task_adapter_gets_a_gradient(tiny_encoder, tokenizer, tmp_path):
    from transformers import TrainerCallback

    spy = GradientSpy()
    callback = type("Spy", (TrainerCallback,), {"on_pre_optimizer_step": lambda self, *a, **k: spy(*a, **k)})()
    trainer = train(tiny_encoder, tokenizer, tmp_path, "lora", steps=8, callbacks=[callback])
    seen = []
    original = trainer.compute_loss

    def record(model, inputs, *args, **kwargs):
        seen.append(inputs["task"])
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = record
    trainer.train()
    assert len(spy.steps) == 8
    assert spy.steps == [{task} for task in seen]
    assert set(seen) == {"sentiment", "score"}


def test_hybrid_trains_the_encoder_and_adapters_and_opt_out_has_none(tiny_encoder, tokenizer, tmp_path):
    trainer = train(tiny_encoder, tokenizer, tmp_path, "hybrid", task_options={"score": {"adapter": False}})
    model = trainer.model
    base, before = encoder_base(model), adapters(model)
    assert {adapter_of(k) for k in before} == {"sentiment"}
    assert model.encoder_passes() == [["sentiment"], ["score"]]
    trainer.train()
    assert any(not torch.equal(v, base[k]) for k, v in encoder_base(model).items())
    assert any(not torch.equal(v, before[k]) for k, v in adapters(model).items())
    groups = parameter_groups(model)
    assert "adapter.sentiment" in groups and "adapter.score" not in groups
    assert all(is_adapter_parameter(n) for n, _ in groups["adapter.sentiment"])


def optimizer_rates(trainer) -> dict[str, float]:
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)]: group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}


def test_adapter_learning_rate_gets_its_own_optimizer_groups(tiny_encoder, tokenizer, tmp_path):
    trainer = train(tiny_encoder, tokenizer, tmp_path, "hybrid", steps=2, learning_rate=1e-4,
                    adapter_learning_rate=2e-3, head_learning_rate_scaling="none")
    trainer.create_optimizer()
    rates = optimizer_rates(trainer)
    assert rates and all(rate == (2e-3 if is_adapter_parameter(n) else 1e-4) for n, rate in rates.items())
    assert set(rates) == {n for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_head_learning_rate_with_adapters_and_through_the_scheduler(tiny_encoder, tokenizer, tmp_path):
    trainer = train(tiny_encoder, tokenizer, tmp_path, "hybrid", steps=10, learning_rate=1e-4,
                    adapter_learning_rate=2e-3, head_learning_rate=5e-3, warmup_steps=4, weight_decay=0.01,
                    head_learning_rate_scaling="none")  # one rate for both heads
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    rates = optimizer_rates(trainer)
    expected = {n: 5e-3 if n.startswith("heads.") else 2e-3 if is_adapter_parameter(n) else 1e-4 for n in rates}
    assert {n for n in rates if n.startswith("heads.")} == {n for n, _ in trainer.model.heads.named_parameters(
        prefix="heads")}
    for _ in range(2):  # half-way through the warm-up: every group at half its own rate
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert optimizer_rates(trainer) == pytest.approx({n: rate / 2 for n, rate in expected.items()})
    decays = {(group["lr"], group["weight_decay"]) for group in trainer.optimizer.param_groups}
    assert {(5e-3 / 2, 0.01), (5e-3 / 2, 0.0)} <= decays  # head weights decay, head biases do not (as before)


def test_head_learning_rate_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"'head_learning_rate' is 0.0; give a learning rate > 0"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), head_learning_rate=0.0)


@pytest.fixture
def trained_lora(tiny_encoder, tokenizer, tmp_path):
    trainer = train(tiny_encoder, tokenizer, tmp_path, Sharing(mode="lora", r=4, alpha=8, dropout=0.0),
                    task_options={"score": {"adapter": False}})
    trainer.train()
    return trainer.model.eval()


def probe_batch(tokenizer):
    texts = [r["text"] for r in review_rows(6, 9)]
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_mixed_task_batch_equals_task_by_task(trained_lora, tokenizer):
    batch = probe_batch(tokenizer)
    row_tasks = ["sentiment", "score", "score", "sentiment", "sentiment", "score"]
    with torch.no_grad():
        mixed = trained_lora.forward_mixed(batch["input_ids"], row_tasks, batch["attention_mask"],
                                           batch["token_type_ids"])
        for task, (rows, logits) in mixed.items():
            alone = trained_lora(**batch, task=task).logits[rows]
            torch.testing.assert_close(logits, alone, atol=1e-6, rtol=1e-5)
    assert sorted(mixed) == ["score", "sentiment"] and sorted(sum((r for r, _ in mixed.values()), [])) == list(range(6))


def test_save_load_predict_equals_the_in_memory_model(trained_lora, tokenizer, tmp_path):
    folder = tmp_path / "saved"
    trained_lora.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded = MultiTaskModel.from_pretrained(folder)
    assert loaded.sharing == trained_lora.sharing
    for key, value in trained_lora.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
        n for n, p in trained_lora.named_parameters() if p.requires_grad}
    rows = [{"text": r["text"]} for r in review_rows(10, 4)]
    in_memory = MultiTaskPredictor(trained_lora, tokenizer, device="cpu").predict(rows)
    from_folder = MultiTaskPredictor(str(folder), device="cpu")
    assert from_folder.passes_note() is not None and "2 passes" in from_folder.passes_note()
    reloaded = from_folder.predict(rows)
    for a, b in zip(in_memory, reloaded):
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert a["score"]["score"] == pytest.approx(b["score"]["score"], abs=1e-5)


def test_export_merges_the_task_adapter(trained_lora, tokenizer):
    batch = probe_batch(tokenizer)
    stock = build_stock_model(trained_lora, "sentiment").eval()
    assert not any("lora" in k or "base_layer" in k for k in stock.state_dict())
    with torch.no_grad():
        ours = trained_lora(**batch, task="sentiment").logits
        theirs = stock(**batch).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
        # The merge matters: the stock model without the adapter gives other logits.
        plain = copy.deepcopy(trained_lora)
        for name, param in plain.named_parameters():
            if is_adapter_parameter(name) and "lora_B" in name:
                param.zero_()
        assert not torch.allclose(plain(**batch, task="sentiment").logits, ours, atol=1e-4)


def test_sharing_settings_are_checked():
    with pytest.raises(ConfigError, match=r"Sharing: mode: got 'soft'; valid: hard, lora, hybrid") as err:
        Sharing(mode="soft", r=0)
    assert "r: got 0" in str(err.value)
    with pytest.raises(ConfigError, match=r"target_modules: \['nope'\] matches no layer"):
        MultiTaskModel.from_encoder(make_encoder(), tasks(), sharing=Sharing(mode="lora", target_modules=["nope"]))


def test_recipe_refuses_what_lora_cannot_serve(tiny_model_dir, data_dir, tmp_path):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["sharing"] = {"mode": "lora", "r": 0}
    raw["balancing"] = {"aggregator": "upgrad"}
    raw["diagnostics"] = {"conflict_every": 2}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    text = str(err.value)
    assert "config.sharing: r: got 0" in text
    raw["sharing"] = "lora"
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    text = str(err.value)
    assert "sharing 'lora' freezes the encoder" in text and "Use sharing 'hybrid'" in text
    assert "diagnostics.conflict_every" in text


def test_lora_resume_is_bitwise_equal_mid_epoch(review_trainer, tmp_path):
    def train(resume=None):
        # Adapter dropout on: the RNG state must resume too.
        trainer = review_trainer("full", trainer_class=RecordingTrainer,
                                 sharing=Sharing(mode="lora", r=4, alpha=8, dropout=0.1), max_steps=10,
                                 save_strategy="steps", save_steps=4, logging_steps=1)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = train()
    resumed = train(resume=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed.seen == full.seen[4:]
    assert any(is_adapter_parameter(k) for k in full.model.state_dict())
    assert_same_model_state(full.model, resumed.model)


def test_yaml_short_form(tmp_path, tiny_model_dir, data_dir):
    import yaml

    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    raw["sharing"] = "hybrid"
    raw["tasks"][1]["adapter"] = False
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    run = load_config(path)
    assert run.sharing == Sharing(mode="hybrid")
    assert run.task("match").adapter is False and run.task("sentiment").adapter is True


def test_onnx_export_runs_one_pass_per_adapter_and_matches(trained_lora, tokenizer, tmp_path):
    require("onnxruntime")
    from manyheads.export.onnx import export_onnx

    exported = export_onnx(trained_lora, tmp_path / "onnx", tokenizer=tokenizer)
    assert set(exported.max_diff) == {"sentiment", "score"} and max(exported.max_diff.values()) < 1e-5
    rows = [{"text": r["text"]} for r in review_rows(6, 5)]
    ours = MultiTaskPredictor(trained_lora, tokenizer, device="cpu").predict(rows)
    onnx = MultiTaskPredictor(str(tmp_path / "onnx"), backend="onnx").predict(rows)
    for a, b in zip(ours, onnx):
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert a["score"]["score"] == pytest.approx(b["score"]["score"], abs=1e-5)


def test_cli_train_export_predict_with_lora(tmp_path, tiny_model_dir, data_dir, capsys):
    import json

    import yaml

    from manyheads.cli.main import main

    raw = base_config(tiny_model_dir, data_dir, tmp_path / "run", max_steps=6)
    raw["tasks"] = raw["tasks"][:2]  # sentiment, match
    raw["sharing"] = {"mode": "lora", "r": 4}
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    assert "trainable (sharing 'lora': 2 adapters, " in capsys.readouterr().out
    assert main(["export", str(tmp_path / "run"), "--task", "sentiment", "--output", str(tmp_path / "stock")]) == 0
    from transformers import AutoModelForSequenceClassification

    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock")
    assert not any("lora" in k for k in stock.state_dict())
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": r["text"], "other": r["other"]}) + "\n" for r in review_rows(5, 6)),
                    encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(rows), "--output", str(tmp_path / "out.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "sharing 'lora'" in err and "2 passes (sentiment | match)" in err
    predicted = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(predicted) == 5 and all({"sentiment", "match"} <= set(p) for p in predicted)


def test_hybrid_aggregation_and_conflict_use_the_shared_weights_only(tiny_encoder, tokenizer, tmp_path):
    require("torchjd")
    from manyheads.callbacks.conflict import make_probe_batches, measure_conflict, shared_parameters
    from manyheads.data.collator import MultiTaskCollator

    trainer = train(tiny_encoder, tokenizer, tmp_path, Sharing(mode="hybrid", r=4, dropout=0.0), steps=3,
                    gradient_aggregator="upgrad")
    model = trainer.model
    shared = {n for n, _ in shared_parameters(model)}
    assert shared and not any(is_adapter_parameter(n) for n in shared)
    assert {id(p) for p in trainer.group_step.shared} == {id(p) for _, p in model.shared_parameters()}
    adapters_before = adapters(model)
    trainer.train()
    assert any(not torch.equal(v, adapters_before[k]) for k, v in adapters(model).items())
    probes = make_probe_batches(trainer.train_dataset.datasets, MultiTaskCollator(tokenizer, model.tasks), 4, seed=0)
    measured = measure_conflict(model, probes)
    assert set(measured.grad_norm) == {"sentiment", "score"} and all(v > 0 for v in measured.grad_norm.values())
