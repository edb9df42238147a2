"""Quality (GLUE-mini): does multi-task training beat single-task fine-tuning here? (not a test)

What is compared
    Five GLUE tasks (RTE, MRPC, STS-B, CoLA and an SST-2 subset) on one MiniLM encoder, in nine
    configurations, three seeds each:

    - single: single-task fine-tuning, one model per task (the baseline);
    - mt_proportional / mt_temperature / mt_uniform: one multi-task model, tasks sampled in proportion to
      their size, to size**(1/2) (T=2) and equally;
    - mt_uncertainty / mt_dwa: proportional sampling + a loss weighting;
    - mt_pcgrad / mt_upgrad: task-group steps (one micro-batch of every task per optimizer step) + a gradient
      aggregator;
    - mt_finetune: MT-DNN's recipe, a multi-task model (proportional) fine-tuned on each task in turn,
      starting from the multi-task weights (heads included).

Equal examples seen (the full definition is in bench/README.md)
    Every configuration trains on the same fixed subsets (n_t rows of task t, unequal as in GLUE) for the
    same total number of training examples E = sum_t e_t, where e_t = epochs * ceil(n_t / B) * B is what the
    single-task run of task t sees. Proportional sampling and the weightings on top of it give every task
    exactly e_t (whole epochs); mt_finetune (a `--mtft_split` share of the steps in the multi-task phase, the
    rest of each task's budget in its fine-tune) gives e_t in expectation, since its multi-task phase ends
    inside an epoch whose task order is random; temperature and uniform sampling move the same total towards
    small tasks; task-group steps give every task E / K. One-task micro-batch configurations also make the
    same number of optimizer steps; task-group steps hold one micro-batch of every task, so they make K times
    fewer (unless --group_batch_size is B / K). The table lists what each task saw in each configuration.

Scores and ΔMTL
    Each run is evaluated once, at its end, on fixed dev subsets (no checkpoint selection: the dev set is the
    test set here). Main metrics: RTE accuracy, MRPC macro-F1, STS-B Spearman, CoLA MCC, SST-2 accuracy.
    Per configuration: mean ± sd over seeds per task, the average of the main metrics, and ΔMTL (Maninis et
    al. 2019; Vandenhende et al. 2021): the mean over tasks of the relative gain over the single-task mean,
    (-1)^l_t (M_t - S_t) / |S_t|, l_t = 1 where lower is better, in percent.

Resuming
    Every finished (configuration, seed) is written as one JSON row under bench/out/quality/<settings key>/
    (git-ignored; the key hashes every setting that changes results), and the table is always rebuilt from
    those rows: an interrupted study continues where it stopped, and --table_only rebuilds the table.

Run from the repository root (see bench/README.md):

    HF_HUB_OFFLINE=1 python bench/quality.py --data_dir ../shared/data

Results are appended to bench/RESULTS.md (unless --no_write) and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    GLUE,
    GLUE_TASKS,
    OUT_DIR,
    add_common_arguments,
    command_line,
    glue_task_config,
    now,
    parse_with_presets,
    publish,
    quiet_libraries,
    require_files,
    save_row,
    settings_key,
    training_fields,
    write_glue_subsets,
)
from _quality_report import CONFIGS, FINETUNE, SINGLE, report

GROUP_BATCHES = 50  # MultiTaskBatchSampler's default `group_batches` (batches per length-sorted group)

TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
# Sampling and balancing sections of the one-model multi-task configurations.
MT_SECTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mt_proportional": ({"strategy": "proportional"}, {}),
    "mt_temperature": ({"strategy": "temperature", "temperature": 2.0}, {}),
    "mt_uniform": ({"strategy": "uniform"}, {}),
    "mt_uncertainty": ({"strategy": "proportional"}, {"weighting": "uncertainty"}),
    "mt_dwa": ({"strategy": "proportional"}, {"weighting": "dwa"}),
    "mt_pcgrad": ({"strategy": "proportional"}, {"aggregator": "pcgrad"}),
    "mt_upgrad": ({"strategy": "proportional"}, {"aggregator": "upgrad"}),
}
DWA_PERIODS = 10  # DWA's period (an epoch in the paper) is a tenth of the run: the run is about one epoch

CPU_TRAIN = {"rte": 224, "mrpc": 320, "stsb": 432, "cola": 528, "sst2": 640}  # multiples of 16
CPU_EVAL = {"rte": None, "mrpc": None, "stsb": 400, "cola": 400, "sst2": 400}  # None: the whole dev set
QUICK = {"train_sizes": ["rte=16", "mrpc=16", "stsb=16", "cola=16", "sst2=16"],
         "eval_sizes": ["rte=24", "mrpc=24", "stsb=24", "cola=24", "sst2=24"],
         "batch_size": 8, "max_length": 64, "seeds": [1]}
FULL = {"train_sizes": ["rte=all", "mrpc=all", "stsb=all", "cola=all", "sst2=10000"],
        "eval_sizes": ["rte=all", "mrpc=all", "stsb=all", "cola=all", "sst2=all"],
        "epochs": 3, "batch_size": 32, "learning_rate": 5e-5}
# issue 16's realistic regime on a CPU: whole train sets (SST-2: an 8k subset), whole dev sets, 3 epochs, length
# grouping; the configurations are single-task, proportional, T=2 and the earlier study's best balancing method
# (dwa: 48.5 average, level with proportional; uncertainty 48.3). See bench/README.md for the time it takes.
# Learning rate 1e-4 and CoLA's class weights `auto`: bench/cola.py's best CoLA recipe (MCC 30.8 ± 1.3 over 3
# seeds vs 28.6 ± 1.0 at 5e-5 without weights); single-task RTE and MRPC, seed 1, at 5e-5 / 1e-4: accuracy
# 57.4 / 56.7 and 78.4 / 79.4 (a check run with `--configs single --tasks rte mrpc`), so 1e-4 costs them nothing.
REALISTIC = {"train_sizes": ["rte=all", "mrpc=all", "stsb=all", "cola=all", "sst2=8000"],
             "eval_sizes": ["rte=all", "mrpc=all", "stsb=all", "cola=all", "sst2=all"],
             "epochs": 3, "batch_size": 32, "learning_rate": 1e-4, "class_weights": ["cola=auto"],
             "group_by_length": True, "checkpoint_every": 200,
             "configs": ["single", "mt_proportional", "mt_temperature", "mt_dwa"]}
# Planning only (the measured time is reported): a rough fp32 forward+backward speed, in padded tokens/s, of
# one MiniLM run with one torch thread on this 2-core CPU, from informal timings (lower on short rows, where
# per-step overheads weigh more); evaluation ~3x faster (forward only). --jobs runs share the cores.
TOKENS_PER_SECOND = 600.0
EVAL_SPEEDUP = 3.0
RUN_OVERHEAD_S = 5.0  # model load, trainer set-up, evaluation set-up
# Gradient rows, aggregation and statistics of one task-group step with 5 tasks: ~3 s measured on this CPU
# under load (flattening 5 x 22.7M gradients, the aggregator, the cosine statistics); ~2 s assumed.
GROUP_STEP_OVERHEAD_S = 2.0


def default_jobs() -> int:
    """Parallel runs by default. A MiniLM step uses two CPU threads poorly: in an informal timing on this 2-core
    machine (not a bench command), two single-thread runs side by side trained nearly twice the rows per second
    of one run with two threads. A GPU runs one at a time."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(os.cpu_count() or 1, 4))


