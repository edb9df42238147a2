"""Peak memory and speed of `manyheads predict` as the input grows, before and after streaming (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    python bench/predict_memory.py            # appends its section to bench/RESULTS.md
    python bench/predict_memory.py --quick    # 0/500/5,000 rows; results to bench/out/RESULTS-quick.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as bc

VERSIONS = ("before", "after")
TARGET = 1.2  # after: peak RSS at the largest size / at the second largest
WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "weak", "red", "green", "blue", "yellow", "the",
         "a", "item", "was", "very", "it", "is", "and", "thing", "box", "not", "really", "quite", "big", "small"]
TASKS = {"sentiment": ["sentence1"], "match": ["sentence1", "sentence2"]}
FILES = ("src/manyheads/inference.py", "src/manyheads/cli/predict.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000],
                        help="input sizes (default: 20000 200000; a 0-row start-up run is added)")
    parser.add_argument("--batch_size", type=int, default=32, help="rows per encoder pass (default: 32)")
    parser.add_argument("--chunk_rows", type=int, default=None, help="after: --chunk_rows (default: the CLI's)")
    parser.add_argument("--before_ref", default=None,
                        help="git revision of the 'before' files (default: the newest revision of cli/predict.py "
                             "without chunked streaming, `chunk_rows`)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each predict process (default: 1, steadier on a shared 2-core machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated rows and the model (default: 0)")
    bc.add_output_arguments(parser, "0/500/5,000 rows")
    if parser.parse_args(argv).quick:  # smoke sizes; an explicit --rows still wins
        parser.set_defaults(rows=[500, 5_000])
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.rows) or min(args.batch_size, args.threads, args.chunk_rows or 1) < 1:
        parser.error("--rows, --batch_size, --chunk_rows and --threads must be >= 1")
    args.rows = sorted(set(args.rows))
    args.results = args.results or str(bc.QUICK_RESULTS if args.quick else bc.DEFAULT_RESULTS)
    return args


# ----- set-up: model, inputs, the 'before' package -----
def build_model(folder: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from manyheads import Classification, MultiTaskModel

    torch.manual_seed(seed)
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    tasks = [Classification(name=name, text=columns, labels=["no", "yes"], max_length=128)
             for name, columns in TASKS.items()]
    MultiTaskModel.from_encoder(BertModel(config), tasks).save_pretrained(folder)
    BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128).save_pretrained(folder)


def write_rows(path: Path, rows: int, seed: int) -> None:
    """JSONL of `rows` records `{"sentence1": ..., "sentence2": ...}`, 5 to 20 words each."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            record = {c: " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) for c in ("sentence1", "sentence2")}
            out.write(json.dumps(record) + "\n")


