"""Training throughput: manyheads vs the plain `Trainer`, with and without padding waste (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/throughput.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import _common as bc

# Single-sentence and sentence-pair GLUE classification tasks: --task picks the length mix (SST-2 is short,
# RTE long pairs).
TASKS = {"sst2": ("sentence",), "cola": ("sentence",), "mrpc": ("sentence1", "sentence2"),
         "rte": ("sentence1", "sentence2")}
TARGET_OVERHEAD = 0.98  # manyheads / plain dynamic, same batches
TARGET_VS_MAX_LENGTH = 3.5  # manyheads / plain max_length
TARGET_GROUPING = 1.5  # defaults (grouping on) / old defaults (grouping off), issue 25
PLAIN_MAXLEN, PLAIN, MANYHEADS, GROUPED = "plain_max_length", "plain", "manyheads", "manyheads_grouped"
KINDS = (PLAIN_MAXLEN, PLAIN, MANYHEADS, GROUPED)
LABELS = {
    PLAIN_MAXLEN: "plain Trainer, padding=max_length (tutorial recipe)",
    PLAIN: "plain Trainer, dynamic padding",
    MANYHEADS: "MultiTaskTrainer (1 task), group_by_length off (old default)",
    GROUPED: "MultiTaskTrainer (1 task), defaults (group_by_length on)",
}
PRECISIONS = ("fp32", "bf16")
QUICK = {"samples": 64, "batch_size": 16, "max_length": 64, "repeats": 1, "warmup_steps": 1,
         "precisions": ["fp32"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "TASK/train.tsv (GLUE, read with quoting none)")
    parser.add_argument("--task", default="sst2", choices=list(TASKS),
                        help="which GLUE classification task's rows (the length mix: sst2 short, rte long pairs)")
    parser.add_argument("--no_peak", action="store_true", help="skip the matmul peak and the fraction of it")
    parser.add_argument("--samples", type=int, default=512,
                        help="training examples per run (rounded down to a multiple of --batch_size)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each set-up and precision")
    parser.add_argument("--warmup_steps", type=int, default=2,
                        help="steps of the untimed warm-up run of each set-up (0: no warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="precisions timed in this run (bf16: mixed-precision autocast)")
    parser.add_argument("--bf16", action="store_true", help="shorthand for --precisions bf16")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    if args.bf16:
        args.precisions = ["bf16"]
    args.precisions = list(dict.fromkeys(args.precisions))
    if args.samples < args.batch_size or args.batch_size < 1:
        parser.error(f"--samples ({args.samples}) must be >= --batch_size ({args.batch_size}) >= 1")
    if args.repeats < 1 or args.warmup_steps < 0:
        parser.error("--repeats must be >= 1 and --warmup_steps >= 0")
    bc.require_files(parser, args.data_dir, [Path(args.task) / "train.tsv"])
    return args


# ----- set-up -----
@dataclass
class Setup:
    """Everything the set-ups share: data, batch order and initial weights."""

    run: Any  # manyheads RunConfig
    prepared: Any  # manyheads PreparedData
    order: list[int]  # row order of the multi-task sampler's epoch 0
    max_length_rows: Any  # the same rows in that order, padded to max_length (a datasets.Dataset)
    mt_model: Any  # MultiTaskModel, initial weights (never trained)
    stock_model: Any  # AutoModelForSequenceClassification with the same weights (never trained)
    steps: int
    padded_share: dict[str, float]  # set-up -> share of padding tokens in its timed batches
    output_dir: str
    real_tokens: int  # non-padding tokens of the timed rows (the same rows in every set-up)
    flops: float  # model FLOPs of training on those real tokens (forward + backward)


def sampler_batches(setup_sizes: dict[str, int], batch_size: int, seed: int,
                    lengths: dict[str, list[int]] | None = None) -> list[list[int]]:
    """The batches of epoch 0 of the sampler MultiTaskTrainer builds for one task."""
    from manyheads.data.samplers import MultiTaskBatchSampler

    sampler = MultiTaskBatchSampler(setup_sizes, batch_size=batch_size, seed=seed, lengths=lengths)
    return [batch for _, batch in sampler.schedule(0)]


def padding_share(lengths: list[int], batches: list[list[int]], width: int | None = None) -> float:
    """Share of padding tokens when each batch is padded to `width` (None: to its longest row)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum((width or max(lengths[i] for i in b)) * len(b) for b in batches)
    return 1 - real / padded


