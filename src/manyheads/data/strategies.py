"""Sampling strategies: the share of micro-batches each task gets. One class per strategy, one registry.

A strategy maps the tasks' training-set sizes to probabilities. `proportional` also visits every example once
per epoch; `round_robin` serves the tasks in a fixed cycle instead of a seeded shuffle. A user's strategy is a
`SamplingStrategy` subclass or instance, or any callable from sizes to probabilities (wrapped in
`CallableStrategy`):

```python
trainer = MultiTaskTrainer(..., sampling=lambda sizes: [s ** 0.75 for s in sizes])   # normalised for you
```
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..importing import import_object


class SamplingStrategy:
    """Base class. `probabilities(sizes)` returns one non-negative weight per task (normalised by the caller)."""

    # One pass over every example per epoch (each task gets exactly ceil(size / global batch) steps).
    exhaustive: bool = False
    # Tasks in a fixed cycle rather than a seeded shuffle.
    cyclic: bool = False

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


class Proportional(SamplingStrategy):
    """Tasks in proportion to their size; every example once per epoch."""

    exhaustive = True

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        return [float(n) for n in sizes]


class Temperature(SamplingStrategy):
    """Probability proportional to size**(1/T) (T=1 is proportional, large T tends to uniform; Arivazhagan et
    al. 2019)."""

    def __init__(self, temperature: float = 2.0):
        if not temperature > 0:
            raise ValueError(f"'temperature' is {temperature}; it must be > 0 (1 = proportional)")
        self.temperature = float(temperature)

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        return [float(n) ** (1.0 / self.temperature) for n in sizes]


class Uniform(SamplingStrategy):
    """Every task equally often."""

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        return [1.0] * len(sizes)


class RoundRobin(Uniform):
    """Every task equally often, in a fixed cycle."""

    cyclic = True


class CallableStrategy(SamplingStrategy):
    """A user's function from task sizes to (unnormalised) probabilities."""

    def __init__(self, function: Callable[[Sequence[int]], Sequence[float]]):
        self.function = function

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        return [float(p) for p in self.function(list(sizes))]

    def __repr__(self) -> str:
        return f"CallableStrategy({getattr(self.function, '__name__', self.function)!r})"


SAMPLING_STRATEGIES: dict[str, type[SamplingStrategy]] = {
    "proportional": Proportional,
    "temperature": Temperature,
    "uniform": Uniform,
    "round_robin": RoundRobin,
}


def resolve_strategy(strategy: str | SamplingStrategy | type | Callable, temperature: float = 2.0) -> SamplingStrategy:
    """A strategy from a registry name, an import path, a class, an instance or a callable.

    Raises:
        ValueError: naming the value, the valid names and the fix.
    """
    if isinstance(strategy, SamplingStrategy):
        return strategy
    if isinstance(strategy, str):
        if strategy in SAMPLING_STRATEGIES:
            cls = SAMPLING_STRATEGIES[strategy]
            return cls(temperature) if cls is Temperature else cls()
        try:
            strategy = import_object(strategy)
        except (ImportError, AttributeError):
            raise ValueError(f"'sampling_strategy' is {strategy!r}; valid choices: {', '.join(SAMPLING_STRATEGIES)}, "
                             "or the import path of a SamplingStrategy subclass or function") from None
    if isinstance(strategy, type) and issubclass(strategy, SamplingStrategy):
        return strategy()
    if callable(strategy):
        return CallableStrategy(strategy)
    raise ValueError(f"sampling strategy {strategy!r}: give a name ({', '.join(SAMPLING_STRATEGIES)}), a "
                     "SamplingStrategy, or a function from task sizes to probabilities")


def normalised(strategy: SamplingStrategy, sizes: Sequence[int]) -> list[float]:
    """The strategy's probabilities, checked and summing to 1."""
    weights = strategy.probabilities(sizes)
    if len(weights) != len(sizes) or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"sampling strategy {strategy!r} returned {weights} for task sizes {list(sizes)}; it must "
                         "return one finite, non-negative number per task, not all zero")
    total = sum(weights)
    return [w / total for w in weights]