def git(*command: str) -> str:
    done = subprocess.run(["git", *command], cwd=bc.REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def default_before_ref() -> str:
    """The newest revision of the predict command without chunked streaming (no `--chunk_rows`): the code
    before streaming, whether the change is committed yet or not. (The predict command, not inference.py: the
    streaming reader later moved out of inference.py into records.py.)"""
    for commit in git("log", "--format=%H", "--", FILES[1]).split():
        if "chunk_rows" not in git("show", f"{commit}:{FILES[1]}"):
            return commit
    raise SystemExit(f"no revision of {FILES[1]} without chunk_rows; give --before_ref")


def before_package(workdir: Path, ref: str) -> Path:
    """A copy of the working tree's package with the predict files of `ref`; returns the PYTHONPATH entry."""
    root = workdir / "before"
    shutil.copytree(bc.REPO / "src" / "manyheads", root / "manyheads", ignore=shutil.ignore_patterns("__pycache__"))
    for file in FILES:
        (root / file.removeprefix("src/")).write_text(git("show", f"{ref}:{file}"), encoding="utf-8")
    return root


# ----- one run: a fresh interpreter calling the CLI -----
def probe(spec_path: str) -> int:
    """Subprocess body: `manyheads predict` in this process, then its peak RSS and wall clock as JSON."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    start = time.perf_counter()
    import torch

    import manyheads
    from manyheads.cli.main import main as cli

    torch.set_num_threads(spec["threads"])
    code = cli(spec["argv"])
    seconds = time.perf_counter() - start
    print(json.dumps({"rc": code, "seconds": seconds, "peak_mb": bc.max_rss_mb(), "package": manyheads.__file__}))
    return 0


def run_version(version: str, path_entry: Path, model: Path, rows_file: Path, out: Path, args: argparse.Namespace,
                workdir: Path) -> dict[str, Any]:
    argv = ["predict", str(model), "--input", str(rows_file), "--output", str(out),
            "--batch_size", str(args.batch_size), "--device", "cpu"]
    if version == "after" and args.chunk_rows:
        argv += ["--chunk_rows", str(args.chunk_rows)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path_entry), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(args.threads)}
    result = bc.run_probe(__file__, {"argv": argv, "threads": args.threads}, workdir, version, env)
    if result["rc"] != 0:
        raise SystemExit(f"{version}: manyheads predict exited {result['rc']}:\n{result['stderr'][-4000:]}")
    if not result["package"].startswith(str(path_entry)):
        raise SystemExit(f"{version}: ran the package at {result['package']}, not the one in {path_entry}")
    return result


def compare(before: Path, after: Path, rows: int) -> dict[str, Any]:
    """Row by row: line counts, labels that differ, the largest score difference, over every task."""
    differ, worst, lines = 0, 0.0, [0, 0]
    with before.open(encoding="utf-8") as a, after.open(encoding="utf-8") as b:
        for line_a, line_b in zip(a, b):
            x, y = json.loads(line_a), json.loads(line_b)
            lines = [lines[0] + 1, lines[1] + 1]
            for task in TASKS:
                differ += x[task]["label"] != y[task]["label"]
                worst = max(worst, *(abs(x[task]["scores"][k] - y[task]["scores"][k]) for k in x[task]["scores"]))
        lines[0] += sum(1 for _ in a)
        lines[1] += sum(1 for _ in b)
    if lines != [rows, rows]:
        raise SystemExit(f"output lines {lines} for {rows} rows: the comparison is invalid")
    return {"label_differences": differ, "worst_score_difference": worst}


# ----- report -----
def report(args: argparse.Namespace, runs: dict[tuple[str, int], dict[str, Any]], checks: dict[int, dict[str, Any]],
           revision: str, invocation: bc.Invocation) -> str:
    sizes = [0, *args.rows]
    table = ["| version | rows | peak RSS MB | above start-up MB | wall s | rows/s (wall) |",
             "|---|---:|---:|---:|---:|---:|"]
    for version in VERSIONS:
        base = runs[(version, 0)]
        for n in sizes:
            run = runs[(version, n)]
            speed = f"{n / run['seconds']:,.0f}" if n else "—"
            table.append(f"| {version} | {n:,} | {run['peak_mb']:.0f} | {run['peak_mb'] - base['peak_mb']:+.0f} | "
                         f"{run['seconds']:.1f} | {speed} |")
    small, large = args.rows[-2] if len(args.rows) > 1 else 0, args.rows[-1]
    ratio = {v: runs[(v, large)]["peak_mb"] / runs[(v, small)]["peak_mb"] for v in VERSIONS}
    marginal = {}
    for v in VERSIONS:
        extra = runs[(v, large)]["seconds"] - runs[(v, small)]["seconds"]
        marginal[v] = f"{(large - small) / extra:,.0f}" if extra > 0 else "n/a (not slower: load noise)"
    verdict = "met" if ratio["after"] <= TARGET else "not met"
    check = "; ".join(f"{n:,} rows: {c['label_differences']} labels differ, largest score difference "
                      f"{c['worst_score_difference']:.1e}" for n, c in checks.items())
    chunk = args.chunk_rows or "the CLI's default"
    tasks = ", ".join(f"{name} ({' + '.join(columns)})" for name, columns in TASKS.items())
    lines = [
        *invocation.header("predict: peak memory and rows/s as the input grows, before and after streaming"),
        f"- settings: tiny random BERT (2 layers, hidden 32, 0 training steps; tiny because the measurement is "
        f"about row handling, not the encoder), tasks {tasks}, 2 labels each; generated JSONL rows of 5–20 words "
        f"per field (seed {args.seed}); batch {args.batch_size}, after: chunk rows {chunk}; device cpu, torch "
        f"threads {args.threads}; before = `{FILES[0]}` and `{FILES[1]}` of {revision} in a copy of the package; "
        "one fresh process per run, sizes in increasing order, before and after alternating",
        "",
        *table,
        "",
        f"- peak RSS {large:,} / {small:,} rows: before **{ratio['before']:.2f}×**, after **{ratio['after']:.2f}×**; "
        f"target after <= {TARGET}×: **{verdict}**",
        f"- rows/s between {small:,} and {large:,} rows (start-up cancels out): before {marginal['before']}, "
        f"after {marginal['after']}",
        "- peak RSS: VmHWM of the predict process (imports, model, reading, predicting, writing); wall s: from "
        "before `import manyheads` to the CLI's return (interpreter start-up excluded)",
        f"- check (before vs after outputs, both tasks): {check}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("predict_memory.py", argv)
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-predict-") as tmp:
        workdir = Path(tmp)
        model = workdir / "model"
        build_model(model, args.seed)
        revision = args.before_ref or default_before_ref()
        paths = {"before": before_package(workdir, revision), "after": bc.REPO / "src"}
        runs: dict[tuple[str, int], dict[str, Any]] = {}
        checks: dict[int, dict[str, Any]] = {}
        for n in [0, *args.rows]:
            rows_file = workdir / f"rows-{n}.jsonl"
            write_rows(rows_file, n, args.seed)
            outputs = {v: workdir / f"out-{v}-{n}.jsonl" for v in VERSIONS}
            for version in VERSIONS:
                runs[(version, n)] = result = run_version(version, paths[version], model, rows_file,
                                                          outputs[version], args, workdir)
                print(f"  {version:6s} {n:>9,} rows: peak RSS {result['peak_mb']:7.0f} MB, "
                      f"{result['seconds']:7.1f} s", flush=True)
            if n:
                checks[n] = compare(outputs["before"], outputs["after"], n)
            for path in (rows_file, *outputs.values()):
                path.unlink()
    revision = git("rev-parse", "--short", revision).strip()
    bc.publish(args, report(args, runs, checks, revision, invocation))
    return 0


if __name__ == "__main__":
    bc.script_main(main, probe)
