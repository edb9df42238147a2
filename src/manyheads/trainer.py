"""`MultiTaskTrainer`: the real `transformers.Trainer` with thin overrides of its documented hooks.

```python
trainer = MultiTaskTrainer(model=MultiTaskModel.from_encoder("bert-base-uncased", [Classification(name="sst2"),
                                                                                  Regression(name="stsb")]),
                           args=MultiTaskTrainingArguments(output_dir="out"),
                           train_dataset={"sst2": sst2["train"], "stsb": stsb["train"]},   # raw datasets
                           eval_dataset={"sst2": sst2["validation"], "stsb": stsb["validation"]},
                           processing_class=tokenizer, compute_metrics=my_metrics)
```

- `__init__`: fits each task on its raw training split (labels, class weights, target scaling), builds the
  heads that needed them, and preprocesses raw datasets through their task (see `data/datasets.py`).

- `get_train_dataloader`: one-task micro-batches from `MultiTaskBatchSampler`, through `accelerator.prepare`
  (`data/loader.py`) so Trainer's own skip-on-resume and epoch handling apply.
- `compute_loss`: routes the batch to its task's head (the name travels in the batch) and applies the loss
  weighting (`manyheads.balancing`); records the unweighted per-task loss.
- `training_step`: around `super()` for one-task micro-batches (weighting state, non-finite losses); task-group
  micro-batches of gradient aggregation go to `TaskGroupStep`, which writes the aggregated `.grad`.
- `create_optimizer`: adds a learnable weighting's parameters as their own group; with a user-supplied optimizer
  (`optimizers=(...)`) they get an optimizer of their own instead, since the user's scheduler is already built.
- `create_scheduler`: warns when the warm-up is as long as the run.
- `log`: merges per-task training losses (`loss_<task>`), weights (`weight_<task>`) and gradient statistics,
  gathered across ranks.
- `_save_checkpoint` / `_load_from_checkpoint`: the balancing state travels with each checkpoint, a checkpoint
  is marked complete only once everything is written (`manyheads.training.checkpoints`), and older checkpoints are
  rotated out (`save_total_limit`) only after that.
- `evaluate`: runs Trainer's `evaluation_loop` per task (`manyheads.training.evaluation`) and adds each task's metrics,
  the user's `compute_metrics` results, `eval_<task>_constant_predictions` (read by `StalledHeadsCallback`, added
  by default) and `eval_average`; on the run's own eval split, once the model has trained, each task first fits
  what it fits on its eval predictions (the `FitsOnPredictions` capability: multilabel thresholds).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, PredictionOutput, rotate_checkpoints
from transformers.utils import logging

from .balancing import build_group_step, build_weighting
from .callbacks.best_heads import BestHeadsCallback
from .callbacks.stalled_heads import StalledHeadsCallback
from .data.collator import MultiTaskCollator
from .data.datasets import MultiTaskDataset, as_task_dict, cap_rows, fit_tasks, prepare_split
from .data.loader import build_train_loader
from .data.samplers import MultiTaskBatchSampler, TaskGroupBatchSampler
from .data.strategies import SamplingStrategy, resolve_strategy
from .modeling.decoders import generation_tasks
from .modeling.model_card import render_card, write_card
from .modeling.param_groups import apply_own_rates, head_step_shares
from .tasks import GROUP_COLUMN, TASK_COLUMN
from .tasks.metrics import best_metric_problem, check_metric_functions
from .training.checkpoints import load_balancing, mark_complete, save_balancing
from .training.evaluation import by_task, evaluate_tasks, predict_task
from .training.generation import StepTokens
from .training.step_gate import NonFiniteSteps
from .training.task_losses import TaskLossWindow
from .training_args import as_multitask_arguments

logger = logging.get_logger(__name__)


class MultiTaskTrainer(Trainer):
    """`Trainer` for a `MultiTaskModel`.

    Args:
        model: a `MultiTaskModel`.
        args: `MultiTaskTrainingArguments` (plain `TrainingArguments` get the multi-task defaults).
        train_dataset: `{task name: Dataset}`, raw (the task tokenizes it) or tokenized.
        eval_dataset: `{task name: Dataset}`, likewise.
        compute_metrics: one function for every task, or `{task: function}`; each takes the task's
            `EvalPrediction` (and, if it accepts two arguments, the `Task`) and returns `{name: value}`, logged as
            `eval_<task>_<name>`.
        sampling: a sampling strategy object or a function from task sizes to probabilities (overrides
            `args.sampling_strategy`).
        weighting: a `LossWeighting` instance or class (overrides `args.loss_weighting`).
        aggregator: a torchjd aggregator instance or class (overrides `args.gradient_aggregator`).
        All other arguments are those of `transformers.Trainer`.
    """

    # compute_loss returns a per-micro-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: Any = None, args: TrainingArguments | None = None,
                 train_dataset: dict[str, Any] | None = None, eval_dataset: dict[str, Any] | None = None,
                 compute_metrics: Any = None, sampling: SamplingStrategy | Any = None, weighting: Any = None,
                 aggregator: Any = None, **kwargs: Any):
        args = as_multitask_arguments(args)
        self._prepare_task_state(model)
        train_dataset, eval_dataset = self._prepare_datasets(model, train_dataset, eval_dataset,
                                                             kwargs.get("processing_class"), args)
        self._check_collator(kwargs, args)
        check_metric_functions(compute_metrics, list(self.tasks))
        # Kept apart from Trainer's own `compute_metrics`, which evaluation_loop would call and whose result it
        # would file under the wrong keys: `evaluate` calls it per task instead.
        self.task_metrics = compute_metrics
        train = MultiTaskDataset(train_dataset) if train_dataset else None
        super().__init__(model=model, args=args, train_dataset=train, eval_dataset=eval_dataset, **kwargs)
        problem = best_metric_problem(self.args.metric_for_best_model, list(self.tasks.values()),
                                      user_defined=compute_metrics is not None)
        if problem:
            raise ValueError(problem)
        self.sampling = resolve_strategy(sampling if sampling is not None else self.args.sampling_strategy,
                                         self.args.sampling_temperature)
        self._prepare_balancing(model, weighting, aggregator)
        if not any(isinstance(cb, StalledHeadsCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(StalledHeadsCallback())  # warns when a head stays at its trivial baseline
        if self.args.best_head_per_task:
            self.add_callback(BestHeadsCallback(lambda: self._resumed_from))

    def _prepare_task_state(self, model: Any) -> None:
        if not hasattr(model, "tasks"):
            raise ValueError(f"MultiTaskTrainer needs a MultiTaskModel (with .tasks), got {type(model).__name__}; "
                             "build one with MultiTaskModel.from_encoder(encoder_name_or_path, tasks).")
        self.tasks = model.tasks
        self._task_losses = TaskLossWindow(list(self.tasks))
        self._nonfinite = NonFiniteSteps()  # tasks with a NaN/inf loss this step; skips that step's update
        self.weighting_optimizer: torch.optim.Optimizer | None = None
        self._resumed_from: str | None = None  # the checkpoint train() resumed from, for the weighting's optimizer
        self._step_tokens = StepTokens()  # generation tasks: target tokens of the current optimizer step

    def _prepare_datasets(self, model: Any, train: Any, evaluation: Any, tokenizer: Any,
                          args: Any) -> tuple[Any, Any]:
        """Cap the training splits (`max_train_samples_per_task`), fit the tasks on raw training data, add the heads
        that needed it, tokenize raw datasets."""
        train = as_task_dict(train, "train_dataset", self.tasks)
        seed = args.data_seed if args.data_seed is not None else args.seed
        train = cap_rows(train, args.max_train_samples_per_task, seed)
        evaluation = as_task_dict(evaluation, "eval_dataset", self.tasks)
        fit_tasks(self.tasks, train)
        model.add_missing_heads()
        headless = [name for name in self.tasks
                    if model.head_of(name) not in model.heads and model.task_decoder(name) is None]
        if headless:
            raise ValueError(f"tasks {headless} have no labels yet: declare labels=[...] or give their raw training "
                             "data in train_dataset, from which the labels are fitted.")
        return (prepare_split(self.tasks, train, tokenizer, "train_dataset"),
                prepare_split(self.tasks, evaluation, tokenizer, "eval_dataset"))

    def _check_collator(self, kwargs: dict[str, Any], args: Any) -> None:
        collator = kwargs.get("data_collator")
        if collator is None and kwargs.get("processing_class") is not None:
            kwargs["data_collator"] = MultiTaskCollator(kwargs["processing_class"], self.tasks,
                                                        getattr(args, "pad_to_multiple_of", None))
        elif collator is not None and type(collator).__module__.startswith("transformers."):
            raise ValueError(f"data_collator={type(collator).__name__}: a stock collator cannot batch the task column "
                             "and per-task labels. Leave data_collator out (MultiTaskTrainer pads per task with "
                             "processing_class) or pass a MultiTaskCollator.")

    def _prepare_balancing(self, model: Any, weighting: Any, aggregator: Any) -> None:
        args = self.args
        aggregator = aggregator if aggregator is not None else args.gradient_aggregator
        task_weights = {name: float(task.weight) for name, task in self.tasks.items()}
        self.weighting = build_weighting(weighting if weighting is not None else args.loss_weighting,
                                         args.loss_weighting_kwargs, task_weights, aggregator,
                                         seed=args.seed).to(args.device)
        if hasattr(self.weighting, "bind"):
            self.weighting.bind(model)
        self._last_weights = self.weighting.weights()
        self._weighting_grads_stale = False
        self.group_step = build_group_step(model, args, aggregator)

    # ----- data -----
    def _batch_sampler(self) -> MultiTaskBatchSampler:
        data = self.train_dataset
        common = {
            # PRIVATE: with auto_find_batch_size, Trainer keeps the batch size it found in `_train_batch_size` only
            # (args keep the user's). Risk: a rename makes the sampler ignore the smaller size and run out of memory.
            "batch_size": self._train_batch_size if self.args.auto_find_batch_size else self.args.train_batch_size,
            "strategy": self.sampling,
            "seed": self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            "rank": self.args.process_index,
            "world_size": self.args.world_size,
            "lengths": data.lengths() if self.args.group_by_length else None,
            "accumulation": self.args.gradient_accumulation_steps,
        }
        if self.group_step is not None:
            return TaskGroupBatchSampler(data.sizes, group_size=self.args.task_group_size, **common)
        return MultiTaskBatchSampler(data.sizes, **common)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("MultiTaskTrainer: training requires a train_dataset.")
        return build_train_loader(self.accelerator, self.train_dataset, self._batch_sampler(), self.data_collator,
                                  self.args)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        generating = generation_tasks(self.tasks)
        if generating:
            self._step_tokens.count(batches, generating, self.args.world_size, self._reduce_sum, device)
        return batches, num_items

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Trainer's estimate (6 x tokens x non-embedding parameters), with the parameter count taken once: Trainer
        recounts every parameter of the model at every micro-batch, which grows with the number of heads."""
        model = self.model
        cached = getattr(self, "_flops_params", None)
        if cached is None or cached[0] is not model:
            if not hasattr(model, "num_parameters"):
                return super().floating_point_ops(inputs)
            cached = self._flops_params = (model, model.num_parameters(exclude_embeddings=True))
        main_input = getattr(model, "main_input_name", "input_ids")
        return 6 * inputs[main_input].numel() * cached[1] if main_input in inputs else 0

    # ----- loss -----
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        task = inputs[TASK_COLUMN]
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            self._record_task_loss(task, loss)
            loss = self.weighting(task, self._token_mean(task, loss, inputs))
        return (loss, outputs) if return_outputs else loss

    def _token_mean(self, task: str, loss: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """A generation task's micro-batch loss as its share of the token mean over the whole optimizer step (not a
        mean of micro-batch means); other tasks' losses unchanged."""
        return self._step_tokens.scale(task, loss, batch.get("labels"), self.args.world_size)

    def _record_task_loss(self, task: str, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        if not torch.isfinite(value):
            # Kept out of the logged means and the weighting's history; the step is skipped (see _end_step).
            self._nonfinite.tasks.add(task)
            return
        self._task_losses.add(task, value)
        self.weighting.observe(task, value)

    # ----- gradients -----
    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self._weighting_grads_stale:
            # Trainer zeroes the model's gradients after each step; the weighting's parameters are not in it.
            self.weighting.zero_grad(set_to_none=True)
            self._weighting_grads_stale = False
        if GROUP_COLUMN in inputs:
            if self.group_step is None:
                mixed = list(inputs[GROUP_COLUMN])
                raise ValueError(f"a training micro-batch mixes tasks {mixed}, but MultiTaskTrainer trains one task "
                                 "per micro-batch (no gradient_aggregator is set). Keep its own "
                                 "get_train_dataloader (its sampler draws one task per batch; sampling_strategy "
                                 "sets the mix), or set gradient_aggregator to train several tasks per step.")
            loss = self._task_group_step(model, inputs)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            self._end_step()
        return loss

    def _task_group_step(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """Forward/backward of every task's sub-batch; the rows are aggregated at the step's last micro-batch."""
        model.train()
        module = self.accelerator.unwrap_model(model)
        # PRIVATE: Trainer's `_prepare_inputs` moves the nested task-group batch to the device as it does a flat one.
        # Risk: a rename breaks gradient aggregation loudly (AttributeError), never silently.
        groups = self._prepare_inputs(inputs)[GROUP_COLUMN]
        scale = 1.0 / self.current_gradient_accumulation_steps

        @contextlib.contextmanager
        def context() -> Iterator[None]:
            with self.compute_loss_context_manager(), self.accelerator.autocast():
                yield

        losses = self.group_step.backward(module, groups, scale, context, self._token_mean)
        for task, loss in losses.items():
            self._record_task_loss(task, loss)
        # Trainer logs the mean over micro-batches; a task group counts as one micro-batch of the mean loss.
        return torch.stack(list(losses.values())).float().mean() * scale

    def _end_step(self) -> None:
        """Last micro-batch of an optimizer step: skip it on a non-finite loss, else finish balancing."""
        if self._any_rank(bool(self._nonfinite.tasks)):
            self._skip_step()
            return
        self._nonfinite.streak = 0
        world = self.args.world_size
        if self.group_step is not None:
            stats = self.group_step.step(self._reduce_mean if world > 1 else None, step=self.state.global_step)
            self._last_weights = {k[len("weight_"):]: v for k, v in stats.items() if k.startswith("weight_")}
        else:
            if world > 1:
                for p in self.weighting.parameters():
                    if p.grad is not None:
                        p.grad = self._reduce_mean(p.grad)
            self._last_weights = self.weighting.weights()
            if self.weighting_optimizer is not None:
                self.weighting_optimizer.step()
        self.weighting.step_end(self._reduce_sum)
        self._weighting_grads_stale = True

    def _skip_step(self) -> None:
        self._nonfinite.skip(self.state.global_step + 1, self.args.max_nonfinite_steps)  # raises at the limit
        # Zeros, not None: a GradScaler (fp16) asserts that it saw gradients. The step itself is skipped by the gate.
        self.model.zero_grad(set_to_none=False)
        self._weighting_grads_stale = True
        if self.group_step is not None:
            self.group_step.discard()

    def _any_rank(self, flag: bool) -> bool:
        if self.args.world_size == 1:
            return flag
        return bool(self._reduce_sum(torch.tensor([float(flag)], device=self.args.device)).item() > 0)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.args.world_size == 1:
            return tensor
        return self.accelerator.reduce(tensor, reduction="sum")

    def _reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="mean")

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        user_supplied = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        if not user_supplied:
            model = self.accelerator.unwrap_model(self.model)
            shares = (head_step_shares(self._batch_sampler(), model.head_of)
                      if self.args.head_learning_rate_scaling == "share" and self.train_dataset is not None else None)
            for warning in apply_own_rates(optimizer, model, self.args, shares):
                logger.warning("manyheads: %s", warning)
        params = [p for p in self.weighting.parameters() if p.requires_grad]
        if params and user_supplied:
            # The user's scheduler was built for the user's parameter groups: adding one now breaks it. The
            # weighting's parameters get their own optimizer, stepped with each optimizer step (constant lr).
            self.weighting_optimizer = torch.optim.AdamW(params, lr=self.weighting.param_lr, weight_decay=0.0)
            if self._resumed_from:  # Trainer restores the checkpoint before the optimizers exist
                load_balancing(self._resumed_from, self.weighting, self.weighting_optimizer, self.args.device)
        elif params:
            # Their own group: weight decay would pull log-variances to 0, and the encoder's LR barely moves them.
            optimizer.add_param_group({"params": params, "lr": self.weighting.param_lr, "weight_decay": 0.0})
        return self._nonfinite.gate.wrap_optimizer(optimizer)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        warmup = self.args.get_warmup_steps(num_training_steps)
        if warmup >= num_training_steps > 0:
            logger.warning("manyheads: warmup_steps is %d but the run has %d optimizer steps: the learning rate never "
                           "reaches its set value. Lower warmup_steps (a value below 1 is a fraction of the run).",
                           warmup, num_training_steps)
        # Trainer steps `self.lr_scheduler`, not what this returns: the gated scheduler replaces it there.
        self.lr_scheduler = self._nonfinite.gate.wrap_scheduler(super().create_scheduler(num_training_steps, optimizer))
        return self.lr_scheduler

    # ----- logging -----
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            if self._task_losses:
                logs.update(self._task_losses.pop(self.args.device, self._reduce_sum))
            logs.update({f"weight_{k}": round(v, 6) for k, v in self._last_weights.items()})
            if self.group_step is not None:
                logs.update({k: v for k, v in self.group_step.pop_statistics().items() if not k.startswith("weight_")})
        super().log(logs, start_time)

    # ----- saving -----
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # The model writes its card in save_pretrained, once, with the newest metrics and these arguments.
        self.accelerator.unwrap_model(self.model).card_details = self._card_details()
        super().save_model(output_dir, _internal_call)

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from: str | None = None, **kwargs: Any) -> None:
        """The manyheads model card (every task, its labels and latest metrics) in `output_dir/README.md`; used by
        `push_to_hub` like Trainer's own card. Dataset arguments of the stock signature are accepted and unused."""
        if self.is_world_process_zero():
            self._write_card(self.args.output_dir, language=language, license=license, model_name=model_name,
                             base_model=finetuned_from, extra_tags=[tags] if isinstance(tags, str) else tags or [])

    def _card_details(self, **options: Any) -> dict[str, Any]:
        # The newest evaluation's metrics (one log entry holds every task's, plus eval_average).
        latest = next((entry for entry in reversed(self.state.log_history) if "eval_average" in entry), {})
        # The picks are in the model once training has ended (a checkpoint's card would misname its heads).
        best = next((cb.best for cb in self.callback_handler.callbacks
                     if isinstance(cb, BestHeadsCallback) and not cb.training), None)
        return {"metrics": latest, "training": self.args.to_dict(), "best_heads": best or None, **options}

    def _write_card(self, folder: str, **options: Any) -> None:
        module = self.accelerator.unwrap_model(self.model)
        os.makedirs(folder, exist_ok=True)
        write_card(folder, render_card(module.tasks, module.config.encoder, **self._card_details(**options)))

    # ----- checkpoints -----
    # PRIVATE TRAINER API (checked against the pinned transformers range by tests/test_pins.py):
    # - `_save_checkpoint(model, trial)` / `_load_from_checkpoint(path, model)`: Trainer has no public hook between
    #   "checkpoint written" and "old checkpoints rotated". Upgrade risk: a rename or a new signature means the
    #   balancing state is silently neither saved nor restored.
    # - `args.save_total_limit` set to None around super()'s save: relies on Trainer reading it when it rotates.
    #   Risk: rotation before the completeness marker exists (a kill then leaves no complete checkpoint).
    # - `_get_output_dir(trial)`: the run folder Trainer just wrote into. Risk: the wrong folder is marked complete.
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Trainer rotates (deletes old checkpoints) at the end of its own save, before the balancing state and the
        # completeness marker exist: a kill right then would leave no complete checkpoint. Rotation is held back
        # (limit None makes Trainer's rotation a no-op) and done here once the new checkpoint is complete.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            save_balancing(folder, self.weighting, self.weighting_optimizer)
        # Every rank has written its part (RNG states) before the folder is declared complete.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(folder)
            rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._resumed_from = resume_from_checkpoint
        if load_balancing(resume_from_checkpoint, self.weighting, self.weighting_optimizer, self.args.device):
            self._last_weights = self.weighting.weights()

    # ----- evaluation -----
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate every task on its own set with its own metrics, plus `<prefix>_average` and `<prefix>_loss`."""
        override = eval_dataset is not None
        datasets = eval_dataset if override else self.eval_dataset
        if datasets is None:
            raise ValueError("MultiTaskTrainer: evaluation requires an eval_dataset.")
        metrics = evaluate_tasks(self, by_task(datasets), override, ignore_keys, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        """One task's split (its rows carry the task name, or `{task: dataset}` with one entry): its predictions,
        labels and metrics as `evaluate` reports them (`test_<task>_<metric>`, `test_<task>_loss`)."""
        return predict_task(self, test_dataset, ignore_keys, metric_key_prefix)

