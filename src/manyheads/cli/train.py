"""`manyheads train CONFIG [--key value ...]`: train, evaluate each task, save one model folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .common import format_table, metrics_rows, quiet_libraries

HELP = "Train a multi-task model from a YAML config (flags override config fields)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from a checkpoint folder, or the latest one in output_dir")
    parser.set_defaults(accepts_overrides=True)
    parser.epilog = "Any TrainingArguments field or top-level key can follow: --max_steps 20 --data_dir data/"


def default_output_dir(config_path: str) -> str:
    return os.path.join("runs", Path(config_path).stem)


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """`latest` -> newest complete checkpoint in output_dir; a folder as given; None when not resuming."""
    if resume is None:
        return None
    if resume != "latest":
        return resume
    from ..checkpoints import latest_complete_checkpoint

    return latest_complete_checkpoint(output_dir)


def train_and_report(run: Any, resume: str | None = None) -> tuple[Any, dict[str, float]]:
    """Train `run`, save the model to its output_dir, evaluate and print per-task metrics."""
    from ..build import build_trainer, prepare_data

    prepared = prepare_data(run)
    trainer = build_trainer(run, prepared)
    output_dir = trainer.args.output_dir
    trainer.train(resume_from_checkpoint=resolve_resume(resume, output_dir))
    trainer.save_model(output_dir)
    metrics: dict[str, float] = {}
    if prepared.eval:
        metrics = trainer.evaluate()
        print(format_table(metrics_rows(metrics, list(prepared.eval))))
        print(f"eval_average: {metrics['eval_average']:.4f}")
        if trainer.is_world_process_zero():
            with open(os.path.join(output_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
                json.dump(metrics, handle, indent=2)
    print(f"model saved to {output_dir}")
    return trainer, metrics


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..config import load_config

    quiet_libraries()
    run_config = load_config(args.config, extra)
    run_config.training.setdefault("output_dir", default_output_dir(args.config))
    train_and_report(run_config, args.resume)
    return 0
