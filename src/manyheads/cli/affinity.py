"""`manyheads affinity CONFIG [--every K] [--key value ...]`: which tasks to train together (TAG).

Trains the recipe's multi-task run as `manyheads train` would, with a `TaskAffinityCallback` measuring the lookahead
inter-task affinity every K steps (Fifty et al., NeurIPS 2021), then prints the mean matrix and the best split of
the tasks into 1 .. N-1 groups. It writes `diagnostics/affinity.jsonl`, `diagnostics/affinity.json` and
`trainer_state.json` (so `manyheads report` shows the heatmap); the model itself is not saved: this run is a
measurement, the groups it recommends are trained with `manyheads train`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import format_table, quiet_libraries

HELP = "Measure task affinity (TAG) during a multi-task run and recommend task groupings."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (the same as for manyheads train)")
    parser.add_argument("--every", type=int, default=None,
                        help="optimizer steps between measurements (default: from the number of tasks, so that "
                             "the measurements cost about a quarter of the run)")
    parser.add_argument("--start", type=int, default=None, help="first step measured (default: --every)")
    parser.add_argument("--measurements", type=int, default=None, help="stop measuring after this many")
    parser.add_argument("--probe_batch_size", type=int, default=16, help="probe rows per task (default 16)")
    parser.add_argument("--overwrite", action="store_true", help="measure into an output_dir that holds another run")
    parser.set_defaults(accepts_overrides=True)
    parser.epilog = ("Any MultiTaskTrainingArguments field, --model, --data_dir or --max_length can follow and "
                     "overrides the config: --max_steps 500")


def matrix_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task i: its affinity onto each task j (a step on i, the change in j's loss)."""
    tasks = summary["tasks"]
    return [{"from \\ onto": a, **{b: "-" if a == b or v is None else f"{v:+.3g}" for b, v in zip(tasks, row)}}
            for a, row in zip(tasks, summary["matrix"])]


def grouping_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for option in summary["groupings"]:
        groups = " | ".join("{" + ", ".join(group) + "}" for group in option["partition"])
        search = "" if option["exact"] else " (greedy search)"
        lines.append(f"{option['groups']} group(s): {groups}  score {option['score']:+.3g}{search}")
    return lines


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import contextlib

    from ..callbacks import TaskAffinityCallback, attach_callbacks
    from ..callbacks.affinity import affinity_problem
    from ..errors import ConfigError
    from ..recipe.build import build_trainer, prepare_data, sharing_problems
    from ..recipe.config import load_config
    from ..training.output_lock import OutputLock
    from .train import _main_rank, check_output_dir

    quiet_libraries()
    run_config = load_config(args.config, extra)
    problems = [f"--{key}: got {value}; give an integer >= 1" for key, value in
                (("every", args.every), ("start", args.start), ("measurements", args.measurements),
                 ("probe_batch_size", args.probe_batch_size)) if value is not None and value < 1]
    if run_config.sharing.mode == "lora":
        problems.append("sharing: 'lora' shares no parameter between tasks, so they have no affinity to measure. "
                        "Run manyheads affinity with sharing: hard or hybrid.")
    if problems:
        raise ConfigError(problems)
    output_dir = run_config.training_arguments().output_dir
    check_output_dir(output_dir, None, args.overwrite)
    prepared = prepare_data(run_config, tokenize=False)
    if sharing_problems(run_config):
        raise ConfigError(sharing_problems(run_config))
    callback = TaskAffinityCallback(every=args.every, start=args.start, measurements=args.measurements,
                                    probe_batch_size=args.probe_batch_size)
    with OutputLock(output_dir) if _main_rank() else contextlib.nullcontext():
        trainer = build_trainer(run_config, prepared)
        problem = affinity_problem(trainer.model)
        if problem:
            raise ConfigError(problem)
        attach_callbacks(trainer, [callback])
        trainer.train()
        trainer.save_state()  # the log history, for manyheads report
        if not trainer.is_world_process_zero():
            return 0
        summary = callback.write_summary(trainer.args)
    if summary is None:
        print(f"no affinity measured: training ended (step {trainer.state.global_step}) before step "
              f"{callback.start}. Give a larger --max_steps or a smaller --every / --start.")
        return 1  # nothing measured: a script chaining `compare --groups affinity.json:K` must not go on
    print(f"task affinity (TAG), mean of {summary['measurements']} measurement(s) at steps "
          f"{summary['steps'][0]}..{summary['steps'][-1]}: the relative drop of the column task's loss after a "
          "step on the row task alone (positive: it helps)")
    print(format_table(matrix_rows(summary)))
    print("recommended groupings (mean affinity onto each task from its group):")
    for line in grouping_lines(summary):
        print(f"  {line}")
    print(f"written to {callback.folder(trainer.args)}")
    return 0
