"""Helpers shared by CLI commands: running one with its exit code, quiet library logging, plain-text tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def run_command(command: Any, args: argparse.Namespace, extra: list[str]) -> int:
    """Run a command module's `run(args, extra)`; bad input is one `error:` line per problem and exit code 2, a
    run stopped early (`RunStopped`) its line and its own exit code."""
    from ..errors import ConfigError, RunStopped

    try:
        return command.run(args, extra)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except RunStopped as err:
        # Every rank of a distributed run stops the same way: one line is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"{err.prefix}: {err}", file=sys.stderr)
        return err.exit_code


def quiet_libraries() -> None:
    """Keep the terminal for progress bars and results, not library chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import datasets
    import transformers

    transformers.logging.set_verbosity_warning()
    datasets.logging.set_verbosity_error()
    # TrainingArguments pins memory by default; on a CPU-only machine torch warns on every loader.
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found.*")


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of dict rows (same keys in each)."""
    if not rows:
        return "(nothing)"
    headers = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_rows(metrics: dict[str, float], tasks: list[str], prefix: str = "eval") -> list[dict[str, Any]]:
    """One row per task with its metrics, from flat `eval_<task>_<metric>` keys. Left out: the runtime and the
    stalled-head flag `constant_predictions` (a 0/1 for `StalledHeadsCallback`, which warns in words itself)."""
    # A key belongs to the longest task name it starts with: with tasks `a` and `a_loss`,
    # `eval_a_loss_accuracy` is a metric of `a_loss`, not a metric `loss_accuracy` of `a`.
    owners: dict[str, dict[str, float]] = {task: {} for task in tasks}
    longest_first = sorted(tasks, key=len, reverse=True)
    for key, value in metrics.items():
        owner = next((t for t in longest_first if key.startswith(f"{prefix}_{t}_")), None)
        if owner is not None:
            owners[owner][key[len(f"{prefix}_{owner}_"):]] = value
    return [{"task": task, **{k: v for k, v in owners[task].items() if k not in ("runtime", "constant_predictions")}}
            for task in tasks]


def model_dir_problem(path: str) -> str | None:
    """Why `path` is not a saved manyheads model folder (for predict, serve, evaluate and export), or None."""
    hint = "give the folder written by 'manyheads train' (or trainer.save_model)"
    if not os.path.exists(path):
        return f"MODEL_DIR: folder not found: {path}; {hint}."
    if not os.path.isdir(path):
        return f"MODEL_DIR: {path} is a file, not a folder; {hint}."
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return f"MODEL_DIR: {path} holds no manyheads model (no config.json); {hint}."
    try:
        with open(config, encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        return f"MODEL_DIR: {config} cannot be read ({err}); {hint}."
    if model_type != "manyheads":
        return (f"MODEL_DIR: {path} holds a {model_type!r} model, not a manyheads one (model_type 'manyheads' in "
                f"config.json); {hint}.")
    return None


THRESHOLD_HELP = ("decision threshold of the multilabel tasks: a number for every label (0.3), 'tuned' (the "
                  "thresholds tuned in training), or label=number pairs (anger=0.3,joy=0.4; repeatable; the "
                  "labels not named keep their threshold)")


def parse_threshold(values: list[str] | None) -> float | dict[str, float] | str | None:
    """`--threshold` values (repeatable) as a threshold setting: a number, "tuned" or {label: number}."""
    if not values:
        return None
    from ..errors import ConfigError

    if len(values) == 1 and "=" not in values[0]:
        text = values[0].strip()
        if text == "tuned":
            return text
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--threshold: got {text!r}; give a number between 0 and 1 (0.3), 'tuned', or "
                              "label=number pairs (anger=0.3,joy=0.4).") from None
    mapping: dict[str, float] = {}
    for pair in (p.strip() for value in values for p in value.split(",") if p.strip()):
        label, sep, number = pair.rpartition("=")
        try:
            if not sep or not label:
                raise ValueError
            mapping[label.strip()] = float(number)
        except ValueError:
            raise ConfigError(f"--threshold: {pair!r} is not label=number; give pairs such as anger=0.3,joy=0.4, "
                              "or one number for every label.") from None
    return mapping


def apply_threshold(tasks: dict[str, Any], threshold: float | dict[str, float] | str, where: str) -> list[str]:
    """Set `threshold` on every multilabel task in `tasks` (a mapping: on the tasks that have each label).
    Returns the names of the tasks changed; raises ConfigError naming `where` on a problem."""
    from ..errors import ConfigError
    from ..tasks import MultiLabel

    multilabel = {name: task for name, task in tasks.items() if isinstance(task, MultiLabel)}
    if not multilabel:
        raise ConfigError(f"{where}: no multilabel task here to take a threshold (tasks: {list(tasks)}).")
    if isinstance(threshold, dict):
        unknown = [k for k in threshold if not any(k in t.label_list for t in multilabel.values())]
        if unknown:
            known = {name: t.label_list for name, t in multilabel.items()}
            raise ConfigError(f"{where}: labels {unknown} are in no multilabel task; their labels: {known}.")
    changed = []
    for name, task in multilabel.items():
        value = {k: v for k, v in threshold.items() if k in task.label_list} if isinstance(threshold, dict) \
            else threshold
        if value == {}:
            continue
        try:
            task.set_threshold(value)
        except ConfigError as err:
            raise ConfigError([f"{where}: {p}" for p in err.problems]) from None
        changed.append(name)
    return changed
