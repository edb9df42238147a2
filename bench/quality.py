"""Quality (GLUE-mini): does multi-task training beat single-task fine-tuning here? (not a test)

`manyheads compare` run on one recipe per configuration: planning, training, resuming and the verdict arithmetic
are the library's (`manyheads.recipe.compare`, `compare_plan`, `compare_table`); this script writes the recipes
and the results section (bench/README.md, study 1). `--table_only` rebuilds the section from the runs kept in
`bench/out/quality/<settings key>/`.

    HF_HUB_OFFLINE=1 python bench/quality.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import _common as bc

TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
SINGLE, PROPORTIONAL = "single", "mt_proportional"
CONFIGS: dict[str, str] = {
    SINGLE: "single-task fine-tuning (one model per task)",
    "mt_proportional": "multi-task, proportional sampling",
    "mt_temperature": "multi-task, temperature sampling T=2",
    "mt_uniform": "multi-task, uniform sampling",
    "mt_uncertainty": "multi-task, proportional + uncertainty weighting",
    "mt_dwa": "multi-task, proportional + DWA weighting",
    "mt_pcgrad": "multi-task, task-group steps + PCGrad",
    "mt_upgrad": "multi-task, task-group steps + UPGrad",
    "mt_lora": "multi-task, proportional, encoder frozen + one LoRA adapter per task",
    "mt_hybrid": "multi-task, proportional, shared encoder + one LoRA adapter per task",
}
# Sampling, balancing and sharing sections of the multi-task configurations (mt_proportional: none of them).
SECTIONS: dict[str, dict[str, Any]] = {
    "mt_temperature": {"sampling": {"strategy": "temperature", "temperature": 2.0}},
    "mt_uniform": {"sampling": {"strategy": "uniform"}},
    "mt_uncertainty": {"balancing": {"weighting": "uncertainty"}},
    "mt_dwa": {"balancing": {"weighting": "dwa"}},
    "mt_pcgrad": {"balancing": {"aggregator": "pcgrad"}},
    "mt_upgrad": {"balancing": {"aggregator": "upgrad"}},
    "mt_lora": {"sharing": {"mode": "lora"}},
    "mt_hybrid": {"sharing": {"mode": "hybrid"}},
}
DWA_PERIODS = 10  # DWA's period (an epoch in the paper) is a tenth of the run: the run is about one epoch
CPU_TRAIN = {"rte": 224, "mrpc": 320, "stsb": 432, "cola": 528, "sst2": 640}  # multiples of 16
CPU_EVAL = {"rte": None, "mrpc": None, "stsb": 400, "cola": 400, "sst2": 400}  # None: the whole dev set
QUICK = {"train_sizes": [f"{t}=16" for t in TASKS], "eval_sizes": [f"{t}=24" for t in TASKS],
         "batch_size": 8, "max_length": 64, "seeds": [1], "cache_dir": str(bc.OUT_DIR / "quality-quick")}
FULL = {"train_sizes": ["rte=all", "mrpc=all", "stsb=all", "cola=all", "sst2=10000"],
        "eval_sizes": [f"{t}=all" for t in TASKS], "epochs": 3, "batch_size": 32, "learning_rate": 5e-5}
# issue 16's realistic regime on a CPU: whole train sets (SST-2: an 8k subset), whole dev sets, 3 epochs, length
# grouping, learning rate 1e-4 and CoLA's class weights `auto` (bench/cola.py's best CoLA recipe).
REALISTIC = {"train_sizes": ["rte=all", "mrpc=all", "stsb=all", "cola=all", "sst2=8000"],
             "eval_sizes": [f"{t}=all" for t in TASKS], "epochs": 3, "batch_size": 32, "learning_rate": 1e-4,
             "class_weights": ["cola=auto"], "group_by_length": True, "checkpoint_every": 200,
             "configs": ["single", "mt_proportional", "mt_temperature", "mt_dwa"]}
# Study 7 (bench/sharing.py): hard (mt_proportional) vs LoRA vs hybrid sharing, at 2 runs at once.
SHARING = {"configs": ["single", "mt_proportional", "mt_lora", "mt_hybrid"], "cache_dir": str(bc.OUT_DIR / "sharing"),
           "jobs": bc.default_jobs(2)}


def parse_args(argv: list[str] | None = None, presets: dict[str, Any] | None = None,
               defaults: dict[str, Any] | None = None) -> argparse.Namespace:
    """The options; `presets` and `defaults` are another study's (bench/sharing.py) over this one's."""
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "the GLUE folders rte, mrpc, stsb, cola, sst2 (train.tsv, dev.tsv)")
    add = parser.add_argument
    add("--full", action="store_true", help="GPU-size preset: whole train sets (SST-2: 10k rows), whole dev sets, "
        "3 epochs, batch 32, learning rate 5e-5")
    add("--realistic", action="store_true", help="issue 16's CPU regime: whole train sets (SST-2: 8k rows), whole "
        "dev sets, 3 epochs, batch 32, learning rate 1e-4, CoLA class weights auto, length grouping; single, "
        "mt_proportional, mt_temperature, mt_dwa")
    add("--configs", nargs="+", default=[c for c in CONFIGS if c not in ("mt_lora", "mt_hybrid")],
        choices=list(CONFIGS))
    add("--seeds", nargs="+", type=int, default=[1, 2, 3])
    add("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    add("--train_sizes", nargs="*", default=[], help=f"task=N|all training rows per task; default {CPU_TRAIN}")
    add("--eval_sizes", nargs="*", default=[], help=f"task=N|all dev rows per task (None = all); default {CPU_EVAL}")
    add("--scale", type=float, default=1.0, help="multiply the default training rows by this (whole batches)")
    add("--epochs", type=int, default=1, help="passes over each task's subset (single-task)")
    add("--batch_size", type=int, default=8, help="rows per micro-batch (one task)")
    add("--group_batch_size", type=int, default=None, help="rows per task in a task-group step (pcgrad, upgrad); "
        "default --batch_size: one micro-batch of every task per step, K times fewer steps")
    add("--learning_rate", type=float, default=1e-4)
    add("--lora_learning_rate", type=float, default=5e-4, help="mt_lora: adapters and heads")
    add("--adapter_learning_rate", type=float, default=5e-4, help="mt_hybrid: the adapters")
    add("--r", type=int, default=8, help="LoRA rank (mt_lora, mt_hybrid)")
    add("--alpha", type=float, default=16.0, help="LoRA alpha")
    add("--lora_dropout", type=float, default=0.1)
    add("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    add("--weight_decay", type=float, default=0.01)
    add("--max_length", type=int, default=128)
    add("--group_by_length", action=argparse.BooleanOptionalAction, default=False,
        help="batches of similar lengths within each task (also under --realistic: --no-group_by_length)")
    add("--class_weights", nargs="*", default=[], help="task=auto|none: a classification task's class_weights")
    add("--bf16", action="store_true", help="bf16 autocast (on this CPU ~4x slower than fp32; use it on a GPU)")
    add("--data_seed", type=int, default=0, help="seed of the fixed train/dev subsets")
    add("--cache_dir", default=str(bc.OUT_DIR / "quality"), help="where the subsets and the run folders are kept")
    add("--checkpoint_every", type=int, default=0, help="each run saves a checkpoint every N steps, from which a "
        "rerun resumes it (0: none; --realistic: 200)")
    add("--table_only", action="store_true", help="rebuild the section from the finished runs; train nothing")
    add("--plan_only", action="store_true", help="print the planned runs and examples; train nothing")
    add("--jobs", type=int, default=bc.default_jobs(4), help="runs trained at once (default: 1 on a GPU, else "
        "min(cores, 4))")
    parser.set_defaults(**(defaults or {}))
    presets = {k: {**v, **(presets or {}).get(k, {})} for k, v in
               {"quick": QUICK, "full": FULL, "realistic": REALISTIC}.items()}
    args = bc.parse_with_presets(parser, argv, presets)
    if args.quick + args.full + args.realistic > 1:
        parser.error("--quick, --full and --realistic are presets: give one")
    if len(set(args.tasks)) < 2 or args.jobs < 1:
        parser.error("--tasks: multi-task needs at least 2 tasks; --jobs must be >= 1")
    args.tasks = [t for t in TASKS if t in args.tasks]
    args.configs = [c for c in CONFIGS if c in args.configs]
    if args.epochs < 1 or args.batch_size < 1 or not 0 < args.scale <= 1 or not 0 <= args.warmup < 1:
        parser.error("--epochs and --batch_size must be >= 1, 0 < --scale <= 1, 0 <= --warmup < 1")
    default_train = {t: max(args.batch_size, round(n * args.scale / args.batch_size) * args.batch_size)
                     if args.scale != 1 else n for t, n in CPU_TRAIN.items()}
    try:
        args.train_sizes = bc.sizes_arg(args.train_sizes, args.tasks, default_train)
        args.eval_sizes = bc.sizes_arg(args.eval_sizes, args.tasks, CPU_EVAL)
    except ValueError as err:
        parser.error(f"--train_sizes / --eval_sizes: {err}")
    weights = dict(item.partition("=")[::2] for item in args.class_weights)
    classifiers = [t for t in TASKS if bc.GLUE_TASKS[t]["type"] == "classification"]
    wrong = [f"{t}={w}" for t, w in weights.items() if t not in classifiers or w not in ("auto", "none")]
    if wrong:
        parser.error(f"--class_weights {' '.join(wrong)}: expected task=auto or task=none, task one of the "
                     f"classification tasks {', '.join(classifiers)}")
    # Tasks left out by --tasks are ignored: `--realistic --tasks rte mrpc` keeps working with its cola=auto.
    args.class_weights = {t: w for t, w in weights.items() if w == "auto" and t in args.tasks}
    bc.require_glue(parser, args.data_dir, args.tasks)
    return args


# ----- the recipes -----
def recipe(args: argparse.Namespace, config: str, data_dir: str, train: dict[str, int]) -> dict[str, Any]:
    """The `manyheads train` recipe of one multi-task configuration (seed and output folder: set by compare)."""
    steps = sum(args.epochs * math.ceil(train[t] / args.batch_size) for t in args.tasks)
    section = json.loads(json.dumps(SECTIONS.get(config, {})))
    batch, rate = args.batch_size, args.learning_rate
    balancing = section.get("balancing", {})
    if "aggregator" in balancing:  # one micro-batch of every task per step: the same examples in fewer steps
        batch = args.group_batch_size or args.batch_size
        steps = max(1, round(steps * args.batch_size / (batch * len(args.tasks))))
    if balancing.get("weighting") == "dwa":
        balancing["weighting_kwargs"] = {"period": max(1, steps // DWA_PERIODS)}
    if "sharing" in section:
        section["sharing"].update(r=args.r, alpha=args.alpha, dropout=args.lora_dropout)
        rate = args.lora_learning_rate if config == "mt_lora" else rate
    training = {"per_device_train_batch_size": batch, "per_device_eval_batch_size": 64, "max_steps": steps,
                "learning_rate": rate, "warmup_steps": args.warmup, "weight_decay": args.weight_decay,
                "bf16": args.bf16, "eval_strategy": "no", "logging_steps": max(1, steps // 20),
                "report_to": "none", "disable_tqdm": True,
                **({"save_strategy": "steps", "save_steps": args.checkpoint_every, "save_total_limit": 1}
                   if args.checkpoint_every else {"save_strategy": "no"})}
    if config == "mt_hybrid":
        training["adapter_learning_rate"] = args.adapter_learning_rate
    tasks = [{**bc.glue_task_config(t), **({"class_weights": "auto"} if t in args.class_weights else {})}
             for t in args.tasks]
    sampling = {"strategy": "proportional", **section.pop("sampling", {}), "group_by_length": args.group_by_length}
    return {"model": args.model, "data_dir": data_dir, "max_length": args.max_length, "tasks": tasks,
            "sampling": sampling, **section, "training": training}


def study_folder(args: argparse.Namespace) -> tuple[Path, Path, dict[str, int], dict[str, int]]:
    """Write the subsets; returns their folder, the study's folder (named after every setting that changes
    results: the recipes of every configuration and the subsets' sizes) and the train and dev rows per task."""
    data, train, dev = bc.write_glue_subsets(args.data_dir, args.cache_dir, args.train_sizes, args.eval_sizes,
                                             args.data_seed)
    recipes = {c: recipe(args, c, "data", train) for c in CONFIGS if c != SINGLE}
    return data, Path(args.cache_dir) / bc.settings_key({"recipes": recipes, "train": train, "dev": dev}), train, dev


