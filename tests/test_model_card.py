"""The model card saved with every model: Hub metadata, every task with its labels and evaluation metrics."""

from __future__ import annotations

import json

import yaml

from manyheads import Classification, MultiTaskModel
from manyheads.cli.main import main

from .conftest import base_config, make_encoder


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_trained_model_card_lists_every_task_with_its_metrics(tmp_path, tiny_model_dir, data_dir):
    out = tmp_path / "out"
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(base_config(tiny_model_dir, data_dir, out, max_steps=4)), encoding="utf-8")
    assert main(["train", str(config), "--head_learning_rate", "0.01"]) == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((out / "eval_results.json").read_text())
    header = front_matter(card)
    assert header["library_name"] == "manyheads" and header["license"] == "other"
    assert {"text-classification", "multi-task"} <= set(header["tags"])
    (index,) = header["model-index"]
    results = {r["task"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in index["results"]}
    assert set(results) == {"sentiment", "match", "colors", "score"}
    for task, values in results.items():
        for metric, value in values.items():
            assert abs(value - metrics[f"eval_{task}_{metric}"]) < 1e-6, (task, metric)
    assert "| sentiment | classification | text | neg, pos | accuracy |" in card
    assert "| colors | multilabel | text | red, green, blue, yellow | micro_f1 |" in card
    assert f"{metrics['eval_average']:.4f}" in card and '"learning_rate": 0.001' in card
    assert '"head_learning_rate": 0.01' in card and "adapter_learning_rate" not in card  # unset: not shown
    assert "MultiTaskPredictor(" in card


def test_save_pretrained_writes_a_card_without_metrics(tmp_path):
    model = MultiTaskModel.from_encoder(make_encoder(), [Classification(name="topic", labels=["a", "b"])])
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    assert "model-index" not in front_matter(card)
    assert "| topic | classification | text | a, b | accuracy |" in card
    assert "No evaluation results" in card


def test_each_save_writes_the_card_once_with_the_newest_metrics(tmp_path, tiny_encoder, tokenizer, monkeypatch):
    """Through the Python API: a checkpoint save and the final `save_model` each write README.md exactly once, and
    the final card carries the evaluation metrics and training settings (no metric-less card written first)."""
    from datasets import Dataset

    from manyheads import MultiTaskTrainer, MultiTaskTrainingArguments
    from manyheads.modeling import model as model_module

    writes: list[str] = []
    real = model_module.write_card
    monkeypatch.setattr(model_module, "write_card", lambda folder, text: (writes.append(text), real(folder, text)))
    rows = {"text": ["good thing", "bad thing", "great box", "awful item"] * 4, "label": ["pos", "neg"] * 8}
    model = MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="topic", max_length=16)])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, save_strategy="steps",
                                      save_steps=2, eval_strategy="steps", eval_steps=2, report_to="none",
                                      use_cpu=True, per_device_train_batch_size=4)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset={"topic": Dataset.from_dict(rows)},
                               eval_dataset={"topic": Dataset.from_dict(rows)}, processing_class=tokenizer)
    trainer.train()
    assert len(writes) == 1  # the checkpoint-2 save
    trainer.save_model()
    assert len(writes) == 2
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert card == writes[-1] and "model-index" in front_matter(card)
    assert f"{trainer.state.log_history[-2]['eval_average']:.4f}" in card and '"max_steps": 2' in card
