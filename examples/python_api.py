"""examples/plain_trainer.py turned multi-task: SST-2 sentiment and RTE entailment on ONE encoder, raw datasets
in, the same compute_metrics, the best checkpoint chosen by SST-2's F1 (`diff` the two files).

    python examples/python_api.py --data_dir ../shared/data --model sentence-transformers/all-MiniLM-L6-v2
"""

import argparse

import numpy as np
from datasets import load_dataset
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from transformers import AutoTokenizer

from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments


def read(data_dir, name, rows):
    files = {"train": f"{data_dir}/{name}/train.tsv", "validation": f"{data_dir}/{name}/dev.tsv"}
    data = load_dataset("csv", data_files=files, delimiter="\t", quoting=3, keep_default_na=False)
    return {split: ds.select(range(min(rows, len(ds)))) for split, ds in data.items()}


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    predictions = np.argmax(logits, axis=-1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    return {"accuracy": accuracy_score(labels, predictions), "precision": precision, "recall": recall, "f1": f1}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--output_dir", default="runs/python_api")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=4000)
    options = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(options.model)
    sst2 = read(options.data_dir, "sst2", options.rows)
    rte = read(options.data_dir, "rte", options.rows)
    tasks = [Classification(name="sst2", text="sentence"), Classification(name="rte", text=["sentence1", "sentence2"])]
    model = MultiTaskModel.from_encoder(options.model, tasks)
    args = MultiTaskTrainingArguments(
        output_dir=options.output_dir,
        max_steps=options.max_steps,
        per_device_train_batch_size=16,
        learning_rate=5e-5,
        eval_strategy="steps",
        eval_steps=options.max_steps // 3,
        save_steps=options.max_steps // 3,
        load_best_model_at_end=True,
        metric_for_best_model="sst2_f1",
        report_to="none",
    )
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset={"sst2": sst2["train"], "rte": rte["train"]},
                               eval_dataset={"sst2": sst2["validation"], "rte": rte["validation"]},
                               processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.train()
    print(trainer.evaluate())
    trainer.save_model(options.output_dir)
    return trainer


if __name__ == "__main__":
    main()