def sizes_arg(values: Sequence[str], tasks: Sequence[str], default: dict[str, int | None]) -> dict[str, int | None]:
    """`task=N` / `task=all` pairs over the defaults."""
    out = {t: default.get(t) for t in tasks}
    for item in values or []:
        task, _, size = item.partition("=")
        if task not in GLUE or not size:
            raise ValueError(f"{item!r}: expected task=N or task=all with task one of {', '.join(GLUE)}")
        out[task] = None if size == "all" else int(size)
    return {t: out[t] for t in tasks}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "the GLUE folders rte, mrpc, stsb, cola, sst2 (train.tsv, dev.tsv)")
    parser.add_argument("--full", action="store_true",
                        help="GPU-size preset: whole train sets (SST-2: 10k rows), whole dev sets, 3 epochs, "
                             "batch 32, learning rate 5e-5")
    parser.add_argument("--realistic", action="store_true",
                        help="issue 16's CPU regime: whole train sets (SST-2: 8k rows), whole dev sets, 3 epochs, "
                             "batch 32, learning rate 1e-4, CoLA class weights auto, length grouping; single, "
                             "mt_proportional, mt_temperature, mt_dwa; single-task scores shown next to the "
                             "published ones")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--train_sizes", nargs="*", default=[],
                        help=f"task=N|all training rows per task (a fixed random subset); default {CPU_TRAIN}")
    parser.add_argument("--eval_sizes", nargs="*", default=[],
                        help=f"task=N|all dev rows per task (None = all); default {CPU_EVAL}")
    parser.add_argument("--epochs", type=int, default=1, help="passes over each task's subset (single-task)")
    parser.add_argument("--batch_size", type=int, default=8, help="rows per micro-batch (one task)")
    parser.add_argument("--group_batch_size", type=int, default=None,
                        help="rows per task in a task-group step (pcgrad, upgrad); default --batch_size: one "
                             "micro-batch of every task per step, K times fewer steps (see README)")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--mtft_split", type=float, default=0.5,
                        help="mt_finetune: share of each task's budget spent in the multi-task phase")
    parser.add_argument("--group_by_length", action=argparse.BooleanOptionalAction, default=False,
                        help="batches of similar lengths within each task (group_by_length): less padding; "
                             "--no-group_by_length turns it off (also under --realistic)")
    parser.add_argument("--class_weights", nargs="*", default=[],
                        help="task=auto|none: a classification task's `class_weights` (auto: inverse label "
                             "frequency; --realistic: cola=auto, see bench/cola.py)")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (on this CPU ~4x slower than fp32; use it on a GPU)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the fixed train/dev subsets")
    parser.add_argument("--cache_dir", default=str(OUT_DIR / "quality"),
                        help="where rows (one JSON per configuration and seed) and subsets are kept")
    parser.add_argument("--checkpoint_every", type=int, default=0,
                        help="save each run's checkpoint every N optimizer steps under the cache folder, and continue "
                             "an interrupted run from it (0: runs keep nothing until they finish; --realistic: 200)")
    parser.add_argument("--table_only", action="store_true", help="rebuild the table from cached rows; train nothing")
    parser.add_argument("--plan_only", action="store_true",
                        help="print the plan and its time estimate for the whole study; train nothing")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="(configuration, seed) pairs trained at once, each in its own process with "
                             "cores/jobs torch threads; default: 1 on a GPU, else min(cores, 4)")
    parser.add_argument("--tokens_per_second", type=float, default=TOKENS_PER_SECOND,
                        help="training speed assumed by the printed time plan (padded tokens/s)")
    args = parse_with_presets(parser, argv, {"quick": QUICK, "full": FULL, "realistic": REALISTIC})
    if args.quick + args.full + args.realistic > 1:
        parser.error("--quick, --full and --realistic are presets: give one")
    if len(set(args.tasks)) < 2:
        parser.error("--tasks: multi-task needs at least 2 tasks")
    args.tasks = [t for t in TASKS if t in args.tasks]
    args.configs = [c for c in CONFIGS if c in args.configs]
    try:
        args.train_sizes = sizes_arg(args.train_sizes, args.tasks, CPU_TRAIN)
        args.eval_sizes = sizes_arg(args.eval_sizes, args.tasks, CPU_EVAL)
    except ValueError as err:
        parser.error(f"--train_sizes / --eval_sizes: {err}")
    weights = dict(item.partition("=")[::2] for item in args.class_weights)
    classifiers = [t for t in TASKS if GLUE_TASKS[t]["type"] == "classification"]
    wrong = [f"{t}={w}" for t, w in weights.items() if t not in classifiers or w not in ("auto", "none")]
    if wrong:
        parser.error(f"--class_weights {' '.join(wrong)}: expected task=auto or task=none, task one of the "
                     f"classification tasks {', '.join(classifiers)}")
    # Tasks left out by --tasks are ignored: `--realistic --tasks rte mrpc` keeps working with its cola=auto.
    args.class_weights = {t: w for t, w in weights.items() if w == "auto" and t in args.tasks}
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.mtft_split < 1 or not 0 <= args.warmup < 1:
        parser.error("--epochs and --batch_size must be >= 1, 0 < --mtft_split < 1, 0 <= --warmup < 1")
    require_files(parser, args.data_dir, [Path(GLUE[t].folder) / f for t in args.tasks
                                          for f in (GLUE[t].train, GLUE[t].dev)])
    return args


