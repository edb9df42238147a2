"""Per-task metric routing lives in each task type; this module holds what is shared across tasks."""

from __future__ import annotations


def aggregate_score(main_scores: dict[str, tuple[float, bool]]) -> float:
    """Mean of each task's main metric, negated where lower is better (so higher is always better).

    Args:
        main_scores: `{task: (value, greater_is_better)}`.
    """
    if not main_scores:
        return float("nan")
    signed = [value if greater else -value for value, greater in main_scores.values()]
    return float(sum(signed) / len(signed))
