"""The training `DataLoader` of `MultiTaskTrainer.get_train_dataloader`: the multi-task batch sampler, Trainer's
loader settings, and accelerate's preparation made a passthrough for a sampler that already shards by rank."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch.utils.data import DataLoader, Dataset
from transformers.trainer_utils import seed_worker


def build_train_loader(accelerator: Any, dataset: Dataset, sampler: Any, collate_fn: Any, args: Any) -> DataLoader:
    """`dataset` batched by `sampler` (a rank-aware batch sampler), with the worker and pinning settings of
    `args` (`TrainingArguments`), prepared by `accelerator`."""
    params: dict[str, Any] = {
        "batch_sampler": sampler,
        "collate_fn": collate_fn,
        "num_workers": args.dataloader_num_workers,
        "pin_memory": args.dataloader_pin_memory,
        "persistent_workers": args.dataloader_persistent_workers,
        "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
    }
    if args.dataloader_num_workers > 0:
        params["prefetch_factor"] = args.dataloader_prefetch_factor
    loader = accelerator.prepare(DataLoader(dataset, **params))
    # The sampler already gives each rank its own slice: make accelerate's shard wrapper a passthrough, exactly as
    # Trainer does for its own rank-aware BatchRebalanceSampler.
    # PRIVATE accelerate API: `BatchSamplerShard.num_processes` / `process_index` / `set_epoch` are attributes of an
    # internal class. Upgrade risk: if accelerate renames them, each rank would take a slice of an already-sharded
    # schedule (DDP trains on 1/world of the data) -- tests/test_pins.py checks the attributes on the pinned range
    # and tests/test_ddp.py the data each rank sees.
    shard = getattr(loader, "batch_sampler", None)
    if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
        shard.num_processes, shard.process_index = 1, 0
        # Trainer forwards set_epoch one level down from a resumed loader's SkipBatchSampler, which is this
        # wrapper; without this the epoch would not reach the sampler on a mid-epoch DDP resume.
        shard.set_epoch = sampler.set_epoch
    return loader
