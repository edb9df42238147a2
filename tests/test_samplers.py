"""The batch sampler, tested without a model: proportions, restarts, ranks, seeds, resume purity."""

from collections import Counter

import numpy as np
import pytest

from manyheads.data.samplers import MultiTaskBatchSampler, TaskGroupBatchSampler, task_probabilities

SIZES = {"big": 400, "mid": 100, "small": 12}
OFFSETS = {"big": (0, 400), "mid": (400, 500), "small": (500, 512)}


def owner(index: int) -> str:
    return next(n for n, (lo, hi) in OFFSETS.items() if lo <= index < hi)


def test_probabilities_follow_the_definitions():
    sizes = [400, 100, 12]
    assert task_probabilities(sizes, "proportional") == pytest.approx([400 / 512, 100 / 512, 12 / 512])
    root = np.sqrt(sizes)
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx(list(root / root.sum()))
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx(task_probabilities(sizes, "proportional"))
    assert task_probabilities(sizes, "uniform") == pytest.approx([1 / 3] * 3)
    # Large T tends to uniform.
    assert task_probabilities(sizes, "temperature", 1000.0) == pytest.approx([1 / 3] * 3, abs=2e-3)


@pytest.mark.parametrize("strategy,temperature", [("proportional", 1.0), ("temperature", 2.0),
                                                  ("temperature", 5.0), ("uniform", 1.0), ("round_robin", 1.0)])
def test_task_shares_converge_to_targets(strategy, temperature):
    sampler = MultiTaskBatchSampler(SIZES, batch_size=4, strategy=strategy, temperature=temperature, seed=3)
    counts = Counter()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        counts.update(owner(batch[0]) for batch in sampler)
    total = sum(counts.values())
    targets = task_probabilities(list(SIZES.values()), "uniform" if strategy == "round_robin" else strategy,
                                 temperature)
    for name, target in zip(SIZES, targets):
        assert counts[name] / total == pytest.approx(target, abs=1.5 / len(sampler))


def test_every_batch_holds_one_task_and_small_tasks_restart():
    sampler = MultiTaskBatchSampler(SIZES, batch_size=4, strategy="uniform", seed=0)
    seen = Counter()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 4
            assert len({owner(i) for i in batch}) == 1
            seen.update(i for i in batch if owner(i) == "small")
    # Uniform sampling asks the 12-example task for ~43 batches per epoch: it is reshuffled, never exhausted.
    assert set(seen) == set(range(500, 512))
    assert min(seen.values()) > 10


def test_proportional_epoch_is_one_pass_over_every_task():
    sizes = {"a": 32, "b": 16}
    sampler = MultiTaskBatchSampler(sizes, batch_size=8, strategy="proportional", seed=1)
    indices = [i for batch in sampler for i in batch]
    assert sorted(indices) == list(range(48))


def test_large_task_continues_across_epochs_without_repeats():
    sizes = {"big": 64, "small": 8}
    sampler = MultiTaskBatchSampler(sizes, batch_size=4, strategy="uniform", seed=1)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen += [i for batch in sampler for i in batch if i < 64]
    # 18 steps/epoch, 9 per task -> 36 big examples per epoch; 72 > 64 so exactly one restart over 2 epochs.
    assert sorted(seen[:64]) == list(range(64))


