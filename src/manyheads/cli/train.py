"""`manyheads train CONFIG [--key value ...]`: train, evaluate each task, save one model folder.

Everything that can be checked is checked before anything is written: the config, the data, the encoder
folder, and the output folder (which must not hold another run unless `--resume` or `--overwrite` says what
to do with it). Exit codes: 0 done; 2 bad input, nothing written; 3 too many consecutive non-finite losses
(the last checkpoint is intact); 4 disk full while saving (the last complete checkpoint is intact); 143
preempted by SIGTERM, with a complete checkpoint to resume from (`manyheads.training.preemption`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import sys
import warnings
from typing import Any

from .common import format_table, metrics_rows, quiet_libraries

# A save ran out of disk space (ENOSPC / EDQUOT); earlier complete checkpoints are left as they were.
DISK_FULL_EXIT_CODE = 4
HELP = "Train a multi-task model from a YAML config (flags override config fields)."
# Files that only a run writes: an output folder holding one of them (or a checkpoint) holds another run.
RUN_FILES = ("trainer_state.json", "config.json", "model.safetensors", "model.safetensors.index.json",
             "pytorch_model.bin", "pytorch_model.bin.index.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from a checkpoint folder, or (alone) the newest complete one in output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into an output_dir that holds another run; its checkpoint-* folders are "
                             "deleted once the config and data are checked")
    parser.set_defaults(accepts_overrides=True)
    parser.epilog = ("Any MultiTaskTrainingArguments field, --model, --data_dir or --max_length can follow and "
                     "overrides the config: --max_steps 20 --data_dir data/")


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """`latest` -> newest complete checkpoint in output_dir (None when there is none); a folder as given;
    None when not resuming."""
    if resume is None:
        return None
    if resume != "latest":
        return resume
    from ..training.checkpoints import latest_complete_checkpoint

    return latest_complete_checkpoint(output_dir)


def previous_run(output_dir: str) -> list[str]:
    """What in `output_dir` was written by a run (checkpoint folders, trainer state, model files)."""
    from ..training.checkpoints import checkpoints

    if not os.path.isdir(output_dir):
        return []
    found = [os.path.basename(c) for c in checkpoints(output_dir)]
    return found + [name for name in RUN_FILES if os.path.isfile(os.path.join(output_dir, name))]


def output_dir_problem(output_dir: str) -> str | None:
    """Why `output_dir` cannot be written (a file, under a file, not writable), checked without writing."""
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"output_dir: {output_dir} is a file. Give a folder (new or existing) with --output_dir."
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"output_dir: {output_dir} lies under {parent}, which is a file. Give another --output_dir."
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"output_dir: {parent} is not writable by this user. Give another --output_dir or fix its permissions."
    return None


def check_output_dir(output_dir: str, resume: str | None, overwrite: bool) -> str | None:
    """The checkpoint to resume from (None: a fresh start), checked before anything is loaded or written.

    Raises:
        ConfigError: the folder holds another run and neither --resume nor --overwrite is given; --resume finds
            no complete checkpoint; both flags are given.
    """
    from ..errors import ConfigError
    from ..training.checkpoints import is_complete
    from ..training.output_lock import check_not_locked

    unusable = output_dir_problem(output_dir)
    if unusable:
        raise ConfigError(unusable)
    if _main_rank():
        check_not_locked(output_dir)  # a live run there: say so, rather than "holds a run, add --resume"
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite: resuming continues the run in output_dir, overwriting "
                          "replaces it. Give one of them.")
    if resume is None:
        found = previous_run(output_dir)
        if found and not overwrite:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise ConfigError(f"output_dir: {output_dir} already holds a run ({shown}). Add --resume to continue "
                              "it, --overwrite to replace it, or set --output_dir to a new folder.")
        return None
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is None:
        raise ConfigError(f"--resume: no complete checkpoint-* folder in {output_dir}. Run without --resume to "
                          "start from scratch, or give --resume PATH of a checkpoint.")
    if not os.path.isdir(checkpoint):
        raise ConfigError(f"--resume: checkpoint folder not found: {checkpoint}. Check the path, or give --resume "
                          "alone for the newest complete checkpoint in output_dir.")
    if not is_complete(checkpoint):
        raise ConfigError(f"--resume: {checkpoint} is incomplete (interrupted while saving: no completeness "
                          "marker). Give an older checkpoint, or --resume alone for the newest complete one.")
    return checkpoint


def parameter_line(model: Any) -> str:
    """`model: 22.7M parameters, 0.59M trainable (sharing 'lora': 5 adapters, 0.37M)`."""
    from ..modeling.adapters import is_adapter_parameter

    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    line = f"model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable"
    adapters = sum(p.numel() for n, p in named if is_adapter_parameter(n))
    if adapters:
        count = sum(1 for task in model.tasks.values() if task.adapter)
        line += f" (sharing '{model.sharing.mode}': {count} adapters, {adapters / 1e6:.2f}M)"
    return line


def _remove_checkpoints(output_dir: str) -> None:
    """--overwrite: the old run's checkpoints go, so that neither --resume nor save_total_limit's rotation can
    mix them with the new run's. Other files are replaced as the new run writes them."""
    from ..training.checkpoints import checkpoints

    if not _main_rank():
        return  # one process deletes; the others would race it
    for folder in checkpoints(output_dir):
        shutil.rmtree(folder)
    # Results of the old run that the new one may not rewrite (no eval split, diagnostics off): `report` would
    # show them as the new run's.
    for name in ("trainer_state.json", "eval_results.json", "test_results.json"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    for name in ("diagnostics", "report"):
        if os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name))