# ----- settings, plan and budget -----
def settings_of(args: argparse.Namespace, train: dict[str, int], dev: dict[str, int]) -> dict[str, Any]:
    """Every setting that changes results (it names the cache folder: other settings, other rows)."""
    return {"model": args.model, "tasks": args.tasks, "train": train, "dev": dev, "epochs": args.epochs,
            "batch_size": args.batch_size, "group_batch_size": group_batch_size(args),
            "learning_rate": args.learning_rate, "warmup": args.warmup, "weight_decay": args.weight_decay,
            "max_length": args.max_length, "mtft_split": args.mtft_split, "bf16": args.bf16,
            "data_seed": args.data_seed,
            # Only when on: the cache folders of the studies that ran before the options keep their names.
            **({"group_by_length": True} if args.group_by_length else {}),
            **({"class_weights": args.class_weights} if args.class_weights else {})}


def group_batch_size(args: argparse.Namespace) -> int:
    """Rows per task in a task-group step: by default B, the methods' usual form (one micro-batch of every task
    per optimizer step). B / K would keep the number of steps, but each step then pays the aggregation (about
    a second on this CPU) for a tiny batch per task."""
    return args.group_batch_size or args.batch_size


@dataclass
class RunSpec:
    """One training run: its tasks, sampling, balancing, micro-batch size and steps."""

    tasks: list[str]
    batch_size: int
    steps: int
    sampling: dict[str, Any] = field(default_factory=dict)
    balancing: dict[str, Any] = field(default_factory=dict)
    from_multitask: bool = False  # start from the previous run's trained model (mt_finetune)
    evaluate: bool = True


