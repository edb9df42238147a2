"""Trainer parity (issue 29, items 6-11): what a stock `Trainer` script does, written as such a script writes it,
works with `MultiTaskTrainer` (or is refused with one line naming the fix). Each test failed on the code before.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments, Regression

from .conftest import review_rows


def glue_like(n: int = 48, seed: int = 1) -> dict[str, Dataset]:
    rows = review_rows(n, seed)
    return {"sst2": Dataset.from_list([{"sentence": r["text"], "label": int(r["sentiment"] == "pos")} for r in rows]),
            "stsb": Dataset.from_list([{"sentence": r["text"], "label": r["score"]} for r in rows])}


def model_of(encoder) -> MultiTaskModel:
    return MultiTaskModel.from_encoder(encoder, [Classification(name="sst2", text="sentence", labels=[0, 1]),
                                                 Regression(name="stsb", text="sentence")])


def args_for(tmp_path, **overrides) -> MultiTaskTrainingArguments:
    values = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8, "max_steps": 6,
              "learning_rate": 1e-3, "report_to": "none", "save_strategy": "no", "seed": 3, "logging_steps": 2}
    return MultiTaskTrainingArguments(**{**values, **overrides})


def test_user_tokenized_datasets_keep_glue_label_column(tiny_encoder, tokenizer, tmp_path):
    """Item 6: `dataset.map(tokenize)` keeps `label`; stock collators rename it to `labels`, so does manyheads."""
    tokenized = {name: ds.map(lambda batch: tokenizer(batch["sentence"], truncation=True), batched=True)
                 for name, ds in glue_like().items()}
    assert "label" in tokenized["sst2"].column_names and "labels" not in tokenized["sst2"].column_names
    trainer = MultiTaskTrainer(model=model_of(tiny_encoder), args=args_for(tmp_path), train_dataset=tokenized,
                               eval_dataset=tokenized, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 6 and torch.isfinite(torch.tensor(result.training_loss))
    metrics = trainer.evaluate()
    assert 0 <= metrics["eval_sst2_accuracy"] <= 1 and "eval_stsb_pearson" in metrics


def test_a_shuffled_dataloader_that_mixes_tasks_is_refused_with_the_fix(tiny_encoder, tokenizer, tmp_path):
    """Item 7: overriding get_train_dataloader with a loader whose batches mix tasks, as the article does."""
    class ShuffledTrainer(MultiTaskTrainer):
        def get_train_dataloader(self):
            return DataLoader(self.train_dataset, batch_size=8, shuffle=True, collate_fn=self.data_collator)

    trainer = ShuffledTrainer(model=model_of(tiny_encoder), args=args_for(tmp_path), train_dataset=glue_like(),
                              processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"mixes tasks \[.*\], but MultiTaskTrainer trains one task per micro-batch "
                                         r".*Keep its own get_train_dataloader"):
        trainer.train()


def test_bare_metric_for_best_model_is_the_mean_over_tasks_that_report_it(tiny_encoder, tokenizer, tmp_path):
    """Item 8: metric_for_best_model="accuracy" (a single-task script's value) means the mean accuracy of the tasks
    that report accuracy; it is logged as eval_accuracy and picks the best checkpoint."""
    data = glue_like()
    model = MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="sst2", text="sentence"),
                                                       Classification(name="other", text="sentence"),
                                                       Regression(name="stsb", text="sentence")])
    data["other"] = data["sst2"]
    args = args_for(tmp_path, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=3,
                    metric_for_best_model="accuracy", load_best_model_at_end=True)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                               processing_class=tokenizer)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] == pytest.approx((metrics["eval_sst2_accuracy"]
                                                      + metrics["eval_other_accuracy"]) / 2)
    assert trainer.state.best_metric is not None and trainer.state.best_model_checkpoint is not None


@pytest.mark.parametrize("old, new", [("evaluation_strategy", "eval_strategy"), ("warmup_ratio", "warmup_steps"),
                                      ("logging_dir", "the TENSORBOARD_LOGGING_DIR")])
def test_renamed_training_arguments_name_their_replacement_from_python(tmp_path, old, new):
    """Item 9: the same message as the recipe gives, instead of a bare 'unexpected keyword argument'."""
    with pytest.raises(TypeError, match=f"'{old}' no longer exists in transformers 5, use {new}"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), **{old: "steps" if old != "warmup_ratio" else 0.1})


def test_predict_on_one_task_returns_its_metrics_and_unsqueezed_labels_train(tiny_encoder, tokenizer, tmp_path):
    """Item 10: trainer.predict(one task's eval set) gives that task's metrics as evaluate does; labels of shape
    [1, N] (`torch.tensor(labels).unsqueeze(0)` in tutorials) are flattened as stock models do."""
    data = glue_like()
    trainer = MultiTaskTrainer(model=model_of(tiny_encoder), args=args_for(tmp_path), train_dataset=data,
                               eval_dataset=data, processing_class=tokenizer)
    trainer.train()
    output = trainer.predict(trainer.eval_dataset["sst2"])
    assert output.predictions.shape == (48, 2) and output.label_ids.shape == (48,)
    assert {"test_sst2_accuracy", "test_sst2_f1", "test_sst2_loss", "test_loss"} <= set(output.metrics)
    expected = (output.predictions.argmax(-1) == output.label_ids).mean()
    assert output.metrics["test_sst2_accuracy"] == pytest.approx(expected)

    model = trainer.model
    batch = tokenizer(["good great item", "bad awful box"], padding=True, return_tensors="pt")
    flat = model(**batch, labels=torch.tensor([1, 0]), task="sst2").loss
    unsqueezed = model(**batch, labels=torch.tensor([1, 0]).unsqueeze(0), task="sst2").loss
    assert torch.allclose(flat, unsqueezed)


def test_resume_is_exact_with_user_optimizers_and_a_learnable_weighting(tiny_encoder, tokenizer, tmp_path):
    """Item 11: optimizers=(opt, sched) with `uncertainty`: the weighting's own optimizer state is restored on resume
    (it was saved but never loaded: final weights differed by ~1e-5)."""
    import copy

    def run(output: str, resume: str | None = None) -> MultiTaskTrainer:
        model = model_of(copy.deepcopy(tiny_encoder))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        args = args_for(tmp_path, output_dir=str(tmp_path / output), max_steps=8, save_strategy="steps",
                        save_steps=4, loss_weighting="uncertainty", loss_weighting_kwargs={"lr": 0.05})
        trainer = MultiTaskTrainer(model=model, args=args, train_dataset=glue_like(), processing_class=tokenizer,
                                   optimizers=(optimizer, scheduler))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run("a")
    resumed = run("b", resume=str(tmp_path / "a" / "checkpoint-4"))
    assert resumed.state.global_step == 8
    assert torch.equal(straight.weighting.log_vars.detach(), resumed.weighting.log_vars.detach())
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
