"""`manyheads evaluate MODEL_DIR CONFIG`: each task's metrics on its eval split, with a saved model."""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from .common import (
    THRESHOLD_HELP,
    apply_threshold,
    format_table,
    metrics_rows,
    model_dir_problem,
    parse_threshold,
    quiet_libraries,
)

HELP = "Evaluate a saved multi-task model on the eval splits declared in a config."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="folder written by 'manyheads train'")
    parser.add_argument("config", help="YAML config that declares the tasks' data")
    parser.add_argument("--output", help="write the metrics to this JSON file")
    parser.add_argument("--split", choices=("eval", "test"), default="eval",
                        help="evaluate on the eval splits (default) or on labelled test splits")
    parser.add_argument("--threshold", action="append", metavar="VALUE",
                        help=f"{THRESHOLD_HELP}. Without it, a 'threshold' written in the config's task is used; "
                             "else the model's own")
    parser.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from transformers import AutoTokenizer

    from ..errors import ConfigError
    from ..modeling.model import MultiTaskModel
    from ..recipe.build import prepare_data
    from ..recipe.config import load_config
    from ..trainer import MultiTaskTrainer

    threshold = parse_threshold(args.threshold)
    quiet_libraries()
    # A missing folder, a file or a plain encoder folder is one line, reported with the config's problems (else
    # from_pretrained fails with "Repo id must be in the form ..." or an AttributeError).
    model_problem = model_dir_problem(args.model_dir)
    try:
        run_config = load_config(args.config, extra)
    except ConfigError as err:
        raise ConfigError(([model_problem] if model_problem else []) + err.problems) from None
    if model_problem:
        raise ConfigError(model_problem)
    try:
        model = MultiTaskModel.from_pretrained(args.model_dir)
    except ConfigError:
        raise  # already names the folder and the fix (strict loading's ModelLoadError)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"MODEL_DIR: could not load the model in {args.model_dir}: {first}. Give the folder "
                          "written by 'manyheads train'.") from None
    missing = [t.name for t in run_config.tasks if t.name not in model.tasks]
    if missing:
        raise ConfigError(f"tasks: {missing} are not in the model at {args.model_dir} (it has {list(model.tasks)}). "
                          "Remove them from the config.")
    # Evaluation-time settings written in the config's tasks win over the saved ones, and --threshold over both.
    for entry in run_config.tasks:
        if "threshold" in entry.given:
            apply_threshold({entry.name: model.tasks[entry.name]}, entry.task.threshold, f"tasks ({entry.name})")
    if threshold is not None:
        apply_threshold({t.name: model.tasks[t.name] for t in run_config.tasks}, threshold, "--threshold")
    run_config.model = args.model_dir
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    # The model's own task objects: labels and scaling as fitted in training, never re-inferred from this data.
    prepared = prepare_data(run_config, tokenizer, tokenized_splits=(args.split,),
                            tasks={t.name: model.tasks[t.name] for t in run_config.tasks})
    datasets = prepared.eval if args.split == "eval" else prepared.test
    if not datasets:
        raise ConfigError(f"tasks: no task has a labelled {args.split} split. Add 'data.{args.split}' to the "
                          "tasks to evaluate.")
    with tempfile.TemporaryDirectory() as scratch:
        run_config.training = {**run_config.training, "output_dir": scratch, "report_to": "none"}
        trainer = MultiTaskTrainer(model=model, args=run_config.training_arguments(), eval_dataset=datasets,
                                   processing_class=tokenizer)
        metrics = trainer.evaluate(metric_key_prefix=args.split)
    print(format_table(metrics_rows(metrics, list(datasets), prefix=args.split)))
    print(f"{args.split}_average: {metrics[f'{args.split}_average']:.4f}")
    output = args.output or os.path.join(args.model_dir, f"{args.split}_results.json")
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    print(f"metrics written to {output}")
    return 0