def test_schedules_identical_across_ranks_and_slices_disjoint():
    world = 3
    samplers = [MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", seed=5, rank=r,
                                      world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1
    for step in zip(*per_rank):
        assert len({owner(batch[0]) for batch in step}) == 1  # same head on every rank
        flat = [i for batch in step for i in batch]
        assert len(flat) == len(set(flat)) or owner(flat[0]) == "small"


def test_pure_function_of_seed_and_epoch():
    a = MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", seed=11)
    b = MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", seed=11)
    c = MultiTaskBatchSampler(SIZES, batch_size=4, strategy="temperature", seed=12)
    a.set_epoch(1)
    first = list(a)
    a.set_epoch(0)
    list(a)
    a.set_epoch(1)
    assert list(a) == first  # no hidden state: replaying an epoch gives the same batches
    b.set_epoch(1)
    assert list(b) == first
    c.set_epoch(1)
    assert list(c) != first
    a.set_epoch(2)
    assert list(a) != first


def test_round_robin_cycles_tasks_in_order():
    sampler = MultiTaskBatchSampler({"a": 40, "b": 40, "c": 40}, batch_size=4, strategy="round_robin")
    names = ["abc"[batch[0] // 40] for batch in sampler]
    assert "".join(names[:9]) == "abcabcabc"


def test_length_grouping_puts_similar_lengths_together():
    rng = np.random.default_rng(0)
    lengths = {"a": rng.integers(5, 100, 400).tolist()}
    grouped = MultiTaskBatchSampler({"a": 400}, batch_size=8, seed=0, lengths=lengths)
    plain = MultiTaskBatchSampler({"a": 400}, batch_size=8, seed=0)

    def mean_spread(sampler):
        return np.mean([np.ptp([lengths["a"][i] for i in batch]) for batch in sampler])

    assert mean_spread(grouped) < mean_spread(plain) / 3
    assert sorted(i for batch in grouped for i in batch) == list(range(400))


def test_task_group_steps_group_lengths_and_still_see_every_example():
    """Length grouping (on by default) serves gradient-aggregation steps too: each task's batch of a step holds
    similar lengths, and one pass over a task's stream still sees each of its examples once."""
    rng = np.random.default_rng(1)
    lengths = {"a": rng.integers(5, 100, 160).tolist(), "b": rng.integers(5, 100, 160).tolist()}
    grouped = TaskGroupBatchSampler({"a": 160, "b": 160}, batch_size=8, seed=2, lengths=lengths, group_batches=10)
    plain = TaskGroupBatchSampler({"a": 160, "b": 160}, batch_size=8, seed=2)

    def spreads(sampler):
        return [np.ptp([lengths[name][i - 160 * (name == "b")] for i in batch])
                for step in sampler.schedule(0) for name, batch in step]

    assert np.mean(spreads(grouped)) < np.mean(spreads(plain)) / 3
    steps = grouped.schedule(0)
    assert len(steps) == 20  # 40 batches of 8, two tasks per step
    for name, offset in (("a", 0), ("b", 160)):
        seen = sorted(i - offset for step in steps for task, batch in step if task == name for i in batch)
        assert seen == list(range(160))
    assert steps == TaskGroupBatchSampler({"a": 160, "b": 160}, batch_size=8, seed=2, lengths=lengths,
                                          group_batches=10).schedule(0)  # a pure function of the epoch


@pytest.mark.parametrize("group", [False, True], ids=["one-task-steps", "task-group-steps"])
def test_grouped_batch_8_is_two_accumulated_batches_of_4(group):
    """As stock Trainer groups lengths by its effective batch: with accumulation 2, the two micro-batches of 4 of
    a step hold exactly the examples of the grouped batch of 8 (one task: with several, one-task steps of an
    accumulation may come from different tasks by design)."""
    rng = np.random.default_rng(3)
    sizes = {"a": 96, "b": 64} if group else {"a": 96}
    lengths = {name: rng.integers(5, 100, n).tolist() for name, n in sizes.items()}
    cls = TaskGroupBatchSampler if group else MultiTaskBatchSampler
    big = cls(sizes, batch_size=8, seed=4, lengths=lengths, group_batches=4)
    small = cls(sizes, batch_size=4, seed=4, lengths=lengths, group_batches=4, accumulation=2)
    if group:
        big_steps = [[sorted(batch) for _, batch in step] for step in big.schedule(0)]
        small_steps = small.schedule(0)
        merged = [[sorted(a + b) for (_, a), (_, b) in zip(x, y)]
                  for x, y in zip(small_steps[::2], small_steps[1::2])]
    else:
        big_steps = [sorted(batch) for batch in big]
        small_batches = list(small)
        merged = [sorted(a + b) for a, b in zip(small_batches[::2], small_batches[1::2])]
    assert merged == big_steps and len(big_steps) > 4


def test_rejects_empty_task():
    with pytest.raises(ValueError, match="at least one training example"):
        MultiTaskBatchSampler({"a": 10, "b": 0}, batch_size=2)
