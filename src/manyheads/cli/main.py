"""`manyheads` command line: one module per command, registered in `COMMANDS`."""

from __future__ import annotations

import argparse
import sys

from . import affinity, compare, demo, env, evaluate, export, predict, report, serve, train, validate
from .common import run_command

# Each command module has `add_arguments(parser)`, `run(args, extra) -> int` and a one-line `HELP`.
COMMANDS = {
    "train": train,
    "compare": compare,
    "evaluate": evaluate,
    "predict": predict,
    "export": export,
    "validate": validate,
    "demo": demo,
    "env": env,
    "report": report,
    "serve": serve,
    "affinity": affinity,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manyheads", description="Multi-task learning on Hugging Face Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Only `train`, `affinity`, `compare`, `evaluate` and `validate` take free `--key value` overrides of the config.
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run_command(COMMANDS[args.command], args, extra)

if __name__ == "__main__":
    sys.exit(main())
