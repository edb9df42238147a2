"""One GLUE task fine-tuned with stock `transformers` only (`Trainer` + `AutoModelForSequenceClassification`), on a
subset folder written by `_common.write_glue_subset`: the reference the benchmarks hold manyheads' single-task
runs against (is a gap to published scores the checkpoint's and the recipe's, or manyheads'?). No manyheads code
runs here."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as bc


def read_subset(folder: str | Path, task: str, split: str) -> dict[str, list[str]]:
    """Columns of a subset file (clean column names, tab-separated, no quoting) as lists of strings."""
    path = Path(folder) / task / f"{split}.tsv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {column: [row[column] for row in rows] for column in bc.GLUE[task].columns.values()}


def stock_metrics(task: str, predictions: Any, labels: Any) -> dict[str, float]:
    """The metrics manyheads reports for the task, computed with sklearn / scipy (macro F1, as manyheads)."""
    import numpy as np

    if bc.GLUE_TASKS[task]["type"] == "regression":
        from scipy.stats import pearsonr, spearmanr

        predicted = np.asarray(predictions, dtype=np.float64).reshape(-1)
        gold = np.asarray(labels, dtype=np.float64).reshape(-1)
        return {"pearson": float(pearsonr(predicted, gold)[0]), "spearman": float(spearmanr(predicted, gold)[0])}
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predicted = np.asarray(predictions).argmax(-1)
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "f1": float(f1_score(labels, predicted, average="macro")),
            "mcc": float(matthews_corrcoef(labels, predicted))}


def train_stock(task: str, folder: str | Path, model: str, *, epochs: int, batch_size: int, learning_rate: float,
                warmup: float, weight_decay: float, max_length: int, group_by_length: bool, seed: int
                ) -> dict[str, Any]:
    """Train on `folder/<task>/train.tsv` and evaluate on its dev.tsv; metrics, steps, losses and seconds."""
    import numpy as np
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(seed)
    regression = bc.GLUE_TASKS[task]["type"] == "regression"
    texts = [c for c in bc.GLUE[task].columns.values() if c != "label"]
    tokenizer = AutoTokenizer.from_pretrained(model)
    raw = {split: read_subset(folder, task, split) for split in ("train", "dev")}
    names = sorted(set(raw["train"]["label"]))  # label strings -> ids; accuracy and MCC do not depend on order

    def dataset(columns: dict[str, list[str]]) -> Any:
        labels = [float(v) for v in columns["label"]] if regression else [names.index(v) for v in columns["label"]]
        encoded = tokenizer(*[columns[c] for c in texts], truncation=True, max_length=max_length)
        return Dataset.from_dict({**encoded, "labels": labels})

    data = {split: dataset(columns) for split, columns in raw.items()}
    network = AutoModelForSequenceClassification.from_pretrained(
        model, num_labels=1 if regression else len(names),
        problem_type="regression" if regression else "single_label_classification")
    with tempfile.TemporaryDirectory(prefix="manyheads-stock-") as output_dir:
        training = bc.training_fields(output_dir, batch_size, -1, seed, bf16=False)
        training.update(num_train_epochs=epochs, learning_rate=learning_rate, warmup_steps=warmup,
                        weight_decay=weight_decay, lr_scheduler_type="linear", per_device_eval_batch_size=64,
                        logging_steps=0.1,
                        train_sampling_strategy="group_by_length" if group_by_length else "random")
        trainer = Trainer(model=network, args=TrainingArguments(**training), train_dataset=data["train"],
                          processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
        # Labels from the prediction output, not the dataset: with length grouping on, stock Trainer groups its
        # evaluation sampler by length too, so predictions do not come in the dataset's order.
        output = trainer.predict(data["dev"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"metrics": stock_metrics(task, output.predictions, output.label_ids),
            "predictions": np.asarray(output.predictions), "labels": np.asarray(output.label_ids),
            "steps": trainer.state.global_step, "mean_loss": out.training_loss,
            "final_loss": losses[-1] if losses else None, "train_s": round(seconds, 1)}