def training_flops(model: Any, task: str, lengths: list[int]) -> float:
    """Forward + backward (3 x forward) FLOPs of rows of these real lengths: 2 x each linear weight a token passes
    through, 4 x layers x hidden x length per token for attention (scores and weighted sum), and the pooler and
    head once per row. Padding is not counted: this is the useful work."""
    import torch

    per_token = sum(m.weight.numel() for name, m in model.encoder.named_modules()
                    if isinstance(m, torch.nn.Linear) and "pooler" not in name)
    per_row = sum(m.weight.numel() for name, m in model.encoder.named_modules()
                  if isinstance(m, torch.nn.Linear) and "pooler" in name)
    per_row += sum(m.weight.numel() for m in model.heads[task].modules() if isinstance(m, torch.nn.Linear))
    layers, hidden = model.encoder.config.num_hidden_layers, model.encoder.config.hidden_size
    forward = sum(2 * per_token * n + 4 * layers * hidden * n * n + 2 * per_row for n in lengths)
    return 3.0 * forward


def matmul_peak(precision: str, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a `size`^3 matmul in `precision` with this process's torch threads: the best of `repeats`
    timed products after three untimed ones (the machine's reachable peak for that precision)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for i in range(repeats + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def build_setup(args: argparse.Namespace, output_dir: str) -> Setup:
    from transformers import AutoModelForSequenceClassification

    from manyheads.recipe import build_config, build_model, prepare_data

    steps = args.samples // args.batch_size
    samples = steps * args.batch_size  # whole batches: then every set-up trains on exactly the same rows
    # A clean TSV of a fixed random subset of the task's rows (GLUE's raw files differ in layout).
    data_dir = Path(output_dir) / "data"
    bc.write_glue_subset(args.data_dir, data_dir, args.task, "train", samples, seed=0)
    text = list(TASKS[args.task])
    run = build_config({
        "model": args.model,
        "data_dir": str(data_dir),
        "max_length": args.max_length,
        "tasks": [{
            "name": args.task, "type": "classification", "text": text if len(text) > 1 else text[0],
            "label": "label", "data": {"train": f"{args.task}/train.tsv", "quoting": "none"},
        }],
        **bc.training_fields(output_dir, args.batch_size, steps, args.seed, bf16=False),
    })
    prepared = prepare_data(run)
    task = args.task
    train = prepared.train[task]
    mt_model = build_model(run, prepared.tasks, seed=args.seed)

    num_labels = mt_model.heads[task].classifier.out_features
    stock = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    prefix = stock.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in mt_model.encoder.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in mt_model.heads[task].classifier.state_dict().items()})
    missing, unexpected = stock.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"stock model does not match the multi-task model: missing {missing}, "
                         f"unexpected {unexpected}")

    lengths = [len(ids) for ids in train["input_ids"]]
    batches = sampler_batches({task: len(train)}, args.batch_size, args.seed)[:steps]
    grouped = sampler_batches({task: len(train)}, args.batch_size, args.seed, lengths={task: lengths})[:steps]
    if sorted(i for b in grouped for i in b) != sorted(i for b in batches for i in b):
        raise SystemExit("the grouped sampler draws other rows than the plain one: the comparison is invalid")
    order = [i for batch in batches for i in batch]
    tokenizer = prepared.tokenizer
    columns = [c for c in tokenizer.model_input_names if c in train.column_names] + ["labels"]
    # The tutorial recipe: tokenizer(..., padding="max_length", truncation=True); padding the already
    # truncated ids with the tokenizer gives exactly the same tensors.
    max_length_rows = train.select(order).select_columns(columns).map(
        lambda batch: dict(tokenizer.pad({k: batch[k] for k in columns if k != "labels"}, padding="max_length",
                                         max_length=args.max_length)), batched=True)
    padded_share = {
        PLAIN_MAXLEN: padding_share(lengths, batches, args.max_length),
        PLAIN: padding_share(lengths, batches),
        MANYHEADS: padding_share(lengths, batches),
        GROUPED: padding_share(lengths, grouped),
    }
    timed = [lengths[i] for i in order]
    return Setup(run=run, prepared=prepared, order=order, max_length_rows=max_length_rows, mt_model=mt_model,
                 stock_model=stock, steps=steps, padded_share=padded_share, output_dir=output_dir,
                 real_tokens=sum(timed), flops=training_flops(mt_model, task, timed))


