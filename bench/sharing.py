"""Soft sharing (GLUE-mini): hard vs lora vs hybrid multi-task models at equal examples seen (not a test).

What is compared
    The quality study's five GLUE tasks (RTE, MRPC, STS-B, CoLA, an SST-2 subset; see quality.py) on one MiniLM
    encoder, trained as ONE multi-task model with proportional sampling, in three sharing modes
    (`manyheads.modeling.adapters.Sharing`), three seeds each:

    - hard: the shared encoder trains, one head per task (the quality study's `mt_proportional`);
    - lora: the encoder frozen, one LoRA adapter per task (r, alpha, dropout, target modules below) + its head;
    - hybrid: the shared encoder trains, plus one LoRA adapter per task on top.

Equal examples seen
    Every configuration trains on the same fixed subsets (quality.py's CPU_TRAIN rows per task, optionally
    scaled by --scale), with the same sampler (proportional: every task sees exactly its single-task budget
    e_t = epochs * ceil(n_t / B) * B), the same micro-batch B and the same number of optimizer steps. Only
    the sharing mode and its learning rates differ.

Learning rates (stated in the results)
    hard: the quality study's learning rate (1e-4) for encoder and heads. lora: 5e-4 for adapters and heads
    (LoRA needs a higher rate; --lora_learning_rate). hybrid: 1e-4 for the encoder and heads, 5e-4 for the
    adapters (`adapter_learning_rate`, --adapter_learning_rate). The rest is the quality study's recipe: AdamW,
    linear decay, 10% warm-up, weight decay 0.01, batch 8, max_length 128, fp32. Each run records its
    optimizer's parameter groups (initial rate, parameter count), so the rates actually used are checked.

Measured per (configuration, seed), each in a FRESH subprocess (this script with an internal flag)
    - the main metric of every task on its fixed dev subset, once, at the end (quality.py's metrics: RTE acc,
      MRPC macro-F1, STS-B Spearman, CoLA MCC, SST-2 acc) and their average;
    - trainable parameters (requires_grad when training starts);
    - median seconds per optimizer step (intervals between consecutive step ends, step 1 left out);
    - peak RSS (VmHWM) of the subprocess when training ends (before evaluation), and its baseline (data
      loaded, model built, before the trainer);
    - for the first seed of each configuration: `save_pretrained` once, the size of model.safetensors and
      the parameters stored in it (read from its header).

Resuming
    Every finished (configuration, seed) is one JSON row under bench/out/sharing/<settings key>/rows/; the
    table is always rebuilt from the rows (--table_only rebuilds it without training).

Run from the repository root (see bench/README.md):

    HF_HUB_OFFLINE=1 python bench/sharing.py --data_dir ../shared/data

Results are appended to bench/RESULTS.md (unless --no_write) and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from _common import (
    GLUE,
    GLUE_TASKS,
    OUT_DIR,
    add_common_arguments,
    command_line,
    display_path,
    glue_task_config,
    header_lines,
    max_rss_mb,
    now,
    parse_with_presets,
    publish,
    quiet_libraries,
    require_files,
    run_probe,
    save_row,
    settings_key,
    step_timer,
    training_fields,
    write_glue_subset,
)
from _quality_report import Stat, difference_text, greater_is_better, metric_label

from manyheads.recipe import compare_table

RUN_FLAG = "--run_probe"  # internal: `sharing.py --run_probe SPEC.json` (one fresh training process)
TASKS = ("rte", "mrpc", "stsb", "cola", "sst2")
CONFIGS: dict[str, str] = {
    "hard": "one shared trainable encoder, a head per task",
    "lora": "encoder frozen, one LoRA adapter + head per task",
    "hybrid": "shared trainable encoder + one LoRA adapter per task",
}
REFERENCE = "hard"
# The quality study's default sizes (bench/quality.py CPU_TRAIN / CPU_EVAL), copied so that this script does not
# import quality.py's torch-dependent helpers before parsing options.
CPU_TRAIN = {"rte": 224, "mrpc": 320, "stsb": 432, "cola": 528, "sst2": 640}
CPU_EVAL = {"rte": None, "mrpc": None, "stsb": 400, "cola": 400, "sst2": 400}
QUICK = {"train_sizes": ["rte=16", "mrpc=16", "stsb=16", "cola=16", "sst2=16"],
         "eval_sizes": ["rte=24", "mrpc=24", "stsb=24", "cola=24", "sst2=24"],
         "batch_size": 8, "max_length": 64, "seeds": [1], "cache_dir": str(OUT_DIR / "sharing-quick")}


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
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--train_sizes", nargs="*", default=[],
                        help=f"task=N|all training rows per task (fixed random subsets); default {CPU_TRAIN} "
                             "(the quality study's) times --scale")
    parser.add_argument("--eval_sizes", nargs="*", default=[], help=f"task=N|all dev rows per task; default {CPU_EVAL}")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the default training rows by this (rounded to whole batches); explicit "
                             "--train_sizes are used as given")
    parser.add_argument("--epochs", type=int, default=1, help="passes over each task's subset (sets the budget)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=1e-4,
                        help="hard and hybrid: encoder and heads (the quality study's rate)")
    parser.add_argument("--lora_learning_rate", type=float, default=5e-4, help="lora: adapters and heads")
    parser.add_argument("--adapter_learning_rate", type=float, default=5e-4, help="hybrid: the adapters")
    parser.add_argument("--r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha")
    parser.add_argument("--lora_dropout", type=float, default=0.1)
    parser.add_argument("--target_modules", nargs="+", default=None,
                        help="adapted linear layers (default: PEFT's for BERT: query, value)")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (slow on this CPU)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the fixed train/dev subsets")
    parser.add_argument("--cache_dir", default=str(OUT_DIR / "sharing"),
                        help="where rows (one JSON per configuration and seed) and subsets are kept")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once, each a subprocess with cores/jobs torch threads (default: min(cores, 2) "
                             "on a CPU, 1 on a GPU)")
    parser.add_argument("--table_only", action="store_true", help="rebuild the table from cached rows; train nothing")
    args = parse_with_presets(parser, argv, {"quick": QUICK})
    if len(set(args.tasks)) < 2:
        parser.error("--tasks: multi-task needs at least 2 tasks")
    args.tasks = [t for t in TASKS if t in args.tasks]
    args.configs = [c for c in CONFIGS if c in args.configs]
    if args.batch_size < 1 or args.epochs < 1 or not 0 < args.scale <= 1 or not 0 <= args.warmup < 1:
        parser.error("--batch_size and --epochs must be >= 1, 0 < --scale <= 1, 0 <= --warmup < 1")
    default_train = {t: max(args.batch_size, round(n * args.scale / args.batch_size) * args.batch_size)
                     for t, n in CPU_TRAIN.items()}
    try:
        args.train_sizes = sizes_arg(args.train_sizes, args.tasks, default_train)
        args.eval_sizes = sizes_arg(args.eval_sizes, args.tasks, CPU_EVAL)
    except ValueError as err:
        parser.error(f"--train_sizes / --eval_sizes: {err}")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
    require_files(parser, args.data_dir, [Path(GLUE[t].folder) / f for t in args.tasks
                                          for f in (GLUE[t].train, GLUE[t].dev)])
    return args


# ----- settings and the run of one configuration -----
def sharing_section(config: str, args: argparse.Namespace) -> dict[str, Any]:
    section: dict[str, Any] = {"mode": config}
    if config != "hard":
        section.update({"r": args.r, "alpha": args.alpha, "dropout": args.lora_dropout,
                        "target_modules": args.target_modules})
    return section


def rates(config: str, args: argparse.Namespace) -> dict[str, float | None]:
    """learning_rate and adapter_learning_rate of one configuration (None: the default, = learning_rate)."""
    if config == "lora":
        return {"learning_rate": args.lora_learning_rate, "adapter_learning_rate": None}
    if config == "hybrid":
        return {"learning_rate": args.learning_rate, "adapter_learning_rate": args.adapter_learning_rate}
    return {"learning_rate": args.learning_rate, "adapter_learning_rate": None}


def settings_of(args: argparse.Namespace, train: dict[str, int], dev: dict[str, int]) -> dict[str, Any]:
    """Every setting that changes results (it names the cache folder: other settings, other rows)."""
    return {"model": args.model, "tasks": args.tasks, "train": train, "dev": dev, "epochs": args.epochs,
            "batch_size": args.batch_size, "rates": {c: rates(c, args) for c in CONFIGS},
            "sharing": {c: sharing_section(c, args) for c in CONFIGS}, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "max_length": args.max_length, "bf16": args.bf16,
            "data_seed": args.data_seed, "sampling": "proportional"}


def total_steps(args: argparse.Namespace, train: dict[str, int]) -> int:
    return sum(args.epochs * math.ceil(train[t] / args.batch_size) for t in args.tasks)


def run_dict(spec: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """The manyheads config of one run (the probe builds it)."""
    training = training_fields(output_dir, spec["batch_size"], spec["steps"], spec["seed"], spec["bf16"])
    training.update({"per_device_eval_batch_size": 64, "learning_rate": spec["learning_rate"],
                     "warmup_steps": spec["warmup"], "weight_decay": spec["weight_decay"]})
    if spec["adapter_learning_rate"] is not None:
        training["adapter_learning_rate"] = spec["adapter_learning_rate"]
    return {"model": spec["model"], "data_dir": spec["data_dir"], "max_length": spec["max_length"],
            "tasks": [glue_task_config(t) for t in spec["tasks"]], "sampling": {"strategy": "proportional"},
            "sharing": spec["sharing"], "training": training}


def safetensors_parameters(path: Path) -> int:
    """Parameters stored in a .safetensors file, from its header (8-byte length, then JSON)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def probe(spec_path: str) -> int:
    """Subprocess body: data, model (baseline RSS), train (step times, peak RSS), evaluate, save once."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import PrinterCallback

    from manyheads.recipe import build_config, build_model, build_trainer, prepare_data

    quiet_libraries()
    start = time.perf_counter()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="manyheads-sharing-") as workdir:
        run = build_config(run_dict(spec, workdir))
        prepared = prepare_data(run)
        model = build_model(run, prepared.tasks, seed=spec["seed"])
        out["baseline_mb"] = max_rss_mb()
        trainer = build_trainer(run, prepared, model=model)
        trainer.remove_callback(PrinterCallback)
        timer = step_timer()
        trainer.add_callback(timer)
        named = list(model.named_parameters())
        out["trainable"] = sum(p.numel() for _, p in named if p.requires_grad)
        out["trainable_adapters"] = sum(p.numel() for n, p in named if p.requires_grad and ".lora_" in n)
        out["total_params"] = sum(p.numel() for _, p in named)
        result = trainer.train()
        out["peak_train_mb"] = max_rss_mb()
        ends = timer.ends
        steps = [b - a for a, b in zip(ends, ends[1:])]  # step 1 (one-off costs) left out
        out["steps"] = len(ends)
        out["step_s_median"] = statistics.median(steps) if steps else float("nan")
        out["train_s"] = float(result.metrics.get("train_runtime", float("nan")))
        out["train_loss"] = float(result.metrics.get("train_loss", float("nan")))
        # The rates the optimizer actually used (the scheduler keeps each group's set rate as initial_lr).
        out["param_groups"] = [{"lr": g.get("initial_lr", g["lr"]), "params": sum(p.numel() for p in g["params"]),
                                "weight_decay": g.get("weight_decay", 0.0)} for g in trainer.optimizer.param_groups]
        metrics = trainer.evaluate()
        out["peak_mb"] = max_rss_mb()
        out["scores"] = {}
        for task in spec["tasks"]:
            prefix = f"eval_{task}_"
            out["scores"][task] = {k[len(prefix):]: float(v) for k, v in metrics.items()
                                   if k.startswith(prefix) and not k.endswith(("_runtime", "_per_second"))}
        if spec["save"]:
            folder = Path(workdir) / "saved"
            trainer.model.save_pretrained(folder)
            weights = folder / "model.safetensors"
            out["saved"] = {"safetensors_bytes": weights.stat().st_size,
                            "stored_params": safetensors_parameters(weights),
                            "folder_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
                            "files": sorted(f.name for f in folder.iterdir())}
    out["wall_s"] = round(time.perf_counter() - start, 1)
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))
    return 0


# ----- running -----
def seen_per_task(args: argparse.Namespace, train: dict[str, int], steps: int, seed: int) -> dict[str, int]:
    """Examples each task sees, from the schedule of the proportional sampler MultiTaskTrainer builds."""
    from manyheads.data.samplers import MultiTaskBatchSampler

    sizes = {t: train[t] for t in args.tasks}
    sampler = MultiTaskBatchSampler(sizes, args.batch_size, strategy="proportional", seed=seed)
    names = (args.tasks[i] for epoch in range(10**6) for i in sampler.task_order(epoch))
    out = dict.fromkeys(args.tasks, 0)
    for _ in range(steps):
        out[next(names)] += args.batch_size
    return out


def row_path(rows_dir: Path, config: str, seed: int) -> Path:
    return rows_dir / f"{config}-seed{seed}.json"


def load_rows(rows_dir: Path, configs: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        for seed in seeds:
            path = row_path(rows_dir, config, seed)
            if path.is_file():
                rows.append(json.loads(path.read_text(encoding="utf-8")))
    return rows


def train_row(args: argparse.Namespace, ctx: dict[str, Any], config: str, seed: int, save: bool,
              threads: int, jobs: int) -> dict[str, Any]:
    """One (configuration, seed) in a fresh subprocess; its row is saved at once (a resumed study starts after it)."""
    spec = {"model": args.model, "data_dir": ctx["data_dir"], "tasks": args.tasks, "seed": seed,
            "batch_size": args.batch_size, "steps": ctx["steps"], "bf16": args.bf16, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "max_length": args.max_length, "sharing": sharing_section(config, args),
            "save": save, "threads": threads, **rates(config, args)}
    load_before = os.getloadavg()
    out = run_probe(__file__, RUN_FLAG, spec, ctx["workdir"], f"{config}-seed{seed}")
    tasks = {}
    for task in args.tasks:
        scores = out["scores"][task]
        tasks[task] = {"metrics": scores, "main": scores[GLUE_TASKS[task]["main_metric"]],
                       "seen": ctx["seen"][seed][task]}
    row = {"config": config, "seed": seed, "settings": ctx["settings"], "tasks": tasks,
           **{k: v for k, v in out.items() if k != "scores"}, "date": now(), "load_before": load_before,
           "load_after": os.getloadavg(), "jobs": jobs}
    save_row(row_path(ctx["rows_dir"], config, seed), row)
    return row


def run_all(args: argparse.Namespace, ctx: dict[str, Any], todo: list[tuple[str, int]],
            saved: set[str]) -> None:
    """Train the missing (configuration, seed) pairs, --jobs subprocesses at once."""
    import torch

    jobs = args.jobs or (1 if torch.cuda.is_available() else max(1, min(os.cpu_count() or 1, 2)))
    jobs = min(jobs, max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"running {len(todo)} (configuration, seed) runs, {jobs} at once, {threads} torch thread(s) each; "
          f"{ctx['steps']} optimizer steps per run; rows in {ctx['rows_dir']}", flush=True)
    # The first seed of each configuration to run saves its model once (stored size), unless a row has it already.
    save_in = {}
    for config, seed in todo:
        if config not in saved and config not in save_in:
            save_in[config] = seed
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(train_row, args, ctx, c, s, save_in.get(c) == s, threads, jobs) for c, s in todo]
        for i, future in enumerate(as_completed(futures)):
            row = future.result()
            scores = ", ".join(f"{t} {100 * v['main']:.1f}" for t, v in row["tasks"].items())
            print(f"  [{i + 1}/{len(todo)}] seed {row['seed']} {row['config']:6s}: {scores}; "
                  f"{row['step_s_median']:.2f} s/step, peak {row['peak_train_mb']:.0f} MB ({row['wall_s']:.0f} s)",
                  flush=True)


# ----- report -----
def stats_of(rows: list[dict[str, Any]], tasks: list[str]) -> dict[str, dict[str, Stat]]:
    by_config: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)
    out = {}
    for config, runs in by_config.items():
        stats = {t: Stat([r["tasks"][t]["main"] for r in runs]) for t in tasks}
        stats["average"] = Stat([statistics.fmean(r["tasks"][t]["main"] * (1 if greater_is_better(t) else -1)
                                                  for t in tasks) for r in runs])
        out[config] = stats
    return out


def clear(a: Stat, b: Stat) -> bool | None:
    """Whether a and b differ beyond the seeds' spread, by the rule of `manyheads compare` that `difference_text`
    reports (Welch's t-test, p < 0.05); None with fewer than 2 seeds on a side."""
    if a.n < 2 or b.n < 2:
        return None
    return compare_table.compare_values(a.values, b.values).clear


def median_of(rows: list[dict[str, Any]], config: str, key: str) -> float:
    return statistics.median(r[key] for r in rows if r["config"] == config)


def saved_of(rows: list[dict[str, Any]], config: str) -> dict[str, Any] | None:
    return next((r["saved"] for r in rows if r["config"] == config and r.get("saved")), None)


def verdict_lines(rows: list[dict[str, Any]], stats: dict[str, dict[str, Stat]], tasks: list[str]) -> list[str]:
    """Plain-words conclusions, generated from the numbers."""
    lines = []
    base = stats.get(REFERENCE)
    soft = [c for c in CONFIGS if c in stats and c != REFERENCE]
    if base is None or not soft:
        return ["- verdict: needs `hard` and at least one of `lora` / `hybrid` in the rows."]
    for config in soft:
        s = stats[config]
        better = [t for t in tasks if s[t].mean > base[t].mean]
        worse = [t for t in tasks if s[t].mean < base[t].mean]
        worse_clear = [t for t in worse if clear(s[t], base[t])]
        better_clear = [t for t in better if clear(s[t], base[t])]
        avg = difference_text(s["average"], base["average"])
        average_clear = clear(s["average"], base["average"])
        if average_clear:
            word = "better than" if s["average"].mean > base["average"].mean else "worse than"
        elif average_clear is None:
            word = "one seed, so not decidable against"
        else:
            word = "not distinguishable from"
        lines.append(f"- **`{config}` vs `hard`, on average**: {s['average'].text()} vs {base['average'].text()}, "
                     f"{avg}: {word} hard sharing here.")
        lines.append(f"  - above hard on {len(better)} of {len(tasks)} tasks ({', '.join(better) or 'none'}; "
                     f"beyond the seeds' spread: {', '.join(better_clear) or 'none'}); **loses** on "
                     f"{', '.join(worse) or 'no task'} (beyond the seeds' spread: {', '.join(worse_clear) or 'none'}).")
        ties = [t for t in tasks if s[t].values and s[t].values == base[t].values]
        if ties:
            lines.append(f"  - identical to hard on every seed: {', '.join(ties)}.")
        # Costs.
        t_soft, t_hard = median_of(rows, config, "trainable"), median_of(rows, REFERENCE, "trainable")
        step_soft, step_hard = median_of(rows, config, "step_s_median"), median_of(rows, REFERENCE, "step_s_median")
        rss_soft, rss_hard = median_of(rows, config, "peak_train_mb"), median_of(rows, REFERENCE, "peak_train_mb")
        cost = (f"  - cost: trains {t_soft:,.0f} parameters ({t_soft / t_hard:.1%} of hard's {t_hard:,.0f}); "
                f"median step {step_soft:.2f} s vs {step_hard:.2f} s ({step_soft / step_hard:.2f}×); peak RSS "
                f"{rss_soft:.0f} MB vs {rss_hard:.0f} MB ({rss_soft - rss_hard:+.0f} MB)")
        sv_soft, sv_hard = saved_of(rows, config), saved_of(rows, REFERENCE)
        if sv_soft and sv_hard:
            extra = sv_soft["stored_params"] - sv_hard["stored_params"]
            mib_soft, mib_hard = sv_soft["safetensors_bytes"] / 2**20, sv_hard["safetensors_bytes"] / 2**20
            cost += (f"; stores {mib_soft:.1f} MiB vs {mib_hard:.1f} MiB ({extra:+,} parameters: the saved folder "
                     "holds the whole encoder"
                     + (" (frozen, pretrained) plus every task's adapter" if config == "lora" else
                        " plus every task's adapter") + ")")
        lines.append(cost + ".")
    # Which is best per column.
    configs = [c for c in CONFIGS if c in stats]
    for key in [*tasks, "average"]:
        values = {v for c in configs for v in stats[c][key].values}
        if len(values) == 1:
            lines.append(f"- **{key}**: every run of every configuration scored exactly {100 * values.pop():.1f}: "
                         "no difference between the sharing modes on it (one-class runs are counted below).")
    best = max(configs, key=lambda c: stats[c]["average"].mean)
    lines.append(f"- **best average**: `{best}` ({stats[best]['average'].text()}).")
    return lines


def constant_line(rows: list[dict[str, Any]], tasks: list[str]) -> list[str]:
    """Classification runs that predicted one class for every dev row (MCC exactly 0)."""
    parts = []
    for config in (c for c in CONFIGS if any(r["config"] == c for r in rows)):
        runs = [r for r in rows if r["config"] == config]
        found = []
        for task in tasks:
            mccs = [r["tasks"][task]["metrics"].get("mcc") for r in runs]
            k = sum(m == 0.0 for m in mccs if m is not None)
            if k:
                found.append(f"{task} {k}/{len(runs)}")
        parts.append(f"`{config}` {', '.join(found) or 'none'}")
    return ["- **Runs that predicted one class for every dev example** (MCC exactly 0; runs of the seeds): "
            + "; ".join(parts) + "."]


def report(args: argparse.Namespace, settings: dict[str, Any], rows_dir: Path, rows: list[dict[str, Any]],
           command: str, date: str, load_before: tuple[float, ...], load_after: tuple[float, ...],
           elapsed_s: float) -> str:
    tasks = args.tasks
    stats = stats_of(rows, tasks)
    configs = [c for c in CONFIGS if c in stats]
    best = {key: max(configs, key=lambda c: stats[c][key].mean) for key in [*tasks, "average"]}

    def cell(config: str, key: str) -> str:
        text = stats[config][key].text()
        return f"**{text}**" if best[key] == config and len(configs) > 1 else text

    head = [f"{t} {metric_label(t)}" for t in tasks]
    table = ["| sharing | " + " | ".join(head) + " | average | trainable params | stored params | stored MiB | "
             "s / step (median) | peak RSS MB | seeds |",
             "|---|" + "---:|" * (len(tasks) + 6) + "---|"]
    for c in configs:
        seeds = sorted(r["seed"] for r in rows if r["config"] == c)
        sv = saved_of(rows, c)
        stored = (f"{sv['stored_params']:,} | {sv['safetensors_bytes'] / 2**20:.1f}" if sv else "– | –")
        table.append(f"| `{c}` | " + " | ".join(cell(c, t) for t in tasks) + f" | {cell(c, 'average')} | "
                     f"{median_of(rows, c, 'trainable'):,.0f} | {stored} | {median_of(rows, c, 'step_s_median'):.2f} | "
                     f"{median_of(rows, c, 'peak_train_mb'):.0f} | {len(seeds)} ({', '.join(map(str, seeds))}) |")
    diff = ["| task | " + " | ".join(f"{c} − hard" for c in configs if c != REFERENCE) + " |",
            "|---|" + "---|" * (len(configs) - 1)]
    if REFERENCE in stats:
        for key in [*tasks, "average"]:
            label = f"{key} ({metric_label(key)})" if key != "average" else "average"
            diff.append(f"| {label} | " + " | ".join(difference_text(stats[c][key], stats[REFERENCE][key])
                                                     for c in configs if c != REFERENCE) + " |")
    first = rows[0]
    seen = ", ".join(f"{t} {first['tasks'][t]['seen']}" for t in tasks)
    groups = []
    for c in configs:
        r = next(x for x in rows if x["config"] == c)
        parts = ", ".join(f"{g['params']:,} params at {g['lr']:g}" for g in r["param_groups"])
        groups.append(f"`{c}`: {parts}")
    s = settings
    lora = s["sharing"]["lora"]
    targets = lora["target_modules"] or "PEFT's default for BERT (query, value)"
    rate_text = (f"hard: learning_rate {s['rates']['hard']['learning_rate']:g} (the quality study's, encoder and "
                 f"heads); lora: learning_rate {s['rates']['lora']['learning_rate']:g} (adapters and heads; "
                 f"adapter_learning_rate unset = learning_rate); hybrid: learning_rate "
                 f"{s['rates']['hybrid']['learning_rate']:g} (encoder and heads) + adapter_learning_rate "
                 f"{s['rates']['hybrid']['adapter_learning_rate']:g}")
    scaled = "" if args.scale == 1 else (f" (the quality study's CPU sizes × {args.scale:g}, rounded to whole "
                                          "batches, to fit this machine's time budget)")
    loads = [v for r in rows for v in (r["load_before"][0], r["load_after"][0])]
    dates = sorted(r["date"] for r in rows)
    run_minutes = sum(r["wall_s"] for r in rows) / 60
    jobs = sorted({(r["jobs"], r["threads"]) for r in rows})
    parallel = "; ".join(f"{j} at once, {t} torch thread(s) each" for j, t in jobs)
    lines = [
        *header_lines("sharing (GLUE-mini): hard vs lora vs hybrid multi-task models at equal examples seen",
                      command, date, load_before, load_after),
        f"- settings: model `{args.model}`; train rows {s['train']}{scaled}, dev rows {s['dev']} (fixed random "
        f"subsets, data seed {s['data_seed']}); one multi-task model per run, proportional sampling, "
        f"{s['epochs']} epoch(s) of single-task data: every task sees its whole subset once ({seen}), "
        f"{first['steps']} optimizer steps of micro-batch {s['batch_size']} in every configuration; AdamW, linear "
        f"decay, warm-up {s['warmup']:.0%}, weight decay {s['weight_decay']}; max_length {s['max_length']}; "
        f"{'bf16 autocast' if s['bf16'] else 'fp32'}; LoRA r {lora['r']}, alpha {lora['alpha']:g}, dropout "
        f"{lora['dropout']}, target modules {targets}; rows in `{display_path(rows_dir)}`",
        f"- learning rates (chosen, not tuned): {rate_text}. Optimizer groups as used (first seed): "
        + "; ".join(groups),
        f"- time: {run_minutes:.0f} min of runs summed over runs ({parallel}); "
        f"this invocation {elapsed_s / 60:.0f} min of wall-clock time; rows finished between {dates[0]} and "
        f"{dates[-1]}; 1-minute load average at their starts and ends {min(loads):.2f} to {max(loads):.2f}",
        "- how measured: each (configuration, seed) is a fresh subprocess; scores once at the end of training on "
        "the dev subset (no checkpoint selection); trainable params: requires_grad when training starts; stored: "
        "`save_pretrained` once per configuration (first seed), model.safetensors size and the parameters in its "
        "header; s / step: median interval between consecutive optimizer-step ends (step 1 left out), median over "
        "seeds, with runs side by side and other users' load (compare within this table only); peak RSS: VmHWM of "
        "the run's process when training ends (before evaluation), median over seeds",
        "",
        "Main metric ×100, mean ± sd over seeds (best of each column in bold).",
        "",
        *table,
        "",
        "Differences of means to `hard` (points ×100; \"larger than the seeds' spread\" = Welch's t-test over the "
        "seeds, p < 0.05, the rule of `manyheads compare`):",
        "",
        *diff,
        "",
        *verdict_lines(rows, stats, tasks),
        *constant_line(rows, tasks),
        "",
    ]
    return "\n".join(lines)


# ----- main -----
def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if len(raw) == 2 and raw[0] == RUN_FLAG:
        return probe(raw[1])
    args = parse_args(argv)
    command = command_line("sharing.py", argv)
    date = now()
    start = time.perf_counter()
    load_before = os.getloadavg()
    subsets = {"train": args.train_sizes, "dev": args.eval_sizes, "data_seed": args.data_seed}
    staging = Path(args.cache_dir) / f"data-{settings_key(subsets)}"
    train = {t: write_glue_subset(args.data_dir, staging, t, "train", args.train_sizes[t], args.data_seed)
             for t in args.tasks}
    dev = {t: write_glue_subset(args.data_dir, staging, t, "dev", args.eval_sizes[t], args.data_seed,
                                sort_by_length=True) for t in args.tasks}
    settings = settings_of(args, train, dev)
    rows_dir = Path(args.cache_dir) / settings_key(settings) / "rows"
    existing = load_rows(rows_dir, args.configs, args.seeds)
    done = {(r["config"], r["seed"]) for r in existing}
    # Seeds outermost: an interrupted study already has whole seeds of every configuration.
    todo = [] if args.table_only else [(c, s) for s in args.seeds for c in args.configs if (c, s) not in done]
    if done:
        print(f"resuming: {len(done)} (configuration, seed) runs already in {rows_dir}")
    if todo:
        steps = total_steps(args, train)
        with tempfile.TemporaryDirectory(prefix="manyheads-sharing-bench-") as workdir:
            ctx = {"data_dir": str(staging), "rows_dir": rows_dir, "settings": settings, "steps": steps,
                   "workdir": workdir, "seen": {s: seen_per_task(args, train, steps, s) for s in args.seeds}}
            print(f"train rows {train}, dev rows {dev}")
            run_all(args, ctx, todo, saved={r["config"] for r in existing if r.get("saved")})
    rows = load_rows(rows_dir, args.configs, args.seeds)
    if not rows:
        print("no rows yet: nothing to report")
        return 1
    quiet_libraries()
    publish(args, report(args, settings, rows_dir, rows, command, date, load_before, os.getloadavg(),
                         time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