def train_and_report(run: Any, resume: str | None = None, overwrite: bool = False,
                     command: str | None = None) -> tuple[Any, dict[str, float]]:
    """Train `run`, save the model to its output_dir, evaluate and print per-task metrics.

    A SIGTERM during training saves a checkpoint and raises `RunStopped` (exit code 143); too many
    consecutive non-finite losses raise `RunStopped` (exit code 3). `command` is shown in the resume hint.
    """
    from ..errors import ConfigError, RunStopped
    from ..recipe.build import prepare_data, sharing_problems
    from ..recipe.resume import resume_problems
    from ..training.checkpoints import latest_complete_checkpoint
    from ..training.output_lock import OutputLock

    prepared = prepare_data(run, tokenize=False)  # the trainer tokenizes the raw splits
    output_dir = run.training_arguments().output_dir
    checkpoint = resolve_resume(resume, output_dir) if resume is not None else None
    # Checked before the lock below creates the output folder: a refused run leaves it as it was.
    problems = sharing_problems(run)
    if checkpoint is not None:
        problems += resume_problems(checkpoint, run, prepared)
    if problems:
        raise ConfigError(problems)
    # One process holds the folder for the whole run (the other ranks of a distributed run share it).
    with OutputLock(output_dir) if _main_rank() else contextlib.nullcontext():
        try:
            return _train_locked(run, prepared, output_dir, resume, overwrite, command)
        except (OSError, RuntimeError) as err:
            reason = disk_full_reason(err, output_dir)
            if reason is None:
                raise
            last = latest_complete_checkpoint(output_dir)
            where = f"the latest complete checkpoint, {last}, is intact" if last else "no checkpoint had been saved"
            raise RunStopped(f"disk full while writing to {output_dir} ({reason}); {where}. Free space, then "
                             "resume with --resume.", exit_code=DISK_FULL_EXIT_CODE) from None


# What is left on a disk that a write filled up (files of the failed save included) is below this.
_FULL_MARGIN = 64 * 2**20


