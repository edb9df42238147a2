"""The model card (`README.md` with Hugging Face Hub metadata) saved beside every manyheads model.

It says what a user of the folder needs: the tasks (type, input columns, labels, main metric), the shared
encoder, each task's evaluation metrics when known, the training settings, a licence field and how to use the
model. The YAML header follows the Hub's model-card metadata (`library_name`, `license`, `base_model`, `tags`,
`model-index` with one result per task and metric), so the Hub shows the metrics when the folder is pushed
(`push_to_hub` goes through the stock `Trainer.push_to_hub`, which calls `create_model_card`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import yaml

from ..tasks import main_metric_of

CARD_FILE = "README.md"
# Hub pipeline tags of the task types (a user's own type without an entry gets none).
_HUB_TASKS = {"classification": "text-classification", "multilabel": "text-classification",
              "regression": "text-classification", "token_classification": "token-classification",
              "question_answering": "question-answering"}
# Settings of the training arguments worth showing; the whole set is in training_args.bin.
_TRAINING_KEYS = ("learning_rate", "head_learning_rate", "head_learning_rate_scaling", "adapter_learning_rate",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
                  "warmup_steps", "weight_decay", "seed", "bf16", "fp16", "sampling_strategy", "sampling_temperature",
                  "group_by_length", "loss_weighting", "gradient_aggregator", "best_head_per_task")


def _hub_id(name: str | None) -> str | None:
    """A Hub repository id ("org/name"), not a local folder."""
    if not name or os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1:
        return None
    return name


def task_metrics(metrics: dict[str, Any], task: str, prefix: str = "eval") -> dict[str, float]:
    """`{metric: value}` of one task from flat `eval_<task>_<metric>` keys (runtime counters and the stalled-head
    flag `constant_predictions` of `manyheads.callbacks.stalled_heads` left out)."""
    head = f"{prefix}_{task}_"
    return {key[len(head):]: float(value) for key, value in metrics.items()
            if key.startswith(head) and isinstance(value, (int, float))
            and not key.endswith(("_runtime", "_per_second", "_constant_predictions"))}


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def _table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_card(tasks: dict[str, Any], encoder: dict[str, Any], metrics: dict[str, Any] | None = None,
                training: dict[str, Any] | None = None, model_name: str | None = None, license: str | None = None,
                base_model: str | None = None, language: str | list[str] | None = None,
                extra_tags: Iterable[str] = (), best_heads: dict[str, dict[str, Any]] | None = None) -> str:
    """The card's text.

    Args:
        tasks: the model's task objects by name (`MultiTaskModel.tasks`).
        encoder: the encoder's config as a dict (`MultiTaskConfig.encoder`).
        metrics: flat evaluation metrics (`eval_<task>_<metric>`, `eval_average`), when known.
        training: training arguments as a dict (`args.to_dict()`), when known.
        license: the licence field (default "other": say which when you publish).
        best_heads: `best_head_per_task`'s picks (head -> step, metric, value, tasks), named in the card.
    """
    metrics = metrics or {}
    base_model = base_model or _hub_id(encoder.get("_name_or_path"))
    name = model_name or "manyheads multi-task model"
    results = []
    for task_name, task in tasks.items():
        values = task_metrics(metrics, task_name)
        if values:
            hub_task = {"name": task_name, **({"type": _HUB_TASKS[task.type]} if task.type in _HUB_TASKS else {})}
            results.append({"task": hub_task, "metrics": [{"type": k, "value": round(v, 6), "name": f"{task_name} {k}"}
                                                         for k, v in values.items()]})
    header: dict[str, Any] = {"library_name": "manyheads", "license": license or "other"}
    if base_model:
        header["base_model"] = base_model
    if language:
        header["language"] = language
    header["tags"] = ["manyheads", "multi-task", *sorted({_HUB_TASKS.get(t.type, t.type) for t in tasks.values()}),
                      *extra_tags]
    if results:
        header["model-index"] = [{"name": name, "results": results}]
    encoder_name = base_model or encoder.get("model_type", "an encoder")
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---",
        f"# {name}",
        f"One shared {encoder.get('model_type', '')} encoder (`{encoder_name}`, hidden size "
        f"{encoder.get('hidden_size', encoder.get('d_model', '?'))}, {encoder.get('num_hidden_layers', '?')} layers) "
        f"with {_heads_text(tasks)}, trained together with manyheads: "
        "every task is predicted from one encoder pass.",
        "## Tasks",
        _table(["task", "type", "input", "labels", "main metric", "head"],
               [[n, t.type, " + ".join(t.text), _labels(t), main_metric_of(t), t.head or n] for n, t in tasks.items()]),
    ]
    if metrics:
        names = sorted({m for n in tasks for m in task_metrics(metrics, n)})
        parts += ["## Evaluation", _table(["task", *names], [[n, *[task_metrics(metrics, n).get(m, "") for m in names]]
                                                              for n in tasks])]
        if "eval_average" in metrics:
            parts.append(f"`eval_average` (mean of each task's main metric, negated where lower is better): "
                         f"{float(metrics['eval_average']):.4f}")
    else:
        parts += ["## Evaluation", "No evaluation results were recorded with this model."]
    if best_heads:
        parts += ["## Heads from their best evaluation",
                  "Trained with `best_head_per_task`: each head was put back from the evaluation where its main metric "
                  "was best; the shared encoder is the last step's (or the best checkpoint's under "
                  "`load_best_model_at_end`). An evaluation logged before training ended scored the model before "
                  "the heads were put back.",
                  _table(["head", "tasks", "step", "metric", "value there"],
                         [[head, ", ".join(e["tasks"]), e["step"], e["metric"], float(e["value"])]
                          for head, e in best_heads.items()])]
    if training:
        shown = {k: training[k] for k in _TRAINING_KEYS if training.get(k) not in (None, False, -1, 0.0)}
        parts += ["## Training", "```json\n" + json.dumps(shown, indent=2, default=str) + "\n```"]
    example = json.dumps({field: "..." for t in tasks.values() for field in t.text})
    parts += ["## Usage", "```python\nfrom manyheads import MultiTaskPredictor\n\n"
              f"predictor = MultiTaskPredictor(\"path/to/this/folder\")\npredictor.predict([{example}])\n```",
              "```bash\nmanyheads predict path/to/this/folder --input rows.jsonl --output predictions.jsonl\n```"]
    return "\n\n".join(parts) + "\n"


def _heads_text(tasks: dict[str, Any]) -> str:
    """"5 task heads", or, with datasets that share heads, "3 heads for 5 tasks (datasets sharing a head: ...)"."""
    heads = len({t.head or n for n, t in tasks.items()})
    if heads == len(tasks):
        return f"{len(tasks)} task heads"
    return (f"{heads} heads for {len(tasks)} tasks (tasks with the same `head` are datasets of one task: they train "
            "one head, and predictions come as that head's name)")


def _labels(task: Any) -> str:
    labels = task.label_list
    if not labels:
        return "-"
    return ", ".join(labels[:12]) + (f", ... ({len(labels)})" if len(labels) > 12 else "")


def write_card(folder: str | os.PathLike, text: str) -> str:
    path = os.path.join(folder, CARD_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
