"""Run by tests/test_ddp.py under `torchrun --nproc_per_node 2` (gloo on CPU); not a test module itself.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py JOBS.json
JOBS.json: a list of {"name", "config" (raw config dict), "out", optional "resume" (checkpoint folder)}.
For every job each rank writes `<out>/rank<r>.json` (tasks of every micro-batch, eval sizes, metrics,
best checkpoint); rank 0 also writes `<out>/weights.pt` (final state dict).
"""

import json
import os
import sys

import torch

from manyheads.recipe import build_config, build_trainer
from manyheads.trainer import MultiTaskTrainer


class RecordingTrainer(MultiTaskTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        groups = inputs.get("task_groups")
        self.seen.append(sorted(groups) if groups else inputs["task"])
        return super().training_step(model, inputs, num_items_in_batch)


def run(job: dict) -> None:
    run_config = build_config(job["config"])
    trainer = build_trainer(run_config, trainer_class=RecordingTrainer)
    trainer.seen = []
    eval_sizes = {}
    for name, task in trainer.tasks.items():
        original = task.compute_metrics

        def spy(predictions, labels, dataset, _name=name, _original=original):
            eval_sizes[_name] = len(labels)
            return _original(predictions, labels, dataset)

        task.compute_metrics = spy
    trainer.train(resume_from_checkpoint=job.get("resume"))
    metrics = trainer.evaluate() if trainer.eval_dataset else {}
    rank = trainer.args.process_index
    weighting = {k: v.tolist() for k, v in trainer.weighting.state_dict().items() if isinstance(v, torch.Tensor)}
    checksum = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    record = {"seen": trainer.seen, "eval_sizes": eval_sizes, "metrics": metrics, "weighting": weighting,
              "checksum": checksum, "world_size": trainer.args.world_size, "best": trainer.state.best_model_checkpoint,
              "logs": [e for e in trainer.state.log_history if "loss" in e]}
    with open(os.path.join(job["out"], f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    if trainer.is_world_process_zero():
        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                   os.path.join(job["out"], "weights.pt"))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as handle:
        for job in json.load(handle):
            run(job)
