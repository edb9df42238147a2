"""`MultiTaskTrainingArguments`: `TrainingArguments` plus the multi-task options, each a field with a help text.

Being fields of the arguments, they are saved in `training_args.bin`, shown by `args.to_dict()` and sent to the
trackers' config panels with everything else. Per-method options are `name + kwargs`, as
`lr_scheduler_type` + `lr_scheduler_kwargs` are. Objects that are not names (a weighting instance, a sampling
function) are passed to `MultiTaskTrainer` instead, as `optimizers=` is for the optimizer.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from . import hardware
from .balancing import AGGREGATORS, WEIGHTINGS, check_choice, choice_problems
from .data.strategies import SAMPLING_STRATEGIES

HEAD_RATE_SCALINGS = ("none", "share")  # how the heads' rate is set: one for all, or per share of steps

logger = logging.getLogger(__name__)

# TrainingArguments names of earlier transformers versions (or tutorials) -> what to write instead.
RENAMED_ARGUMENTS = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "warmup_ratio": "warmup_steps (a value below 1 is a fraction of the run in transformers 5)",
    "logging_dir": "the TENSORBOARD_LOGGING_DIR environment variable (transformers 5 logs to <output_dir>/runs/ "
                   "by default)",
    "overwrite_output_dir": "--overwrite on the manyheads train command line (transformers 5 removed the field)",
    "fp16_backend": "half_precision_backend",
    "push_to_hub_token": "hub_token",
}


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` for `MultiTaskTrainer`; every field of `TrainingArguments` works as usual."""

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "loss_weighting_kwargs", "gradient_aggregator_kwargs"]

    sampling_strategy: str = field(default="proportional", metadata={
        "help": "Which task each micro-batch comes from: proportional (every example once per epoch), temperature "
                "(probability ~ size**(1/T)), uniform, round_robin, or the import path of your own "
                "SamplingStrategy. A function or instance goes to MultiTaskTrainer(sampling=...)."})
    sampling_temperature: float = field(default=2.0, metadata={
        "help": "T of temperature sampling: 1 is proportional, large values tend to uniform."})
    group_by_length: bool = field(default=True, metadata={
        "help": "Batch examples of similar length together within each task (less padding; 2-2.7x the samples/s "
                "of random batches on GLUE-like data). Training only: evaluation keeps the dataset's order. False "
                "gives random batches."})
    loss_weighting: str | None = field(default=None, metadata={
        "help": f"Loss weighting per one-task micro-batch: {', '.join(WEIGHTINGS)}, or the import path of a "
                "LossWeighting subclass. Default: static when a task sets a weight, else equal."})
    loss_weighting_kwargs: dict | str | None = field(default_factory=dict, metadata={
        "help": "Constructor arguments of the loss weighting, e.g. {\"lr\": 0.01} for uncertainty."})
    gradient_aggregator: str | None = field(default=None, metadata={
        "help": f"Gradient aggregation over task-group steps: {', '.join(AGGREGATORS)} (torchjd), or the import "
                "path of an aggregator class. Replaces the loss weighting."})
    gradient_aggregator_kwargs: dict | str | None = field(default_factory=dict, metadata={
        "help": "Constructor arguments of the gradient aggregator, e.g. {\"c\": 0.4} for cagrad."})
    task_group_size: int | None = field(default=None, metadata={
        "help": "Tasks per task-group step of a gradient aggregator (default: all tasks)."})
    max_nonfinite_steps: int = field(default=3, metadata={
        "help": "Consecutive optimizer steps with a NaN/inf loss that are skipped before the run stops."})
    adapter_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the task adapters (sharing 'lora' / 'hybrid'); default: learning_rate. LoRA "
                "usually wants ~10x the full fine-tuning rate (e.g. 5e-4 next to 3e-5 for the shared encoder)."})
    head_learning_rate: float | None = field(default=None, metadata={
        "help": "Learning rate of the task heads (the fresh layers on the encoder); default: learning_rate. A "
                "higher rate (e.g. 10x) lets a fresh head catch up with a pretrained encoder in short runs."})
    head_learning_rate_scaling: str = field(default="share", metadata={
        "help": "'share' (default): each head's rate (head_learning_rate, else learning_rate) is divided by the "
                "head's share of the training steps, so a head trained on 1/5 of the steps gets 5x and a single task "
                "1x: a head is updated only on its own task's steps while the encoder moves on every step (measured: "
                "at 13 tasks it lifted NER, POS and chunk heads by 15-38 points). 'none': one rate for every head."})
    max_train_samples_per_task: int | None = field(default=None, metadata={
        "help": "At most this many training rows per task: a larger task's training split is cut to a seeded random "
                "subset (data_seed, else seed; the same rows in every run) before fitting and tokenization, so the "
                "cut also saves preprocessing time. Evaluation splits are never cut. Default: every row."})
    best_head_per_task: bool = field(default=False, metadata={
        "help": "After training, each task's head (and its own adapter) is the one from the evaluation where that "
                "task's main metric was best, the encoder the last step's (the best checkpoint's with "
                "load_best_model_at_end); best_heads.json in output_dir names the step of each. Needs evaluations "
                "during training (eval_strategy steps or epoch)."})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "Round each micro-batch's padded length up to a multiple of this (8 helps tensor cores)."})

    def __post_init__(self) -> None:
        for key in ("loss_weighting_kwargs", "gradient_aggregator_kwargs"):
            value = getattr(self, key)
            if isinstance(value, str):
                setattr(self, key, json.loads(value) if value.strip() else {})
            elif value is None:
                setattr(self, key, {})
        self._check_multitask()
        self._resolve_precision()
        if self.fp16 and (self.use_cpu or not hardware.has_fp16_device()):
            raise ValueError("fp16=True needs a CUDA (or XPU) device and none is available here, so training would "
                             "silently run in fp32. Use bf16=True for mixed precision on this machine, or remove fp16.")
        super().__post_init__()

    def _resolve_precision(self) -> None:
        """`bf16="auto"` picks bf16 where it is the faster precision (`manyheads.hardware.bf16_is_fast`). bf16 on a
        machine without a GPU means CPU autocast: `use_cpu` is set, which `TrainingArguments` demands there and
        which changes nothing else on such a machine."""
        if isinstance(self.bf16, str) and self.bf16.strip().lower() == "auto":
            self.bf16 = hardware.bf16_is_fast()
        if (self.bf16 or self.bf16_full_eval) and not self.use_cpu and not hardware.has_accelerator():
            self.use_cpu = True
            if not hardware.cpu_has_bf16_matrix_units():
                logger.warning("bf16=True on a CPU without AMX bf16 matrix units: autocast usually runs slower than "
                               "fp32 there. Use bf16='auto' to pick the faster precision.")

    def _check_multitask(self) -> None:
        check_choice("sampling_strategy", self.sampling_strategy, SAMPLING_STRATEGIES)
        if self.head_learning_rate_scaling not in HEAD_RATE_SCALINGS:
            raise ValueError(f"'head_learning_rate_scaling' is {self.head_learning_rate_scaling!r}; valid choices: "
                             f"{', '.join(HEAD_RATE_SCALINGS)} ('share': each head's rate over its share of steps)")
        problems = choice_problems(self.loss_weighting, self.gradient_aggregator, self.task_group_size)
        if problems:
            raise ValueError("; ".join(problems))
        if not self.sampling_temperature > 0:
            raise ValueError(f"'sampling_temperature' is {self.sampling_temperature}; it must be > 0 "
                             "(1 = proportional)")
        if self.train_sampling_strategy == "group_by_length":
            # manyheads groups lengths in its own sampler. Left as it is, Trainer's evaluation sampler would group
            # eval rows by length too, and predictions would no longer come in the dataset's order (which question
            # answering's answer extraction relies on).
            self.group_by_length, self.train_sampling_strategy = True, "random"
        elif self.train_sampling_strategy not in ("random", None):
            raise ValueError(f"'train_sampling_strategy' is {self.train_sampling_strategy!r}; manyheads samples one "
                             "task per micro-batch itself. Use sampling_strategy (and group_by_length) instead.")
        for key in ("adapter_learning_rate", "head_learning_rate"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"'{key}' is {value}; give a learning rate > 0, or leave it unset to use "
                                 "learning_rate.")
        cap = self.max_train_samples_per_task
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"'max_train_samples_per_task' is {cap!r}; give a whole number of rows >= 1, or leave "
                             "it unset to train on every row.")
        if self.best_head_per_task and str(getattr(self.eval_strategy, "value", self.eval_strategy)) == "no":
            raise ValueError("'best_head_per_task' is True but 'eval_strategy' is 'no': the best head of each task is "
                             "picked at evaluations during training. Set eval_strategy to 'steps' or 'epoch' (with "
                             "an eval_dataset), or best_head_per_task to False.")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"'max_nonfinite_steps' is {self.max_nonfinite_steps}; it must be >= 1")


