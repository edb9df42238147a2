"""Which task, and which examples, each micro-batch holds.

`MultiTaskBatchSampler` is a pure function of (seed, epoch, rank, world size): no global RNG, no state
but the epoch. At every step all ranks draw the same task (DDP then runs the same head everywhere) and
rank r takes the r-th slice of that step's global batch. Each task reads its examples from an endless
stream of seeded permutations, so a small task that runs out is simply reshuffled and restarted, and a
large task under-sampled by temperature/uniform sampling continues where the previous epoch stopped.
Because the schedule depends only on the epoch, Trainer's own skip-on-resume restores it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .strategies import SamplingStrategy, normalised, resolve_strategy


def task_probabilities(sizes: Sequence[int], strategy: str | SamplingStrategy | Callable,
                       temperature: float = 2.0) -> list[float]:
    """Target share of micro-batches per task (see `manyheads.data.strategies`)."""
    return normalised(resolve_strategy(strategy, temperature), sizes)


def _largest_remainder(probabilities: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to `total` that are as close as possible to probabilities * total."""
    exact = [p * total for p in probabilities]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Batches of indices into the concatenation of the tasks' training sets, one task per batch.

    Args:
        task_sizes: number of training examples per task, in task order.
        batch_size: examples per micro-batch on one rank.
        strategy: a name (`proportional`, `temperature`, `uniform`, `round_robin`), a `SamplingStrategy`, or a
            function from task sizes to probabilities.
        temperature: T of temperature sampling (probability ~ size**(1/T)).
        seed: base seed of task order and example permutations.
        rank, world_size: this process and the number of processes.
        lengths: optional token lengths per task; when given, batches group examples of similar length.
        group_batches: how many optimizer steps' worth of examples form one length-sorted group.
        accumulation: micro-batches per optimizer step (gradient accumulation). Length grouping then keeps the
            micro-batches of one task's step together, as stock `Trainer` groups by its effective batch: a step of
            batch 8 and two accumulated micro-batches of 4 see the same examples.
    """

    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        strategy: str | SamplingStrategy | Callable = "proportional",
        temperature: float = 2.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: dict[str, Sequence[int]] | None = None,
        group_batches: int = 50,
        accumulation: int = 1,
    ):
        if not task_sizes or min(task_sizes.values()) < 1:
            raise ValueError(f"every task needs at least one training example, got sizes {task_sizes}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.names = list(task_sizes)
        self.sizes = [int(task_sizes[n]) for n in self.names]
        self.offsets = np.cumsum([0] + self.sizes[:-1]).tolist()
        self.batch_size = batch_size
        self.strategy = resolve_strategy(strategy, temperature)
        self.probabilities = normalised(self.strategy, self.sizes)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.lengths = lengths
        self.group_batches = group_batches
        self.accumulation = max(1, int(accumulation))
        self.epoch = 0
        global_batch = batch_size * world_size
        # An epoch has as many steps as one proportional pass over every task.
        self.steps_per_epoch = sum(math.ceil(n / global_batch) for n in self.sizes)
        if self.strategy.exhaustive:
            self.counts = [math.ceil(n / global_batch) for n in self.sizes]
        else:
            self.counts = _largest_remainder(self.probabilities, self.steps_per_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def task_order(self, epoch: int) -> list[int]:
        """Task index of every step of `epoch` (identical on every rank)."""
        if self.strategy.cyclic:
            remaining = list(self.counts)
            order = []
            while len(order) < self.steps_per_epoch:
                for i in range(len(remaining)):
                    if remaining[i]:
                        order.append(i)
                        remaining[i] -= 1
            return order
        order = np.repeat(np.arange(len(self.sizes)), self.counts)
        return self._rng(0, epoch).permutation(order).tolist()

    def _stream(self, task: int, start: int, stop: int) -> np.ndarray:
        """Examples [start, stop) of task's endless stream of seeded permutations (local indices)."""
        size = self.sizes[task]
        first, last = start // size, (stop - 1) // size
        cycles = [self._rng(1, task, cycle).permutation(size) for cycle in range(first, last + 1)]
        stream = np.concatenate(cycles)
        return stream[start - first * size: stop - first * size]

    def _task_batches(self, task: int, epoch: int) -> list[np.ndarray]:
        """This epoch's global batches of one task, as indices into the concatenated dataset."""
        global_batch = self.batch_size * self.world_size
        per_epoch = self.counts[task] * global_batch
        if per_epoch == 0:
            return []
        indices = self._stream(task, epoch * per_epoch, (epoch + 1) * per_epoch)
        if self.lengths is not None:
            lengths = np.asarray(self.lengths[self.names[task]])
            group = global_batch * self.accumulation * self.group_batches
            # Sort within groups (not globally) so batches stay random across groups; longest first.
            indices = np.concatenate([
                chunk[np.argsort(-lengths[chunk], kind="stable")]
                for chunk in np.split(indices, range(group, len(indices), group))
            ])
        batches = np.split(indices + self.offsets[task], range(global_batch, len(indices), global_batch))
        if self.lengths is not None:
            # Shuffle whole steps (runs of `accumulation` micro-batches), so accumulation keeps a step's examples.
            acc = self.accumulation
            steps = [batches[i:i + acc] for i in range(0, len(batches), acc)]
            batches = [b for i in self._rng(2, epoch, task).permutation(len(steps)) for b in steps[i]]
        return batches

    def schedule(self, epoch: int) -> list[tuple[str, list[int]]]:
        """(task name, global batch indices for all ranks) for every step of `epoch`."""
        batches = {t: iter(self._task_batches(t, epoch)) for t in range(len(self.sizes))}
        return [(self.names[t], next(batches[t]).tolist()) for t in self.task_order(epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for _, indices in self.schedule(self.epoch):
            yield indices[lo:hi]


class TaskGroupBatchSampler(MultiTaskBatchSampler):
    """Batches for task-group steps (gradient aggregation): each step holds one batch of each of `group_size`
    tasks, concatenated (the collator splits them by task again).

    With all tasks in every group (the default), every task advances one batch per step; with smaller groups,
    the tasks of each step are drawn without replacement by the strategy's probabilities (`round_robin`
    cycles). An epoch holds as many examples as one proportional one-task pass. Same purity as the base
    class: the schedule is a function of (seed, epoch, rank, world size).

    With `lengths`, each task's stream is cut into blocks of `group_batches` global batches; a block is sorted by
    length, cut into batches, and its batches are taken in a seeded random order, so each task's batch of a step
    holds examples of similar length while every example is still seen once per pass of the stream.
    """

    def __init__(self, task_sizes: dict[str, int], batch_size: int, group_size: int | None = None,
                 **kwargs: object):
        super().__init__(task_sizes, batch_size, **kwargs)
        k = len(self.sizes)
        self.group_size = group_size or k
        if not 1 <= self.group_size <= k:
            raise ValueError(f"group_size {self.group_size} must be between 1 and the number of tasks ({k})")
        global_batch = batch_size * self.world_size
        batches = sum(math.ceil(n / global_batch) for n in self.sizes)
        self.steps_per_epoch = max(1, math.ceil(batches / self.group_size))
        # `batch_size` is what one yielded list holds: accelerate's shard wrapper treats a shorter list as the
        # epoch's last, incomplete batch.
        self.task_batch_size = batch_size
        self.batch_size = batch_size * self.group_size

    def groups(self, epoch: int) -> list[list[int]]:
        """The task indices of every step of `epoch`."""
        k, g, steps = len(self.sizes), self.group_size, self.steps_per_epoch
        if g == k:
            return [list(range(k))] * steps
        if self.strategy.cyclic:
            first = epoch * steps
            return [[((first + s) * g + j) % k for j in range(g)] for s in range(steps)]
        rng = self._rng(3, epoch)
        return [sorted(rng.choice(k, size=g, replace=False, p=self.probabilities).tolist()) for _ in range(steps)]

    def schedule(self, epoch: int) -> list[list[tuple[str, list[int]]]]:
        """For every step: (task name, global batch indices for all ranks) of each task in the group."""
        global_batch = self.task_batch_size * self.world_size
        used = np.zeros(len(self.sizes), dtype=np.int64)
        for previous in range(epoch):
            for group in self.groups(previous):
                used[group] += 1
        steps, blocks = [], {}
        for group in self.groups(epoch):
            step = []
            for t in group:
                indices = self._nth_batch(t, int(used[t]), global_batch, blocks) + self.offsets[t]
                used[t] += 1
                step.append((self.names[t], indices.tolist()))
            steps.append(step)
        return steps

    def _nth_batch(self, task: int, n: int, global_batch: int, blocks: dict) -> np.ndarray:
        """The n-th global batch of task's stream (local indices); `blocks` caches the sorted block in use."""
        if self.lengths is None:
            return self._stream(task, n * global_batch, (n + 1) * global_batch)
        acc = self.accumulation
        per_block = self.group_batches * acc
        block, slot = divmod(n, per_block)
        if (task, block) not in blocks:
            size = per_block * global_batch
            chunk = self._stream(task, block * size, (block + 1) * size)
            lengths = np.asarray(self.lengths[self.names[task]])
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            for key in [key for key in blocks if key[0] == task]:  # keep one block per task
                del blocks[key]
            blocks[(task, block)] = (chunk, self._rng(4, task, block).permutation(self.group_batches))
        chunk, order = blocks[(task, block)]
        step, micro = divmod(slot, acc)  # whole steps are shuffled, so accumulation keeps a step's examples
        start = (int(order[step]) * acc + micro) * global_batch
        return chunk[start:start + global_batch]

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.task_batch_size, (self.rank + 1) * self.task_batch_size
        for step in self.schedule(self.epoch):
            yield [i for _, indices in step for i in indices[lo:hi]]