def make_trainer(kind: str, setup: Setup, args: argparse.Namespace, steps: int, precision: str) -> Any:
    """A fresh trainer of `kind` on a fresh copy of the initial weights, training for `steps` steps."""
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from manyheads.recipe import build_trainer

    fields = bc.training_fields(os.path.join(setup.output_dir, kind), args.batch_size, steps, args.seed,
                                bf16=precision == "bf16")
    if kind in (MANYHEADS, GROUPED):
        run = dataclasses.replace(setup.run, training={**fields, "group_by_length": kind == GROUPED})
        trainer = build_trainer(run, setup.prepared, model=copy.deepcopy(setup.mt_model))
    else:
        if kind == PLAIN_MAXLEN:
            rows, collator = setup.max_length_rows, default_data_collator
        else:
            rows = setup.prepared.train[args.task].select(setup.order).remove_columns("task")
            collator = DataCollatorWithPadding(setup.prepared.tokenizer)
        trainer = Trainer(model=copy.deepcopy(setup.stock_model),
                          args=TrainingArguments(**fields, train_sampling_strategy="sequential"),
                          train_dataset=rows, data_collator=collator)
    trainer.remove_callback(PrinterCallback)
    return trainer


def check_same_batches(setup: Setup, args: argparse.Namespace) -> None:
    """plain, manyheads and plain max_length get the same tokens and labels, batch by batch."""
    import torch

    loaders = {kind: make_trainer(kind, setup, args, setup.steps, "fp32").get_train_dataloader()
               for kind in (PLAIN, MANYHEADS, PLAIN_MAXLEN)}
    checked = 0
    for step, (a, b, m) in enumerate(islice(zip(*loaders.values(), strict=False), setup.steps)):
        same = all(torch.equal(a[k].cpu(), b[k].cpu()) for k in ("input_ids", "attention_mask", "labels"))
        width = a["input_ids"].shape[1]
        # The max_length batch is the dynamic one plus padding columns.
        same_padded = (m["input_ids"].shape[1] == args.max_length and torch.equal(m["labels"], a["labels"])
                       and torch.equal(m["input_ids"][:, :width], a["input_ids"])
                       and not m["attention_mask"][:, width:].any())
        if not (same and same_padded):
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
    runs: dict[tuple[str, str], list[Timing]] = field(default_factory=dict)  # (precision, kind) -> runs
    peak: dict[str, float] = field(default_factory=dict)  # precision -> matmul FLOP/s (empty with --no_peak)


def timed_train(kind: str, setup: Setup, args: argparse.Namespace, steps: int, precision: str) -> Timing:
    import torch

    trainer = make_trainer(kind, setup, args, steps, precision)
    cuda = torch.cuda.is_available() and trainer.args.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    timing = Timing(trainer_sps=float(output.metrics["train_samples_per_second"]),
                    wall_sps=steps * args.batch_size / wall,
                    loss=float(output.metrics.get("train_loss", float("nan"))))
    del trainer, output
    gc.collect()
    return timing


def run_benchmark(setup: Setup, args: argparse.Namespace) -> Results:
    results = Results()
    if not args.no_peak:
        results.peak = {precision: matmul_peak(precision) for precision in args.precisions}
    if args.warmup_steps:
        for precision in args.precisions:
            for kind in KINDS:
                timed_train(kind, setup, args, min(args.warmup_steps, setup.steps), precision)
    for i in range(args.repeats):
        for precision in args.precisions:
            for kind in KINDS:
                timing = timed_train(kind, setup, args, setup.steps, precision)
                results.runs.setdefault((precision, kind), []).append(timing)
                print(f"  run {i + 1}/{args.repeats} {precision} {kind:17s}: {timing.trainer_sps:8.2f} samples/s "
                      f"(Trainer), {timing.wall_sps:8.2f} (wall), train_loss {timing.loss:.4f}", flush=True)
    if results.peak:
        # Measured again at the end: a peak depressed by a passing load would inflate the fractions.
        results.peak = {p: max(v, matmul_peak(p)) for p, v in results.peak.items()}
    return results


# ----- report -----
def pair_ratio(results: Results, num: tuple[str, str], den: tuple[str, str], attr: str = "trainer_sps"
               ) -> tuple[float, float]:
    """(median of per-repeat ratios num/den, ratio of medians) of one timing."""
    a = [getattr(t, attr) for t in results.runs[num]]
    b = [getattr(t, attr) for t in results.runs[den]]
    return statistics.median(x / y for x, y in zip(a, b, strict=True)), statistics.median(a) / statistics.median(b)


