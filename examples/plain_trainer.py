"""A plain single-task `transformers.Trainer` script: SST-2 sentiment. examples/python_api.py is this script
turned multi-task with manyheads (diff the two files to see what changes).

    python examples/plain_trainer.py --data_dir ../shared/data --model sentence-transformers/all-MiniLM-L6-v2
"""

import argparse

import numpy as np
from datasets import load_dataset
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)


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
    sst2 = {split: ds.map(lambda batch: tokenizer(batch["sentence"], truncation=True), batched=True)
            for split, ds in sst2.items()}
    model = AutoModelForSequenceClassification.from_pretrained(options.model, num_labels=2)
    args = TrainingArguments(
        output_dir=options.output_dir,
        max_steps=options.max_steps,
        per_device_train_batch_size=16,
        learning_rate=5e-5,
        eval_strategy="steps",
        eval_steps=options.max_steps // 3,
        save_steps=options.max_steps // 3,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        report_to="none",
    )
    trainer = Trainer(model=model, args=args, train_dataset=sst2["train"], eval_dataset=sst2["validation"],
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=compute_metrics)
    trainer.train()
    print(trainer.evaluate())
    trainer.save_model(options.output_dir)
    return trainer


if __name__ == "__main__":
    main()