def disk_full_reason(err: BaseException, output_dir: str) -> str | None:
    """Why a save failed, when it failed for want of space (the strerror), or None for any other error.

    `torch.save` given a path (as Trainer saves optimizer.pt and scheduler.pt) writes through C++ and reports a
    full disk as a RuntimeError of its zip writer ("unexpected pos ...", "PytorchStreamWriter failed writing
    file ...") with no errno, so such an error counts as a full disk when the disk is indeed (nearly) full.
    """
    seen: BaseException | None = err
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # the OSError, or the one torch's writer met writing
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen.strerror or os.strerror(seen.errno)
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if not isinstance(err, RuntimeError) or "PytorchStreamReader" in text or not (
            "PytorchStreamWriter" in text or "inline_container" in text):
        return None
    folder = os.path.abspath(output_dir)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if shutil.disk_usage(folder).free >= _FULL_MARGIN:
        return None
    first = text.strip().splitlines()[0]
    return f"{os.strerror(errno.ENOSPC)}; torch.save: {first}"


def _main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _train_locked(run: Any, prepared: Any, output_dir: str, resume: str | None, overwrite: bool,
                  command: str | None) -> tuple[Any, dict[str, float]]:
    from ..errors import RunStopped
    from ..recipe.build import build_trainer
    from ..training.checkpoints import latest_complete_checkpoint
    from ..training.preemption import PREEMPTED_EXIT_CODE, Preemption, PreemptionCallback
    from ..training.step_gate import NonFiniteLossError

    # Only now, with config and data checked and the folder locked: a failed check leaves the old run as it was.
    if overwrite:
        _remove_checkpoints(output_dir)
    resume_hint = f"{command} --resume" if command else "the same command with --resume"
    with Preemption() as preemption:
        trainer = build_trainer(run, prepared)
        if trainer.is_world_process_zero():
            print(parameter_line(trainer.model))
        preempted = PreemptionCallback(preemption)
        trainer.add_callback(preempted)
        try:
            trainer.train(resume_from_checkpoint=resolve_resume(resume, output_dir))
        except NonFiniteLossError as err:
            last = latest_complete_checkpoint(output_dir)
            where = f"latest complete checkpoint: {last}" if last else "no checkpoint had been saved"
            raise RunStopped(f"{err} ({where})", exit_code=3) from None
    if preempted.preempted:
        # A rank can stop because another one got the signal (the request is shared at each step).
        received = signal.Signals(preemption.received).name if preemption.received else "a stop request"
        raise RunStopped(f"{received} received; stopped at step {preempted.stopped_at} with a complete checkpoint "
                         f"in {preempted.checkpoint}. Resume with: {resume_hint}",
                         exit_code=PREEMPTED_EXIT_CODE, prefix="preempted")
    trainer.save_model(output_dir)
    metrics: dict[str, float] = {}
    main_process = trainer.is_world_process_zero()  # under DDP, one copy of the report
    if trainer.eval_dataset:
        metrics = trainer.evaluate()
        if main_process:
            print(format_table(metrics_rows(metrics, list(trainer.eval_dataset))))
            print(f"eval_average: {metrics['eval_average']:.4f}")
            with open(os.path.join(output_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
                json.dump(metrics, handle, indent=2)
            trainer.create_model_card()  # again, now with the final metrics
            # That evaluation fitted the eval-split state of the tasks (multilabel `threshold: tuned`) on the final
            # weights: saved with the model, beside the weights written above.
            module = trainer.accelerator.unwrap_model(trainer.model)
            module.sync_config()
            module.config.save_pretrained(output_dir)
    # The whole log history (after the last checkpoint too, and with save_strategy: no) for `manyheads report`.
    trainer.save_state()
    if main_process:
        print(f"model saved to {output_dir}")
    return trainer, metrics


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..recipe.config import load_config

    quiet_libraries()
    run_config = load_config(args.config, extra)
    output_dir = run_config.training_arguments().output_dir
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            checkpoint = check_output_dir(output_dir, args.resume, args.overwrite)
        finally:  # skipped incomplete checkpoints: one line each (not a source excerpt), even before an error
            for warning in caught:
                print(f"warning: {warning.message}", file=sys.stderr)
    command = shlex.join(["manyheads", "train", args.config, *extra])
    train_and_report(run_config, checkpoint, overwrite=args.overwrite, command=command)
    return 0
