"""`manyheads validate CONFIG`: build everything but the weights and report every problem at once."""

from __future__ import annotations

import argparse
from typing import Any

from .common import format_table, quiet_libraries

HELP = "Check a config and its data without loading weights; print the task plan or every error."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import ConfigError, ProblemCollector
    from ..recipe.build import plan_table, prepare_data, sharing_problems
    from ..recipe.config import collect_config, read_yaml

    quiet_libraries()
    problems = ProblemCollector()
    raw, config_dir = read_yaml(args.config)
    run_config = collect_config(raw, problems, config_dir, extra, config_path=args.config)
    prepared = None
    if run_config is not None and run_config.tasks:
        # Check the data of the tasks whose config is valid, so data errors are reported too.
        try:
            prepared = prepare_data(run_config, tokenize=False)
        except ConfigError as err:
            problems.extend(err)
    if run_config is not None:
        problems.problems.extend(sharing_problems(run_config))
        from .train import output_dir_problem

        unusable = output_dir_problem(run_config.training["output_dir"])
        if unusable:
            problems.add(unusable)
    if problems.problems:
        raise ConfigError(problems.problems)
    args_ = run_config.training_arguments()
    print(format_table(plan_table(run_config, prepared, args_.per_device_train_batch_size, args_.world_size)))
    print(f"sampling_strategy: {args_.sampling_strategy}"
          + (f" (sampling_temperature {args_.sampling_temperature})" if args_.sampling_strategy == "temperature"
             else ""))
    print(_balancing_line(run_config, args_))
    print(f"config OK: {len(run_config.tasks)} task(s), encoder {run_config.model}")
    return 0


def _balancing_line(run_config: Any, args: Any) -> str:
    from ..balancing import resolve_weighting

    if args.gradient_aggregator is not None:
        size = args.task_group_size or len(run_config.tasks)
        kwargs = f" {args.gradient_aggregator_kwargs}" if args.gradient_aggregator_kwargs else ""
        return (f"gradient_aggregator: {args.gradient_aggregator}{kwargs}, task-group steps of {size} tasks "
                "(one batch of each per step)")
    weights = {entry.name: entry.task.weight for entry in run_config.tasks}
    name, kwargs = resolve_weighting(args.loss_weighting, args.loss_weighting_kwargs, weights)
    return f"loss_weighting: {name}" + (f" {kwargs}" if kwargs else "")