def plan(args: argparse.Namespace, data: Path, folder: Path, train: dict[str, int]) -> Any:
    """One `Comparison` holding every run of the selected configurations: `manyheads compare`'s plan of
    mt_proportional (its multi-task run and the single-task runs), plus the multi-task run of each other
    configuration, planned the same way (their own single-task runs are not trained)."""
    import yaml

    from manyheads.recipe.compare_plan import MULTI_TASK, SINGLE_TASK, Comparison, plan_comparison

    class Study(Comparison):
        # A folder holds one study: its identity is the settings (in the folder's name), not the runs selected,
        # so that a rerun with more configurations or seeds continues it.
        @property
        def identity(self) -> dict[str, Any]:
            return {"config": {"study": folder.name}, "seeds": []}

    recipes = folder.with_name(f"{folder.name}-recipes")  # beside: compare wants the folder empty or its own
    recipes.mkdir(parents=True, exist_ok=True)
    runs = []
    # mt_proportional is always planned: its `manyheads compare` plan holds the single-task runs.
    for config in [c for c in CONFIGS if c == PROPORTIONAL or c in args.configs and c != SINGLE]:
        path = recipes / f"{config}.yaml"
        path.write_text(yaml.safe_dump(recipe(args, config, str(data), train), sort_keys=False), encoding="utf-8")
        alone = args.tasks if config == PROPORTIONAL else args.tasks[:1]
        comparison = plan_comparison(str(path), [], args.seeds, folder, alone=alone)
        for run in comparison.runs:
            if run.kind == MULTI_TASK and config in args.configs:
                run.name, run.kind = config, (MULTI_TASK if config == PROPORTIONAL else "variant")
                runs.append(run)
            elif run.kind == SINGLE_TASK and config == PROPORTIONAL and SINGLE in args.configs:
                runs.append(run)
        if config == PROPORTIONAL:
            base = comparison
    runs.sort(key=lambda r: r.seed)  # seeds outermost: an interrupted study already has whole seeds
    return Study(folder, base.config_path, args.seeds, base.run, base.config, runs)


