"""Errors raised before anything heavy runs, and the ways a run can stop early.

`ConfigError` gathers every problem found in a config (and in the data it points at) so that
`manyheads validate` can print all of them at once instead of stopping at the first one.
`RunStopped` ends a run that has started (preemption, non-finite losses) with its own exit code.

Exit codes of `manyheads`: 0 done; 2 bad input (`ConfigError`), nothing written; 3 too many consecutive
non-finite losses; 143 preempted by SIGTERM, with a complete checkpoint to resume from.
"""

from __future__ import annotations

import reprlib
from typing import Any

# Values shown in messages are cut short: a cell of a whole book, or a YAML value built from nested aliases
# (a few hundred bytes that expand to gigabytes), must not become the message.
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 80, 80, 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxdict = 6


def shown(value: Any) -> str:
    """`repr(value)`, bounded in length and depth, for error messages."""
    return _SHORT.repr(value)


def _bounded(message: str, limit: int = 2000) -> str:
    """A backstop: no single problem line is longer than `limit` characters."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


class ConfigError(ValueError):
    """One or more problems in a run configuration, each a one-line message.

    Each message names the key (or file / row), the value received, the valid choices and the fix.
    """

    def __init__(self, problems: list[str] | str, where: str | None = None):
        # `details`: the messages themselves; `problems`: each prefixed with `where` (what the user built).
        self.details = [_bounded(p) for p in ([problems] if isinstance(problems, str) else problems)]
        self.problems = [f"{where}: {p}" for p in self.details] if where else list(self.details)
        super().__init__("\n".join(self.problems))


class ProblemCollector:
    """Collects problems and raises them together, so that every error is reported in one go."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, message: str) -> None:
        self.problems.append(message)

    def extend(self, error: ConfigError) -> None:
        self.problems.extend(error.problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


class RunStopped(Exception):
    """A run that stopped before its end for a reason the user acts on; `manyheads` prints the one-line
    message as `<prefix>: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int, prefix: str = "error"):
        self.exit_code = exit_code
        self.prefix = prefix
        super().__init__(message)
