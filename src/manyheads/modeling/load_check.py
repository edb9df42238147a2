"""Strict loading of a saved model folder: which task's weights are missing, unexpected or of the wrong size.

Kept apart from `model.py` so the messages (each names the task and the fix) can be read on their own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError


class ModelLoadError(ConfigError):
    """A saved model folder whose weights do not match its config (see `MultiTaskModel.from_pretrained`)."""


@contextlib.contextmanager
def reading_weights(where: str) -> Iterator[None]:
    """Around `PreTrainedModel.from_pretrained`: a truncated or corrupted weight file is a `ModelLoadError` naming
    `where`, and transformers' own load reports are quiet (the problems are raised by task, from `load_problems`)."""
    # transformers' own load report would print the problems as a table before ours; they are raised below.
    # transformers' tensor-parallel check lists every weight as "not sharded" for a model without a TP plan.
    reports = [logging.getLogger(name) for name in ("transformers.modeling_utils",
                                                    "transformers.distributed.tensor_parallel")]
    levels = [report.level for report in reports]
    for report in reports:
        report.setLevel(logging.ERROR)
    try:
        yield
    except Exception as err:  # safetensors' and torch's errors for truncated or corrupted files
        if type(err).__name__ not in ("SafetensorError", "UnpicklingError", "HeaderTooLarge", "EOFError"):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{where}: the weight file cannot be read ({first}); it is truncated or corrupted. "
                             "Copy the model folder again, or re-save it with save_pretrained.") from None
    finally:
        for report, level in zip(reports, levels):
            report.setLevel(level)


def _by_task(keys: set[str]) -> dict[str, list[str]]:
    """Weight names grouped by the task whose head they belong to ("" for the encoder)."""
    grouped: dict[str, list[str]] = {}
    for key in sorted(keys):
        parts = key.split(".")
        grouped.setdefault(parts[1] if parts[0] == "heads" and len(parts) > 2 else "", []).append(key)
    return grouped


def load_problems(info: dict[str, Any]) -> list[str]:
    """One line per task (or the encoder) whose weights are missing, unexpected or of the wrong size."""
    problems = []
    for task, keys in _by_task(set(info.get("missing_keys") or ())).items():
        what = f"task '{task}' has no weights" if task else "the encoder is missing weights"
        problems.append(f"{what} in the weight file ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); "
                        "its head would be random. Use the folder the model was saved to, unchanged.")
    for task, keys in _by_task(set(info.get("unexpected_keys") or ())).items():
        what = f"task '{task}'" if task else "an encoder of another architecture"
        problems.append(f"the weight file holds weights of {what}, which config.json does not list "
                        f"({', '.join(keys[:3])}); config.json and the weights come from different models.")
    mismatched = {item[0] if isinstance(item, tuple) else item for item in info.get("mismatched_keys") or ()}
    for task, keys in _by_task(mismatched).items():
        what = f"task '{task}''s head" if task else "the encoder"
        problems.append(f"{what} in the weight file has another size than config.json says ({', '.join(keys[:3])}); "
                        "were the labels in config.json edited? Restore config.json or retrain.")
    return problems