# ----- results -> the study's rows -----
def run_row(folder: Path) -> dict[str, Any] | None:
    """A finished run's result (`manyheads compare`'s), with what the section adds: scores by metric, logged task
    weights, s/step and trainable parameters."""
    from manyheads.recipe.compare import read_result

    result = read_result(folder)
    if result is None:
        return None
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    log = state.get("log_history", [])
    runtime = next((e["train_runtime"] for e in log if "train_runtime" in e), None)
    trainable = re.search(r"model: [\d.]+M parameters, ([\d.]+)M trainable", (folder / "train.log").read_text())
    weights = [{k: v for k, v in e.items() if k == "step" or k.startswith("weight_")}
               for e in log if any(k.startswith("weight_") for k in e)]
    metrics = {t: {k[len(f"eval_{t}_"):]: v for k, v in result["metrics"].items() if k.startswith(f"eval_{t}_")}
               for t in result["tasks"]}
    return {**result, "by_task": metrics, "weights": weights, "runtime": runtime,
            "trainable": float(trainable.group(1)) * 1e6 if trainable else None}


def rows_of(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (configuration, seed) with every task's score: the single-task runs of a seed make one row."""
    rows = []
    for config in args.configs:
        names = [f"single-{t}" for t in args.tasks] if config == SINGLE else [config]
        for seed in args.seeds:
            results = [run_row(folder / name / f"seed-{seed}") for name in names]
            if any(r is None for r in results):
                continue
            tasks = {t: {"main": r["main"][t], "metrics": r["by_task"][t], "seen": r["examples"][t],
                         "steps": r["max_steps"]} for r in results for t in r["tasks"]}
            rows.append({"config": config, "seed": seed, "tasks": tasks, "params": [r["parameters"] for r in results],
                         "trainable": [r["trainable"] for r in results],
                         "weights": {f"run{i}": r["weights"] for i, r in enumerate(results) if r["weights"]},
                         "optimizer_steps": sum(r["max_steps"] for r in results),
                         "s_per_step": [r["runtime"] / r["max_steps"] for r in results if r["runtime"]],
                         "wall_s": sum(r["seconds"] for r in results)})
    return rows


def print_plan(study: Any, args: argparse.Namespace) -> None:
    print(f"plan: tasks {args.tasks}, seeds {args.seeds}; runs in {bc.display_path(study.output_dir)}")
    print(f"  {'run':16s} " + " ".join(f"{t:>6s}" for t in args.tasks) + "  steps")
    for run in [r for r in study.runs if r.seed == args.seeds[0]]:
        print(f"  {run.name:16s} " + " ".join(f"{run.examples.get(t, 0):6d}" for t in args.tasks)
              + f"  {run.max_steps:5d}")
    print(f"{len(study.runs)} runs ({len(args.seeds)} seed(s)), {args.jobs} at a time", flush=True)


def main(argv: list[str] | None = None, presets: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
         script: str = "quality.py") -> int:
    args = parse_args(argv, presets, defaults)
    invocation = bc.Invocation.of(script, argv)
    bc.quiet_libraries()
    data, folder, train, dev = study_folder(args)
    if not args.table_only:
        from manyheads.errors import RunStopped
        from manyheads.recipe.compare import run_comparison

        study = plan(args, data, folder, train)
        print_plan(study, args)
        if args.plan_only:
            return 0
        try:
            run_comparison(study, jobs=args.jobs, echo=lambda line: print(line, flush=True))
        except RunStopped as stopped:  # SIGTERM or a failed run: finished runs are kept, the same command continues
            print(f"{stopped.prefix}: {stopped}", file=sys.stderr)
            return stopped.exit_code
        except ValueError:
            # Raised after training, by compare.md's summary, which needs mt_proportional and single runs both.
            if {SINGLE, PROPORTIONAL} <= set(args.configs):
                raise
        for checkpoint in folder.glob("*/seed-*/checkpoint-*"):  # a finished run is never resumed: free the disk
            if (checkpoint.parent / "compare_result.json").is_file():
                shutil.rmtree(checkpoint)
    rows = rows_of(folder, args)
    if not rows:
        print("no finished runs yet: nothing to report")
        return 1
    import _quality_report as qr  # imports manyheads: not before the options are parsed

    settings = {"train": train, "dev": dev, **vars(args)}
    bc.publish(args, qr.report(args, settings, folder, rows, invocation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
