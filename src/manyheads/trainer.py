"""`MultiTaskTrainer`: the real `transformers.Trainer` with thin overrides of its documented hooks.

- `get_train_dataloader`: one-task micro-batches from `MultiTaskBatchSampler`, through `accelerator.prepare`
  so Trainer's own skip-on-resume and epoch handling apply.
- `compute_loss`: routes the batch to its task's head (the name travels in the batch) and applies the
  task's static loss weight; records the unweighted per-task loss.
- `log`: merges per-task training losses (`loss_<task>`), gathered across ranks.
- `evaluate`: runs Trainer's `evaluation_loop` per task and adds each task's metrics and `eval_average`.
"""

from __future__ import annotations

import bisect
import time
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers import Trainer
from transformers.trainer_utils import seed_worker

from .config import SamplingConfig, valid_metric_names
from .data.collator import MultiTaskCollator
from .data.samplers import MultiTaskBatchSampler
from .metrics import aggregate_score
from .tasks.base import TASK_COLUMN


class MultiTaskDataset(TorchDataset):
    """The tasks' tokenized training sets side by side; index i maps to (task, row) by offsets.

    Kept as a view rather than `concatenate_datasets`, because task types have different label features.
    """

    def __init__(self, datasets: dict[str, Any]):
        self.datasets = dict(datasets)
        self.names = list(self.datasets)
        self.sizes = {name: len(ds) for name, ds in self.datasets.items()}
        self.offsets = np.cumsum([0] + [self.sizes[n] for n in self.names]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[self.names[task]][index - self.offsets[task]]

    def lengths(self) -> dict[str, list[int]]:
        return {name: [len(ids) for ids in ds["input_ids"]] for name, ds in self.datasets.items()}


class MultiTaskTrainer(Trainer):
    """`Trainer` for a `MultiTaskModel`.

    Args:
        train_dataset: tokenized training set per task (`{name: Dataset}`), each row carrying its task name.
        eval_dataset: tokenized evaluation set per task.
        sampling: which task each micro-batch comes from (`SamplingConfig`).
        pad_to_multiple_of: passed to the default collator.
        All other arguments are those of `transformers.Trainer`.
    """

    # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: Any = None, args: Any = None, train_dataset: dict[str, Any] | None = None,
                 eval_dataset: dict[str, Any] | None = None, sampling: SamplingConfig | None = None,
                 pad_to_multiple_of: int | None = None, **kwargs: Any):
        self.sampling = sampling or SamplingConfig()
        self._prepare_task_state(model)
        if kwargs.get("data_collator") is None and kwargs.get("processing_class") is not None:
            kwargs["data_collator"] = MultiTaskCollator(kwargs["processing_class"], self.tasks, pad_to_multiple_of)
        train = MultiTaskDataset(train_dataset) if train_dataset else None
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=eval_dataset, **kwargs)
        self._check_metric_for_best_model()

    def _prepare_task_state(self, model: Any) -> None:
        if not hasattr(model, "tasks"):
            raise ValueError(f"MultiTaskTrainer needs a MultiTaskModel (with .tasks), got {type(model).__name__}; "
                             "build one with MultiTaskModel.from_encoder(...) or manyheads.build.build_model.")
        self.tasks = model.tasks
        self.task_weights = {name: float(task.config.weight) for name, task in self.tasks.items()}
        self._task_loss_sums: dict[str, torch.Tensor] = {}
        self._task_loss_counts: dict[str, int] = {}

    def _check_metric_for_best_model(self) -> None:
        metric = self.args.metric_for_best_model
        if metric is None:
            return
        valid = valid_metric_names([task.config for task in self.tasks.values()])
        name = metric[len("eval_"):] if metric.startswith("eval_") else metric
        if name not in valid:
            raise ValueError(
                f"metric_for_best_model={metric!r} names no metric of this run; valid: "
                f"{', '.join(sorted('eval_' + v for v in valid))}."
            )

    # ----- data -----
    def _batch_sampler(self) -> MultiTaskBatchSampler:
        data = self.train_dataset
        return MultiTaskBatchSampler(
            data.sizes,
            batch_size=self._train_batch_size,
            strategy=self.sampling.strategy,
            temperature=self.sampling.temperature,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
            lengths=data.lengths() if self.sampling.group_by_length else None,
        )

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("MultiTaskTrainer: training requires a train_dataset.")
        sampler = self._batch_sampler()
        params: dict[str, Any] = {
            "batch_sampler": sampler,
            "collate_fn": self.data_collator,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory,
            "persistent_workers": self.args.dataloader_persistent_workers,
            "worker_init_fn": partial(seed_worker, num_workers=self.args.dataloader_num_workers,
                                      rank=self.args.process_index),
        }
        if self.args.dataloader_num_workers > 0:
            params["prefetch_factor"] = self.args.dataloader_prefetch_factor
        loader = self.accelerator.prepare(DataLoader(self.train_dataset, **params))
        # The sampler already gives each rank its own slice: make accelerate's shard wrapper a passthrough,
        # exactly as Trainer does for its own rank-aware BatchRebalanceSampler.
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes, shard.process_index = 1, 0
        return loader

    # ----- loss -----
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        task = inputs[TASK_COLUMN]
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            self._task_loss_sums[task] = self._task_loss_sums.get(task, 0.0) + loss.detach().float()
            self._task_loss_counts[task] = self._task_loss_counts.get(task, 0) + 1
            loss = loss * self.task_weights[task]
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._task_loss_counts:
            logs.update(self._pop_task_losses())
        super().log(logs, start_time)

    def _pop_task_losses(self) -> dict[str, float]:
        """Mean unweighted loss per task since the last log, summed over ranks before dividing."""
        names = list(self.tasks)
        device = self.args.device
        sums = torch.stack([torch.as_tensor(self._task_loss_sums.get(n, 0.0), device=device).float()
                            for n in names])
        counts = torch.tensor([self._task_loss_counts.get(n, 0) for n in names], device=device, dtype=torch.float)
        if self.args.world_size > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._task_loss_sums, self._task_loss_counts = {}, {}
        return {f"loss_{n}": round(float(s / c), 4) for n, s, c in zip(names, sums.tolist(), counts.tolist()) if c}

    # ----- evaluation -----
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate every task on its own set with its own metrics, plus `<prefix>_average` and `<prefix>_loss`."""
        override = eval_dataset is not None
        datasets = eval_dataset if override else self.eval_dataset
        if datasets is None:
            raise ValueError("MultiTaskTrainer: evaluation requires an eval_dataset.")
        if not isinstance(datasets, dict):
            datasets = {datasets[0][TASK_COLUMN]: datasets}
        start = time.time()
        metrics: dict[str, float] = {}
        main_scores, losses = {}, []
        for name, dataset in datasets.items():
            task = self.tasks[name]
            loader = self.get_eval_dataloader(dataset if override else name)
            output = self.evaluation_loop(loader, description=f"Evaluation {name}", prediction_loss_only=False,
                                          ignore_keys=ignore_keys, metric_key_prefix=f"{metric_key_prefix}_{name}")
            scores = task.compute_metrics(output.predictions, output.label_ids, dataset)
            metrics.update({f"{metric_key_prefix}_{name}_{k}": v for k, v in scores.items()})
            loss_key = f"{metric_key_prefix}_{name}_loss"
            if loss_key in output.metrics:
                metrics[loss_key] = output.metrics[loss_key]
                losses.append(output.metrics[loss_key])
            main_scores[name] = (scores[task.main_metric], task.greater_is_better(task.main_metric))
        metrics[f"{metric_key_prefix}_average"] = aggregate_score(main_scores)
        if losses:
            metrics[f"{metric_key_prefix}_loss"] = float(np.mean(losses))
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
