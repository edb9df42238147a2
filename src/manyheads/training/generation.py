"""What `MultiTaskTrainer` does for generation tasks (`seq2seq`): token-normalised losses, and generated evaluation.

Token normalisation. A generation micro-batch's loss is a mean over its target tokens; a plain mean of
micro-batch means would weigh a short-target micro-batch like a long one, so "batch 8" and "batch 4 x
accumulation 2" would differ. Before each optimizer step, Trainer collects the step's micro-batches
(`get_batch_samples`); `StepTokens.count` sums each generation task's target tokens over them (and over DDP
ranks). Each micro-batch's loss is then rescaled (`StepTokens.scale`) so that the task's n micro-batches in the
step contribute n x (sum of token losses / tokens of the step): the task keeps the weight n/accumulation that any
one-task micro-batch gets, and within it every token counts once.

Evaluation generates with the task's `generate()` options, decodes predictions and references with the
tokenizer, and reports generated tokens per second; `max_eval_samples` limits the generated rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..modeling.decoders import TaskDecoder
from ..tasks import GROUP_COLUMN, LABEL_COLUMN, TASK_COLUMN


class StepTokens:
    """Target tokens of each generation task in the current optimizer step, summed over ranks."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[float, int]] = {}  # task -> (target tokens on all ranks, micro-batches here)

    def count(self, batches: list[dict[str, Any]], generating: set[str], world_size: int,
              reduce_sum: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        names = sorted(generating)
        # Summed on the batches' device and read back once per step: no host sync per micro-batch.
        totals = torch.zeros(len(names), dtype=torch.float64, device=device)
        micro = dict.fromkeys(names, 0)
        # A task-group micro-batch (gradient aggregation) holds one sub-batch per task.
        subs = (sub for batch in batches
                for sub in (batch[GROUP_COLUMN].values() if GROUP_COLUMN in batch else [batch]))
        for batch in subs:
            task = batch.get(TASK_COLUMN)
            if task in micro and LABEL_COLUMN in batch:
                totals[names.index(task)] += (batch[LABEL_COLUMN] != -100).sum().to(device)
                micro[task] += 1
        if world_size > 1:  # every rank draws the same tasks, so every rank reduces the same tensor
            totals = reduce_sum(totals)
        self.counts = {name: (total, micro[name]) for name, total in zip(names, totals.tolist())}

    def scale(self, task: str, loss: torch.Tensor, labels: torch.Tensor, world_size: int) -> torch.Tensor:
        """`loss` (this micro-batch's token mean) as its share of the task's token mean over the step."""
        if task not in self.counts:
            return loss
        total, micro = self.counts[task]
        here = (labels != -100).sum()
        return loss * here * (micro * world_size / max(total, 1.0))


@torch.inference_mode()
def generate_split(trainer: Any, decoder: TaskDecoder, loader: Any) -> tuple[list[str], list[str], dict[str, float]]:
    """Generated and reference texts of `decoder`'s task over `loader` (gathered over ranks, duplicates of the
    last batch dropped), and the generation cost: `generated_tokens_per_second`, `generated_tokens`."""
    module = trainer.accelerator.unwrap_model(trainer.model)
    name = decoder.task.name
    tokenizer = trainer.processing_class
    if tokenizer is None:
        raise ValueError(f"task '{name}' generates text: evaluation decodes it with the tokenizer; pass "
                         "processing_class=tokenizer to MultiTaskTrainer.")
    limit = decoder.max_eval_samples
    was_training = module.training
    module.eval()
    predictions: list[str] = []
    references: list[str] = []
    generated, seconds = 0, 0.0
    pad = decoder.pad_token_id
    try:
        for batch in loader:
            if limit is not None and len(predictions) >= limit:
                break
            # PRIVATE: Trainer's `_prepare_inputs` (device placement as in its own evaluation). Risk: a rename fails
            # generated evaluation loudly (AttributeError); tests/test_pins.py checks it on the pinned range.
            batch = trainer._prepare_inputs(batch)
            start = time.perf_counter()
            sequences = module.generate_task(name, batch["input_ids"], batch.get("attention_mask"),
                                             batch.get("token_type_ids"))
            seconds += time.perf_counter() - start
            new = sequences[:, 1:]  # the decoder start token is not generated
            generated += int((new != pad).sum())
            labels = batch[LABEL_COLUMN].masked_fill(batch[LABEL_COLUMN] == -100, pad)
            # Gathered batch by batch, as Trainer's evaluation loop does: only while the loader is on its last
            # batch does accelerate know which rows of it are padding duplicates of the ranks' shards (gathering
            # the whole list after the loop kept them: 32 generated rows for a 23-row split on 2 ranks).
            gather = trainer.accelerator.gather_for_metrics
            predictions += gather(decoder.decode(new, tokenizer), use_gather_object=True)
            references += gather(decoder.decode(labels, tokenizer), use_gather_object=True)
    finally:
        module.train(was_training)
    if limit is not None:
        predictions, references = predictions[:limit], references[:limit]
    cost = {"generated_tokens": float(generated),
            "generated_tokens_per_second": generated / seconds if seconds > 0 else 0.0}
    return predictions, references, cost
