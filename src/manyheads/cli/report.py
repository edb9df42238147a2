"""`manyheads report RUN_DIR`: an offline HTML report (index.html + PNG figures) of a training run."""

from __future__ import annotations

import argparse

HELP = "Write RUN_DIR/report/index.html with figures of a run's losses, metrics, weights and diagnostics."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run's output_dir (trainer_state.json there or in a checkpoint-N/), or the "
                        "output_dir of manyheads compare (compare.json)")
    parser.add_argument("--output", help="folder of the report (default: RUN_DIR/report)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..report import build_report, stalled_lines

    index = build_report(args.run_dir, args.output)
    lines = stalled_lines(args.run_dir)
    if len(lines) > 3:  # many tasks: one line naming them, the reasons and fixes are on the page
        names = ", ".join(line.split("'")[1] for line in lines)
        print(f"warning: {len(lines)} tasks look stalled: {names}; their reasons and likely fixes are in the report.")
    else:
        for line in lines:
            print(f"warning: {line}")
    print(f"report written to {index}")
    return 0
