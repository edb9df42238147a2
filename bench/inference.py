"""Inference throughput: N tasks from one encoder pass vs N separately loaded single-task models (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/inference.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/_common.py sits next to this file (a script's folder is first on sys.path); importing it runs only
# standard-library code.
import _common as bc

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
QUICK = {"samples": 32, "repeats": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, f"{DATA_FILE} (GLUE SST-2, read with quoting none)")
    parser.add_argument("--tasks", type=bc.positive, default=4,
                        help="number of tasks N (cycling classification/2, classification/5, multilabel/4, "
                             "regression)")
    parser.add_argument("--samples", type=bc.positive, default=872, help="input sentences (872: all of SST-2 dev)")
    parser.add_argument("--batch_size", type=bc.positive, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=bc.positive, default=3, help="timed passes of each set-up")
    parser.add_argument("--seed", type=int, default=42, help="seed of the heads' initial weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=bc.positive, default=None,
                        help="torch CPU threads, in this process and the memory subprocesses "
                             "(default: torch's own choice)")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    if args.max_length < 8:
        parser.error("--max_length must be >= 8")
    bc.require_files(parser, args.data_dir, [DATA_FILE])
    return args


# ----- inputs and tasks -----
def read_sentences(data_dir: str, samples: int) -> list[dict[str, str]]:
    """The first `samples` rows of SST-2 dev as records `{"sentence": ...}`."""
    rows = bc.read_glue(data_dir, "sst2", "dev")
    if len(rows) < samples:
        raise SystemExit(f"{Path(data_dir) / DATA_FILE} has {len(rows)} rows; --samples is {samples}")
    return [{TEXT_COLUMN: row[TEXT_COLUMN]} for row in rows[:samples]]


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


def export_stock(model: Any, folder: str | Path, workdir: str | Path, prefix: str) -> list[StockTask]:
    """One stock folder per task of the model saved in `folder` (`manyheads.export.stock.export_task`), named
    `<workdir>/<prefix>-<task>`. A multilabel head's `threshold: tuned` is fitted only by an evaluation, so the
    stock set-up uses 0.5 unless the task has a number (the predictor's own value before fitting)."""
    from manyheads.export.stock import export_task, stock_auto_class

    out = []
    for name, task in model.tasks.items():
        path = os.path.join(workdir, f"{prefix}-{name}")
        export_task(str(folder), name, path)
        threshold = getattr(task, "threshold", 0.5)
        out.append(StockTask(name, task.type, path, stock_auto_class(model, name),
                             threshold if isinstance(threshold, (int, float)) else 0.5))
    return out


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

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = task_configs(args.tasks, args.max_length)
    set_seed(args.seed)
    model = MultiTaskModel.from_encoder(args.model, configs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    folder = os.path.join(workdir, MANYHEADS)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    stock_tasks = export_stock(model, folder, workdir, SEPARATE)
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


def prediction_difference(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> tuple[int, float]:
    """(labels that differ, largest score difference) over every task of two set-ups' predictions."""
    differ, worst = 0, 0.0
    for a, b in zip(ours, theirs):
        for x, y in ((a[task], b[task]) for task in a):
            differ += "label" in x and x["label"] != y["label"]
            keys = x["scores"] if "scores" in x else ()
            pairs = [(x["scores"][k], y["scores"][k]) for k in keys] or [(x["score"], y["score"])]
            worst = max(worst, *(abs(u - v) for u, v in pairs))
    return differ, worst


def check_same_predictions(setup: Setup, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    """Abort unless both set-ups predict the same; a one-line summary otherwise."""
    differ, worst = prediction_difference(ours, theirs)
    if differ or worst > SCORE_ATOL:
        raise SystemExit(f"the set-ups predict different labels ({differ}) or scores (up to {worst:.2e}; allowed "
                         f"{SCORE_ATOL}) for {len(ours)} rows: the comparison is invalid")
    return (f"equal labels of every classification task on all {len(ours)} rows; largest score difference over "
            f"all {len(setup.task_types)} tasks {worst:.1e}")


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
    baseline = bc.max_rss_mb()
    setup = Setup(device=spec["device"], threads=spec["threads"], task_types={}, padded_share=0.0,
                  manyheads_folder=spec["manyheads_folder"], disk={},
                  stock_tasks=[StockTask(**t) for t in spec["stock_tasks"]])
    cuda = torch.device(setup.device).type == "cuda"
    runner = load_runner(spec["kind"], setup, spec["batch_size"], spec["max_length"])
    loaded = bc.max_rss_mb()
    timed_pass(runner.predict, records, cuda)
    out = {"baseline_mb": baseline, "loaded_mb": loaded, "peak_mb": bc.max_rss_mb()}
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return 0


def measure_memory(kind: str, setup: Setup, args: argparse.Namespace, workdir: str) -> dict[str, float]:
    spec = {"kind": kind, "device": setup.device, "threads": setup.threads, "data_dir": args.data_dir,
            "samples": args.samples, "batch_size": args.batch_size, "max_length": args.max_length,
            "manyheads_folder": setup.manyheads_folder,
            "stock_tasks": [vars(t) for t in setup.stock_tasks]}
    return bc.run_probe(__file__, spec, workdir, f"memory-{kind}")


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


def report(args: argparse.Namespace, setup: Setup, results: Results, invocation: bc.Invocation) -> str:
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
                    f"{len(runs)}: {bc.ratio_text(runs)} | "
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
        *invocation.header(f"inference: {n} heads on one encoder pass vs {n} separate models"),
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
    args = parse_args(argv)
    invocation = bc.Invocation.of("inference.py", argv)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bc.quiet_libraries()
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
    bc.publish(args, report(args, setup, results, invocation))
    return 0


if __name__ == "__main__":
    bc.script_main(main, memory_probe)