def precision_lines(results: Results, setup: Setup, precision: str) -> list[str]:
    samples = setup.steps * setup.run.training["per_device_train_batch_size"]
    peak = results.peak.get(precision)
    rows = [
        f"**{precision}**" + (f" (matmul peak, 2048^3: {peak / 1e9:.0f} GFLOP/s)" if peak else ""),
        "",
        "| set-up | padded-token share | samples/s median (Trainer) | samples/s median (wall) | real tokens/s "
        "| model GFLOP/s on real tokens | fraction of matmul peak | runs (Trainer) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind in KINDS:
        runs = results.runs[(precision, kind)]
        sps = statistics.median(t.trainer_sps for t in runs)
        flops = setup.flops * sps / samples
        rows.append(f"| {LABELS[kind]} | {setup.padded_share[kind]:.1%} | {sps:.2f} | "
                    f"{statistics.median(t.wall_sps for t in runs):.2f} | {setup.real_tokens * sps / samples:.0f} | "
                    f"{flops / 1e9:.1f} | {f'{flops / peak:.2f}' if peak else 'n/a'} | "
                    f"{len(runs)}: {bc.ratio_text([t.trainer_sps for t in runs])} |")
    rows.append("")
    comparisons = [  # (numerator, denominator, target or None)
        (MANYHEADS, PLAIN, TARGET_OVERHEAD),
        (MANYHEADS, PLAIN_MAXLEN, TARGET_VS_MAX_LENGTH),
        (GROUPED, PLAIN_MAXLEN, None),
        (GROUPED, MANYHEADS, TARGET_GROUPING),
        (PLAIN, PLAIN_MAXLEN, None),
    ]
    for num, den, target in comparisons:
        per_pair, of_medians = pair_ratio(results, (precision, num), (precision, den))
        wall, _ = pair_ratio(results, (precision, num), (precision, den), "wall_sps")
        verdict = ""
        if target is not None:
            verdict = f"; target >= {target}: **{'met' if per_pair >= target else 'not met'}**"
        rows.append(f"- {num} / {den}: median of per-repeat ratios **{per_pair:.3f}** (wall clock {wall:.3f}), "
                    f"ratio of medians {of_medians:.3f}{verdict}")
    return rows + [""]


def report(args: argparse.Namespace, setup: Setup, results: Results, invocation: bc.Invocation) -> str:
    settings = (f"model `{args.model}`, task {args.task} ({setup.steps * args.batch_size} samples, {setup.steps} steps "
                f"of {args.batch_size}, max_length {args.max_length}), precisions {', '.join(args.precisions)}, "
                f"seed {args.seed}, timed runs {args.repeats} of each set-up and precision, alternating within "
                f"each repeat, untimed warm-up {args.warmup_steps} steps of each; batch check: plain, manyheads "
                "and max_length get the same tokens and labels, grouped the same rows; "
                f"{setup.real_tokens} real tokens, {setup.flops / 1e9:.0f} GFLOP of training on them")
    title = f"throughput on {args.task}: manyheads defaults vs grouping off vs plain Trainer"
    lines = [*invocation.header(title), f"- settings: {settings}", ""]
    for precision in args.precisions:
        lines += precision_lines(results, setup, precision)
    if len(args.precisions) == 2:
        lines.append("- bf16 / fp32 (median of per-repeat ratios, Trainer metric): " + ", ".join(
            f"{kind} {pair_ratio(results, ('bf16', kind), ('fp32', kind))[0]:.3f}" for kind in KINDS))
        fast = "bf16" if bf16_is_fast() else "fp32"
        lines.append(f"- defaults on this machine (bf16 auto -> {fast}, grouping on) / old defaults (fp32, grouping "
                     f"off): {pair_ratio(results, (fast, GROUPED), ('fp32', MANYHEADS))[0]:.3f}")
        lines.append("")
    return "\n".join(lines)


def bf16_is_fast() -> bool:
    from manyheads.hardware import bf16_is_fast as fast

    return fast()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("throughput.py", argv)
    bc.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-") as output_dir:
        print(f"preparing {args.samples} samples of {args.task}, model {args.model}", flush=True)
        setup = build_setup(args, output_dir)
        check_same_batches(setup, args)
        print(f"timing {args.repeats} alternating runs of {len(KINDS)} set-ups x {len(args.precisions)} "
              f"precision(s), {setup.steps} steps of {args.batch_size}", flush=True)
        results = run_benchmark(setup, args)
    bc.publish(args, report(args, setup, results, invocation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
