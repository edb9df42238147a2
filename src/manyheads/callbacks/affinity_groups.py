"""Which tasks to train together, from a matrix of inter-task affinities (TAG's network selection).

Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning", NeurIPS 2021, section 3.2: a task's
score in a group is the mean affinity onto it from the other members of its group; a grouping's score is the mean
of its tasks' scores. The paper (after Standley et al., 2020) lets groups overlap and serves each task by its best
group; here the groups are a partition (each task trained in exactly one model), which is what a user can train
with `manyheads`. A task alone in its group scores 0: nothing helps it, nothing hurts it (the paper's code gives a
lone task a large negative score in the overlapping setting, where a task always has a better group to go to; in
a partition that would forbid ever training a task alone, even one that every other task hurts).

Search: exact for up to `exhaustive_up_to` tasks (default 10: Bell(10) = 115,975 partitions) by dynamic
programming over subsets (the best split of a set into k groups is a group holding its first task plus the best
split of the rest into k - 1; O(k 3^N), under a second at N = 10). Beyond: greedy agglomeration (start from every
task alone, merge the pair of groups whose merge raises the total most, down to one group), then, for up to
`refine_up_to` groups, single-task moves between groups while any raises the total.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

EXHAUSTIVE_UP_TO = 10
REFINE_UP_TO = 10  # groups; above this, the agglomerative partition as it is


def group_score(matrix: np.ndarray, members: Sequence[int]) -> float:
    """Sum over the group's tasks of the mean affinity onto each from the others (`matrix[i][j]`: i onto j)."""
    if len(members) < 2:
        return 0.0
    block = matrix[np.ix_(members, members)]
    return float((block.sum() - np.trace(block)) / (len(members) - 1))


def recommend_groupings(matrix: Any, tasks: Sequence[str], max_groups: int | None = None,
                        exhaustive_up_to: int = EXHAUSTIVE_UP_TO) -> list[dict[str, Any]]:
    """The best partition of `tasks` into k groups, for k = 1 .. `max_groups` (default: one less than the tasks).

    Args:
        matrix: N x N affinities, `matrix[i][j]` the affinity of task i onto task j (the diagonal is ignored).
        tasks: the N task names, in the matrix's order.
        max_groups: the largest number of groups (models) to recommend.
        exhaustive_up_to: exact search up to this many tasks, greedy beyond (see the module docstring).

    Returns:
        One `{"groups": k, "partition": [[task, ...], ...], "score": mean task score, "exact": bool}` per k; each
        group lists its tasks in `tasks` order, the groups ordered by their first task.
    """
    values = np.nan_to_num(np.asarray(matrix, dtype=np.float64), nan=0.0)
    n = len(tasks)
    if values.shape != (n, n):
        raise ValueError(f"recommend_groupings: matrix of shape {values.shape} for {n} tasks; give an N x N matrix "
                         "in the order of `tasks`")
    if n == 0:
        return []
    top = max(1, min(max_groups if max_groups is not None else n - 1, n))
    exact = n <= exhaustive_up_to
    found = _exact(values, top) if exact else _greedy(values, top)
    return [{"groups": k, "partition": [[tasks[i] for i in group] for group in sorted(groups)],
             "score": round(sum(group_score(values, g) for g in groups) / n, 10), "exact": exact}
            for k, groups in sorted(found.items())]


def _members(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _exact(values: np.ndarray, top: int) -> dict[int, list[list[int]]]:
    """Dynamic programming over subsets: best[k][mask] is the best split of `mask` into k non-empty groups."""
    n = len(values)
    full = (1 << n) - 1
    score = [group_score(values, _members(mask)) for mask in range(full + 1)]
    best: list[dict[int, tuple[float, tuple[int, ...]]]] = [{0: (0.0, ())}]
    for k in range(1, top + 1):
        layer: dict[int, tuple[float, tuple[int, ...]]] = {}
        previous = best[k - 1]
        for mask in range(1, full + 1):
            if bin(mask).count("1") < k:
                continue
            low = mask & -mask
            rest_bits = mask ^ low
            sub = rest_bits
            candidate: tuple[float, tuple[int, ...]] | None = None
            while True:  # every group holding the lowest task of `mask`: low | (a subset of the rest)
                group = low | sub
                left = previous.get(mask ^ group)
                if left is not None:
                    total = score[group] + left[0]
                    if candidate is None or total > candidate[0] + 1e-12:
                        candidate = (total, (group, *left[1]))
                if sub == 0:
                    break
                sub = (sub - 1) & rest_bits
            if candidate is not None:
                layer[mask] = candidate
        best.append(layer)
    return {k: [_members(g) for g in best[k][full][1]] for k in range(1, top + 1)}


def _greedy(values: np.ndarray, top: int) -> dict[int, list[list[int]]]:
    """Agglomerative merging from singletons, each k's partition then refined by single-task moves."""
    n = len(values)
    groups = [[i] for i in range(n)]
    found: dict[int, list[list[int]]] = {}
    diagonal = np.diag(values)
    while True:
        if len(groups) <= top:
            found[len(groups)] = _refine(values, [list(g) for g in groups]) if len(groups) <= REFINE_UP_TO \
                else [list(g) for g in groups]
        if len(groups) == 1:
            return found
        # cross[g, h]: sum of affinities from group g onto group h; inner[g]: within g, diagonal excluded.
        member = np.zeros((len(groups), n))
        for row, group in enumerate(groups):
            member[row, group] = 1.0
        cross = member @ values @ member.T
        sizes = member.sum(axis=1)
        inner = np.diag(cross) - member @ diagonal
        own = np.where(sizes > 1, inner / np.maximum(sizes - 1, 1), 0.0)
        merged = (inner[:, None] + inner[None, :] + cross + cross.T) / (sizes[:, None] + sizes[None, :] - 1)
        gain = merged - own[:, None] - own[None, :]
        np.fill_diagonal(gain, -np.inf)
        a, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        a, b = min(a, b), max(a, b)
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]


def _refine(values: np.ndarray, groups: list[list[int]], passes: int = 5) -> list[list[int]]:
    """Move one task at a time to the group where the total rises most, keeping every group non-empty."""
    for _ in range(passes):
        moved = False
        for task in range(len(values)):
            home = next(g for g, group in enumerate(groups) if task in group)
            if len(groups[home]) == 1:
                continue
            without = [t for t in groups[home] if t != task]
            leave = group_score(values, without) - group_score(values, groups[home])
            gains = [(leave + group_score(values, sorted([*group, task])) - group_score(values, group), g)
                     for g, group in enumerate(groups) if g != home]
            gain, target = max(gains, default=(0.0, home))
            if gain > 1e-12:
                groups[home] = without
                groups[target] = sorted([*groups[target], task])
                moved = True
        if not moved:
            break
    return [sorted(g) for g in groups]