def _named_replacements(init: Any) -> Any:
    """Wrap the dataclass `__init__` so that a field of an earlier transformers version (as tutorials write it)
    raises a TypeError naming its replacement, as the recipe does, instead of a bare 'unexpected keyword'."""
    @functools.wraps(init)
    def __init__(self: MultiTaskTrainingArguments, *args: Any, **kwargs: Any) -> None:
        old = [key for key in kwargs if key in RENAMED_ARGUMENTS]
        if old:
            raise TypeError("; ".join(f"MultiTaskTrainingArguments: '{key}' no longer exists in transformers 5, use "
                                      f"{RENAMED_ARGUMENTS[key]} instead" for key in old))
        init(self, *args, **kwargs)
    return __init__


MultiTaskTrainingArguments.__init__ = _named_replacements(MultiTaskTrainingArguments.__init__)


def as_multitask_arguments(args: TrainingArguments | None) -> MultiTaskTrainingArguments | None:
    """Plain `TrainingArguments` (a script being ported) become `MultiTaskTrainingArguments` with the multi-task
    defaults; `MultiTaskTrainingArguments` pass through."""
    if args is None or isinstance(args, MultiTaskTrainingArguments):
        return args
    fields = {name: getattr(args, name) for name, f in TrainingArguments.__dataclass_fields__.items()
              if f.init and hasattr(args, name)}
    return MultiTaskTrainingArguments(**fields)
