"""Peak memory and speed of `manyheads predict` as the input grows (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    python bench/predict_memory.py            # appends its section to bench/RESULTS.md
    python bench/predict_memory.py --quick    # 0/500/5,000 rows; results to bench/out/RESULTS-quick.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as bc

TARGET = 1.2  # peak RSS at the largest size / at the second largest
WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "weak", "red", "green", "blue", "yellow", "the",
         "a", "item", "was", "very", "it", "is", "and", "thing", "box", "not", "really", "quite", "big", "small"]
TASKS = {"sentiment": ["sentence1"], "match": ["sentence1", "sentence2"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--rows", type=bc.positive, nargs="+", default=[20_000, 200_000],
                        help="input sizes (default: 20000 200000; a 0-row start-up run is added)")
    parser.add_argument("--batch_size", type=bc.positive, default=32, help="rows per encoder pass (default: 32)")
    parser.add_argument("--chunk_rows", type=bc.positive, default=None,
                        help="predict's --chunk_rows (default: predict's own)")
    parser.add_argument("--threads", type=bc.positive, default=1,
                        help="torch threads of each predict process (default: 1, steadier on a shared 2-core machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated rows and the model (default: 0)")
    bc.add_output_arguments(parser, "0/500/5,000 rows")
    if parser.parse_args(argv).quick:  # smoke sizes; an explicit --rows still wins
        parser.set_defaults(rows=[500, 5_000])
    args = parser.parse_args(argv)
    args.rows = sorted(set(args.rows))
    args.results = args.results or str(bc.QUICK_RESULTS if args.quick else bc.DEFAULT_RESULTS)
    return args


# ----- set-up: model and inputs -----
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


# ----- one run: a fresh interpreter calling the CLI -----
def probe(spec_path: str) -> int:
    """Subprocess body: `manyheads predict` in this process, then its peak RSS and wall clock as JSON."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    start = time.perf_counter()
    import torch

    from manyheads.cli.main import main as cli

    torch.set_num_threads(spec["threads"])
    code = cli(spec["argv"])
    seconds = time.perf_counter() - start
    print(json.dumps({"rc": code, "seconds": seconds, "peak_mb": bc.max_rss_mb()}))
    return 0


def run_predict(model: Path, rows_file: Path, out: Path, rows: int, args: argparse.Namespace,
                workdir: Path) -> dict[str, Any]:
    argv = ["predict", str(model), "--input", str(rows_file), "--output", str(out),
            "--batch_size", str(args.batch_size), "--device", "cpu"]
    argv += ["--chunk_rows", str(args.chunk_rows)] if args.chunk_rows else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = bc.run_probe(__file__, {"argv": argv, "threads": args.threads}, workdir, f"rows-{rows}", env)
    if result["rc"] != 0:
        raise SystemExit(f"manyheads predict exited {result['rc']}:\n{result['stderr'][-4000:]}")
    with out.open(encoding="utf-8") as handle:
        if sum(1 for _ in handle) != rows:  # the check: one output line per input row
            raise SystemExit(f"{out}: not one line per row of {rows}: the measurement is invalid")
    return result


# ----- report -----
def report(args: argparse.Namespace, runs: dict[int, dict[str, Any]], invocation: bc.Invocation) -> str:
    table = ["| rows | peak RSS MB | above start-up MB | wall s | rows/s (wall) |", "|---:|---:|---:|---:|---:|"]
    for n, run in runs.items():
        speed = f"{n / run['seconds']:,.0f}" if n else "—"
        table.append(f"| {n:,} | {run['peak_mb']:.0f} | {run['peak_mb'] - runs[0]['peak_mb']:+.0f} | "
                     f"{run['seconds']:.1f} | {speed} |")
    small, large = args.rows[-2] if len(args.rows) > 1 else 0, args.rows[-1]
    ratio = runs[large]["peak_mb"] / runs[small]["peak_mb"]
    extra = runs[large]["seconds"] - runs[small]["seconds"]
    marginal = f"{(large - small) / extra:,.0f}" if extra > 0 else "n/a (not slower: load noise)"
    tasks = ", ".join(f"{name} ({' + '.join(columns)})" for name, columns in TASKS.items())
    lines = [
        *invocation.header("predict: peak memory and rows/s as the input grows (streaming; current only)"),
        f"- settings: tiny random BERT (2 layers, hidden 32, 0 training steps; tiny because the measurement is "
        f"about row handling, not the encoder), tasks {tasks}, 2 labels each; generated JSONL rows of 5–20 words "
        f"per field (seed {args.seed}); batch {args.batch_size}, chunk rows {args.chunk_rows or 'the CLI default'}; "
        f"device cpu, torch threads {args.threads}; one fresh process per run, sizes in increasing order "
        "(the before-streaming rows of earlier sections: bench/README.md, study 5)",
        "", *table, "",
        f"- peak RSS {large:,} / {small:,} rows: **{ratio:.2f}×**; target <= {TARGET}×: "
        f"**{'met' if ratio <= TARGET else 'not met'}**",
        f"- rows/s between {small:,} and {large:,} rows (start-up cancels out): {marginal}",
        "- peak RSS: VmHWM of the predict process (imports, model, reading, predicting, writing); wall s: from "
        "before `import manyheads` to the CLI's return (interpreter start-up excluded)",
        "- check: one output line per input row at every size",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("predict_memory.py", argv)
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="manyheads-bench-predict-") as tmp:
        workdir = Path(tmp)
        build_model(workdir / "model", args.seed)
        for n in [0, *args.rows]:
            rows_file, out = workdir / f"rows-{n}.jsonl", workdir / f"out-{n}.jsonl"
            write_rows(rows_file, n, args.seed)
            runs[n] = run_predict(workdir / "model", rows_file, out, n, args, workdir)
            print(f"  {n:>9,} rows: peak RSS {runs[n]['peak_mb']:7.0f} MB, {runs[n]['seconds']:7.1f} s", flush=True)
            rows_file.unlink()
            out.unlink()
    bc.publish(args, report(args, runs, invocation))
    return 0


if __name__ == "__main__":
    bc.script_main(main, probe)
