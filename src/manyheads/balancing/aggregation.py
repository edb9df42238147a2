"""Gradient aggregators: how the tasks' gradients on the shared encoder become one update.

The maths is torchjd's (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"), an optional
dependency: `pip install "manyheads[balancing]"`. Each entry below is one aggregator; all of them are
`WeightedAggregator`s, so the update is `weights @ J` for the K x n matrix J of task gradients, and the weights
are what manyheads logs as `weight_<task>`.

| name     | method                                                                        |
|----------|-------------------------------------------------------------------------------|
| upgrad   | Quinton & Rey 2024: project each gradient onto the dual cone of all of them   |
| mgda     | Désidéri 2012; Sener & Koltun 2018: min-norm point of the convex hull          |
| pcgrad   | Yu et al. 2020, "Gradient Surgery": drop each conflicting component          |
| cagrad   | Liu et al. 2021, "Conflict-Averse Gradient Descent" (kwarg c, default 0.5)    |
| imtl_g   | Liu et al. 2021, "Towards Impartial Multi-task Learning", gradient part      |
| nash_mtl | Navon et al. 2022, "Multi-Task Learning as a Bargaining Game" (needs cvxpy)   |
| mean     | the average of the task gradients: the control                              |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..importing import import_object


def _torchjd() -> Any:
    try:
        import torchjd.aggregation as aggregation
    except ImportError as err:
        raise ImportError(
            "gradient aggregation needs the torchjd library: pip install \"manyheads[balancing]\" "
            f"(or pip install \"torchjd[full]\"); import failed with: {err}"
        ) from None
    return aggregation


# name -> (torchjd class name, constructor taking the task count and the config kwargs)
AGGREGATORS: dict[str, Callable[..., Any]] = {
    "upgrad": lambda n_tasks, **kw: _torchjd().UPGrad(**kw),
    "mgda": lambda n_tasks, **kw: _torchjd().MGDA(**kw),
    "pcgrad": lambda n_tasks, **kw: _torchjd().PCGrad(**kw),
    "cagrad": lambda n_tasks, c=0.5, **kw: _torchjd().CAGrad(c=c, **kw),
    "imtl_g": lambda n_tasks, **kw: _torchjd().IMTLG(**kw),
    "nash_mtl": lambda n_tasks, **kw: _torchjd().NashMTL(n_tasks=n_tasks, **kw),
    "mean": lambda n_tasks, **kw: _torchjd().Mean(**kw),
}
_CLASSES = {"upgrad": "UPGrad", "mgda": "MGDA", "pcgrad": "PCGrad", "cagrad": "CAGrad", "imtl_g": "IMTLG",
            "nash_mtl": "NashMTL", "mean": "Mean"}


def aggregator_options(name: str) -> list[str]:
    """Keyword arguments the aggregator accepts (for error messages)."""
    cls = getattr(_torchjd(), _CLASSES[name])
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n_tasks")]


def build_aggregator(name: Any, n_tasks: int, kwargs: dict[str, Any] | None = None) -> Any:
    """A torchjd aggregator from a registry name, an import path, a class (called with the kwargs) or an instance
    (any torchjd `WeightedAggregator`, used as it is); unknown kwargs raise ValueError naming the valid ones."""
    kwargs = dict(kwargs or {})
    if not isinstance(name, str):
        return name(**kwargs) if isinstance(name, type) else name
    if name not in AGGREGATORS:
        try:
            return import_object(name)(**kwargs)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"'aggregator' is {name!r}; valid choices: {', '.join(AGGREGATORS)}, or the import path "
                             f"of an aggregator class ({err})") from None
    try:
        return AGGREGATORS[name](n_tasks, **kwargs)
    except TypeError as err:
        raise ValueError(f"aggregator '{name}' rejected aggregator_kwargs {kwargs}: {err}. "
                         f"Valid kwargs: {', '.join(aggregator_options(name)) or 'none'}") from None