def single_steps(args: argparse.Namespace, train: dict[str, int]) -> dict[str, int]:
    return {t: args.epochs * math.ceil(train[t] / args.batch_size) for t in args.tasks}


def plan(config: str, args: argparse.Namespace, train: dict[str, int]) -> list[RunSpec]:
    """The runs of one configuration (for one seed), at equal examples seen (see the module docstring)."""
    steps = single_steps(args, train)
    total = sum(steps.values())
    b = args.batch_size
    if config == SINGLE:
        return [RunSpec([t], b, steps[t]) for t in args.tasks]
    if config == FINETUNE:
        first = RunSpec(list(args.tasks), b, max(1, round(args.mtft_split * total)),
                        sampling={"strategy": "proportional"}, evaluate=False)
        return [first] + [RunSpec([t], b, max(1, round((1 - args.mtft_split) * steps[t])), from_multitask=True)
                          for t in args.tasks]
    sampling, balancing = copy.deepcopy(MT_SECTIONS[config])
    if "aggregator" in balancing:
        g = group_batch_size(args)
        return [RunSpec(list(args.tasks), g, max(1, round(total * b / (g * len(args.tasks)))), sampling, balancing)]
    if balancing.get("weighting") == "dwa":
        balancing["weighting_kwargs"] = {"period": max(1, total // DWA_PERIODS)}
    return [RunSpec(list(args.tasks), b, total, sampling, balancing)]


def seen(spec: RunSpec, train: dict[str, int], seed: int) -> dict[str, int]:
    """Examples each task sees in a run, from the schedule of the sampler MultiTaskTrainer builds."""
    from manyheads.data.samplers import MultiTaskBatchSampler, TaskGroupBatchSampler

    sizes = {t: train[t] for t in spec.tasks}
    common = {"strategy": spec.sampling.get("strategy", "proportional"),
              "temperature": spec.sampling.get("temperature", 2.0), "seed": seed}
    out = dict.fromkeys(spec.tasks, 0)
    if "aggregator" in spec.balancing:
        sampler: Any = TaskGroupBatchSampler(sizes, spec.batch_size, **common)
        names = (name for epoch in range(10**6) for step in sampler.schedule(epoch) for name, _ in step)
        per_step = len(spec.tasks)
    else:
        sampler = MultiTaskBatchSampler(sizes, spec.batch_size, **common)
        names = (spec.tasks[i] for epoch in range(10**6) for i in sampler.task_order(epoch))
        per_step = 1
    for _ in range(spec.steps * per_step):
        out[next(names)] += spec.batch_size
    return out


def padded_tokens_per_row(lengths: list[int], batch_size: int, seed: int = 0, group: int | None = None) -> float:
    """Mean padded length of a row in random batches of `batch_size` (dynamic padding); with `group`, sorted by
    length within random groups of `group` batches first, as the sampler's `group_by_length` does."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(lengths))
    values = np.asarray(lengths)[order]
    if group:
        size = group * batch_size
        values = np.concatenate([np.sort(values[i:i + size]) for i in range(0, len(values), size)])
    batches = [values[i:i + batch_size] for i in range(0, len(values), batch_size)]
    return float(sum(batch.max() * len(batch) for batch in batches) / len(values))


def estimate_seconds(specs: list[RunSpec], args: argparse.Namespace, train: dict[str, int],
                     lengths: dict[str, dict[str, list[int]]]) -> float:
    """Planned seconds of one configuration and seed (training tokens, evaluation tokens, overheads)."""
    seconds = 0.0
    for spec in specs:
        for task, rows in seen(spec, train, seed=0).items():
            padded = padded_tokens_per_row(lengths["train"][task], spec.batch_size,
                                           group=GROUP_BATCHES if args.group_by_length else None)
            seconds += rows * padded / args.tokens_per_second
        if spec.evaluate:
            # Dev subsets are sorted by length: evaluation pads almost nothing.
            tokens = sum(sum(lengths["eval"][t]) for t in spec.tasks)
            seconds += tokens / (args.tokens_per_second * EVAL_SPEEDUP)
        if "aggregator" in spec.balancing:
            seconds += spec.steps * GROUP_STEP_OVERHEAD_S
        seconds += RUN_OVERHEAD_S
    return seconds


# ----- running -----
@dataclass
class Context:
    args: argparse.Namespace
    data_dir: str
    prepared: Any  # PreparedData of all tasks (train + eval)
    train: dict[str, int]  # rows per task
    rows_dir: Path
    settings: dict[str, Any]


def subset(prepared: Any, tasks: list[str]) -> Any:
    """The prepared data of some tasks only (the tokenized datasets are shared, not copied)."""
    from manyheads.recipe import PreparedData

    return PreparedData(tasks={t: prepared.tasks[t] for t in tasks}, raw={t: prepared.raw[t] for t in tasks},
                        tokenizer=prepared.tokenizer, train={t: prepared.train[t] for t in tasks},
                        eval={t: prepared.eval[t] for t in tasks})


def run_dict(ctx: Context, spec: RunSpec, seed: int, output_dir: str) -> dict[str, Any]:
    args = ctx.args
    training = training_fields(output_dir, spec.batch_size, spec.steps, seed, args.bf16)
    # Logging ~20 times a run keeps the balancing weights' path (`weight_<task>`); it does not change training.
    training.update({"per_device_eval_batch_size": 64, "learning_rate": args.learning_rate,
                     "warmup_steps": args.warmup, "weight_decay": args.weight_decay,
                     "logging_steps": max(1, spec.steps // 20)})
    return {"model": args.model, "data_dir": ctx.data_dir, "max_length": args.max_length,
            "tasks": [{**glue_task_config(t), **({"class_weights": args.class_weights[t]}
                                                  if t in args.class_weights else {})} for t in spec.tasks],
            # Always explicit: the library's default (on) is not what a run without the flag measured before.
            "sampling": {**spec.sampling, "group_by_length": bool(args.group_by_length)},
            "balancing": spec.balancing, "training": training}


def train_and_evaluate(ctx: Context, spec: RunSpec, seed: int, model: Any, work: Path | None = None
                       ) -> tuple[dict[str, dict[str, float]], Any, list[dict[str, float]]]:
    """Train one run (from `model`, or fresh heads on the pretrained encoder) and evaluate its tasks; also
    returns the task weights the run logged (step and `weight_<task>`).

    With `work` (--checkpoint_every): the run saves a checkpoint there every that many steps and continues from
    the newest one when it is started again (an interrupted study loses at most that many steps of a run)."""
    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    from manyheads.recipe import build_config, build_trainer

    scores: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        # Without checkpoints trainers save nothing (save_strategy "no"), but need an output folder.
        output_dir = str(work) if work else stack.enter_context(tempfile.TemporaryDirectory(prefix="manyheads-q-"))
        config = run_dict(ctx, spec, seed, output_dir)
        if work:
            config["training"].update(save_strategy="steps", save_steps=ctx.args.checkpoint_every,
                                      save_total_limit=1)
        run = build_config(config)
        trainer = build_trainer(run, subset(ctx.prepared, spec.tasks), model=model)
        trainer.remove_callback(PrinterCallback)
        last = get_last_checkpoint(output_dir) if work and Path(output_dir).is_dir() else None
        if last:
            print(f"  continuing {work.name} from {Path(last).name}", flush=True)
        trainer.train(resume_from_checkpoint=last)
        if spec.evaluate:
            metrics = trainer.evaluate()
            for task in spec.tasks:
                prefix = f"eval_{task}_"
                scores[task] = {k[len(prefix):]: float(v) for k, v in metrics.items()
                                if k.startswith(prefix) and not k.endswith(("_runtime", "_per_second"))}
    weights = [{k: v for k, v in entry.items() if k == "step" or k.startswith("weight_")}
               for entry in trainer.state.log_history if any(k.startswith("weight_") for k in entry)]
    trained = trainer.model
    del trainer
    gc.collect()
    return scores, trained, weights


def run_config(ctx: Context, config: str, seed: int) -> dict[str, Any]:
    """All runs of one configuration and seed; returns its row."""
    import torch

    start = time.perf_counter()
    load_before = os.getloadavg()
    specs = plan(config, ctx.args, ctx.train)
    tasks: dict[str, dict[str, Any]] = {t: {"seen": 0, "steps": 0} for t in ctx.args.tasks}
    multitask = None
    params: list[int] = []  # parameters of each model this configuration leaves to be stored
    weights: dict[str, list[dict[str, float]]] = {}  # logged task weights by run
    earlier_s = 0.0  # seconds of runs finished by an earlier, interrupted call (--checkpoint_every)
    # Checkpoints per run (not for mt_finetune, whose fine-tunes start from its multi-task phase's model).
    checkpoints = ctx.args.checkpoint_every > 0 and config != FINETUNE
    for index, spec in enumerate(specs):
        model = copy.deepcopy(multitask) if spec.from_multitask else None
        work = ctx.rows_dir.parent / "work" / f"{config}-seed{seed}-run{index}" if checkpoints else None
        done = work / "scores.json" if work else None
        if done is not None and done.is_file():  # finished before an interruption: what it measured was kept
            kept = json.loads(done.read_text(encoding="utf-8"))
            scores, parameters, earlier_s = kept["scores"], kept["parameters"], earlier_s + kept["seconds"]
            logged = kept.get("weights", [])
        else:
            run_start = time.perf_counter()
            scores, trained, logged = train_and_evaluate(ctx, spec, seed, model, work)
            parameters = sum(p.numel() for p in trained.parameters())
            if not spec.evaluate:
                multitask = trained
            if done is not None:
                save_row(done, {"scores": scores, "parameters": parameters, "weights": logged,
                                "seconds": time.perf_counter() - run_start})
                for folder in work.glob("checkpoint-*"):
                    shutil.rmtree(folder, ignore_errors=True)
        for task, rows in seen(spec, ctx.train, seed).items():
            tasks[task]["seen"] += rows
            tasks[task]["steps"] += spec.steps
        for task, values in scores.items():
            main = GLUE_TASKS[task]["main_metric"]
            tasks[task].update({"metrics": values, "main": values[main]})
        if spec.evaluate:
            params.append(parameters)
        if logged:
            weights[f"run{index}"] = logged
    return {"config": config, "seed": seed, "settings": ctx.settings, "tasks": tasks, "params": params,
            "weights": weights,
            "optimizer_steps": sum(s.steps for s in specs),
            "wall_s": round(time.perf_counter() - start + earlier_s, 1),
            "date": now(), "load_before": load_before, "load_after": os.getloadavg(),
            "threads": torch.get_num_threads(), "jobs": ctx.args.jobs}


def row_path(ctx: Context, config: str, seed: int) -> Path:
    return ctx.rows_dir / f"{config}-seed{seed}.json"


def load_rows(rows_dir: Path, configs: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        for seed in seeds:
            path = rows_dir / f"{config}-seed{seed}.json"
            if path.is_file():
                rows.append(json.loads(path.read_text(encoding="utf-8")))
    return rows


# ----- main -----
def prepare(args: argparse.Namespace) -> tuple[Context, dict[str, dict[str, list[int]]]]:
    """Write the subsets, tokenize them once, and name the cache folder after the settings."""
    from manyheads.recipe import build_config, prepare_data

    staging, train, dev = write_glue_subsets(args.data_dir, args.cache_dir, args.train_sizes, args.eval_sizes,
                                             args.data_seed)
    settings = settings_of(args, train, dev)
    key = settings_key(settings)
    base = build_config({"model": args.model, "data_dir": str(staging), "max_length": args.max_length,
                         "tasks": [glue_task_config(t) for t in args.tasks]})
    prepared = prepare_data(base)
    lengths = {split: {t: [len(ids) for ids in getattr(prepared, split)[t]["input_ids"]] for t in args.tasks}
               for split in ("train", "eval")}
    ctx = Context(args=args, data_dir=str(staging), prepared=prepared, train=train,
                  rows_dir=Path(args.cache_dir) / key / "rows", settings=settings)
    return ctx, lengths


def print_plan(ctx: Context, lengths: dict[str, dict[str, list[int]]], todo: list[tuple[str, int]]) -> float:
    args = ctx.args
    print(f"plan: tasks {args.tasks}, train rows {ctx.train}, seeds {args.seeds}; rows in {ctx.rows_dir}")
    print(f"  {'configuration':16s} " + " ".join(f"{t:>6s}" for t in args.tasks) + "  steps  est. min/seed")
    total = 0.0
    for config in args.configs:
        specs = plan(config, args, ctx.train)
        per_task = {t: 0 for t in args.tasks}
        for spec in specs:
            for task, rows in seen(spec, ctx.train, seed=0).items():
                per_task[task] += rows
        est = estimate_seconds(specs, args, ctx.train, lengths)
        runs = sum(1 for c, _ in todo if c == config)
        total += est * runs
        print(f"  {config:16s} " + " ".join(f"{per_task[t]:6d}" for t in args.tasks)
              + f"  {sum(s.steps for s in specs):5d}  {est / 60:5.1f} (x{runs} to run)")
    total /= max(1, min(args.jobs, len(todo)))
    print(f"planned: {len(todo)} (configuration, seed) pairs to run, about {total / 60:.0f} min with {args.jobs} "
          f"job(s) at once, at {args.tokens_per_second:.0f} padded training tokens/s per job (see "
          "--tokens_per_second)", flush=True)
    return total


_WORKER: dict[str, Context] = {}


def _init_worker(args: argparse.Namespace, threads: int) -> None:
    """Pool worker set-up: its share of the cores, quiet libraries, and its own tokenized copy of the data
    (the parent wrote the subsets already; `write_glue_subset` leaves unchanged files alone)."""
    import torch

    torch.set_num_threads(threads)
    quiet_libraries()
    _WORKER["ctx"] = prepare(args)[0]


def train_row(ctx: Context, config: str, seed: int) -> dict[str, Any]:
    """Train one (configuration, seed) and save its row at once (a resumed study starts after it)."""
    row = run_config(ctx, config, seed)
    save_row(row_path(ctx, config, seed), row)
    return row


def _run_in_worker(config: str, seed: int) -> dict[str, Any]:
    return train_row(_WORKER["ctx"], config, seed)


def run_all(ctx: Context, todo: list[tuple[str, int]]) -> None:
    """Train the missing (configuration, seed) pairs: in this process, or in --jobs worker processes (rows are
    saved as each one finishes, so an interrupted study resumes either way)."""
    import torch

    def done(i: int, row: dict[str, Any]) -> None:
        scores = ", ".join(f"{t} {100 * v['main']:.1f}" for t, v in row["tasks"].items() if "main" in v)
        print(f"  [{i}/{len(todo)}] seed {row['seed']} {row['config']:16s}: {scores} ({row['wall_s']:.0f} s)",
              flush=True)

    jobs = min(ctx.args.jobs, len(todo))
    if jobs <= 1:
        for i, (config, seed) in enumerate(todo):
            done(i + 1, train_row(ctx, config, seed))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // jobs)
    print(f"running {jobs} jobs at once, {threads} torch thread(s) each", flush=True)
    # spawn: a fresh interpreter per worker (fork would copy this process's torch thread pools).
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(ctx.args, threads)) as pool:
        futures = [pool.submit(_run_in_worker, config, seed) for config, seed in todo]
        for i, future in enumerate(as_completed(futures)):
            done(i + 1, future.result())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("quality.py", argv)
    date = now()
    quiet_libraries()
    load_before = os.getloadavg()
    ctx, lengths = prepare(args)
    done = {(r["config"], r["seed"]) for r in load_rows(ctx.rows_dir, args.configs, args.seeds)}
    # Seeds outermost: an interrupted study already has whole seeds of every configuration.
    todo = [] if args.table_only else [(c, s) for s in args.seeds for c in args.configs
                                       if (c, s) not in done or args.plan_only]
    planned = print_plan(ctx, lengths, todo)
    if args.plan_only:
        return 0
    if done:
        print(f"resuming: {len(done)} (configuration, seed) pairs already in {ctx.rows_dir}")
    run_all(ctx, todo)
    rows = load_rows(ctx.rows_dir, args.configs, args.seeds)
    if not rows:
        print("no rows yet: nothing to report")
        return 1
    load_after = os.getloadavg()
    publish(args, report(args, ctx.settings, ctx.rows_dir, rows, command, date, load_before, load_after, planned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
