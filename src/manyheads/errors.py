"""Errors raised before anything heavy runs.

`ConfigError` gathers every problem found in a config (and in the data it points at) so that
`manyheads validate` can print all of them at once instead of stopping at the first one.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """One or more problems in a run configuration, each a one-line message.

    Each message names the key (or file / row), the value received, the valid choices and the fix.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
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
