"""Multi-label defaults on SemEval-2018 Task 1 E-c (11 emotions per tweet), old vs new (not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as bc

FOLDER = "semeval2018_ec"
FILES = {"train": "2018-E-c-En-train.txt", "dev": "2018-E-c-En-dev.txt"}
LABELS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness", "surprise",
          "trust"]
# Mohammad et al., SemEval-2018 Task 1: Affect in Tweets (2018), E-c English, unigram SVM baseline (test split).
BASELINE = {"jaccard": 0.442, "micro_f1": 0.570, "macro_f1": 0.443}
# name -> (task settings, whether pooling `auto` reads the checkpoint, description). Every setting is explicit, so a
# row means the same whatever the defaults are; the section names the row that the current defaults reproduce.
VARIANTS: dict[str, tuple[dict[str, Any], bool, str]] = {
    "old": ({"threshold": 0.5, "pos_weight": None}, False, "old defaults: pooler, unweighted, threshold 0.5"),
    "mean+0.5": ({"threshold": 0.5, "pos_weight": None}, True, "mean pooling, unweighted, threshold 0.5"),
    "mean+tuned": ({"threshold": "tuned", "pos_weight": None}, True, "mean pooling, unweighted, threshold tuned"),
    "mean+tuned+sqrt": ({"threshold": "tuned", "pos_weight": "sqrt"}, True,
                        "mean pooling, pos_weight sqrt, threshold tuned"),
    "mean+tuned+auto": ({"threshold": "tuned", "pos_weight": "auto"}, True,
                        "mean pooling, pos_weight auto (neg/pos), threshold tuned"),
    "pooler+auto+0.5": ({"threshold": 0.5, "pos_weight": "auto"}, False,
                        "pooler, pos_weight auto, threshold 0.5 (the issue's work-around)"),
}


def default_variant() -> str | None:
    """The variant that the current `MultiLabel` defaults (with `pooling: auto` read from the checkpoint) are."""
    from manyheads import MultiLabel

    task = MultiLabel(name="x")
    for name, (settings, from_checkpoint, _) in VARIANTS.items():
        if from_checkpoint and all(getattr(task, k) == v for k, v in settings.items()):
            return name
    return None


def read_split(data_dir: str, split: str) -> list[dict[str, Any]]:
    path = Path(data_dir) / FOLDER / FILES[split]
    with path.open(encoding="utf-8", newline="") as handle:  # CRLF: newline="" lets csv strip it
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"Tweet": r["Tweet"], **{label: int(r[label]) for label in LABELS}} for r in rows]


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [r[key] for r in rows] for key in rows[0]}


def labels_per_row(prediction: Any, task: Any) -> dict[str, float]:
    return {"labels_per_row": float(task.predicted(prediction.predictions).sum(1).mean())}


def run_variant(name: str, args: argparse.Namespace, train: Any, tune: Any, dev: Any, workdir: str) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, set_seed

    from manyheads import MultiLabel, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments
    from manyheads.tasks import apply_checkpoint_pooling

    settings, from_checkpoint, _ = VARIANTS[name]
    set_seed(args.seed)
    task = MultiLabel(name="ec", text="Tweet", label_columns=LABELS, max_length=args.max_length, **settings)
    if from_checkpoint:
        apply_checkpoint_pooling([task], args.model)
    pooling = task.pooling
    model = MultiTaskModel.from_encoder(args.model, [task])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    fields = bc.training_fields(os.path.join(workdir, name), args.batch_size, args.steps, args.seed, bf16=False)
    fields.update(eval_strategy="steps", eval_steps=args.steps, learning_rate=args.learning_rate,
                  per_device_eval_batch_size=64, warmup_steps=0.1)
    trainer = MultiTaskTrainer(model=model, args=MultiTaskTrainingArguments(**fields), train_dataset={"ec": train},
                               eval_dataset={"ec": tune}, processing_class=tokenizer, compute_metrics=labels_per_row)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate(eval_dataset={"ec": task.preprocess(dev, tokenizer)})
    scores = {k[len("eval_ec_"):]: v for k, v in metrics.items() if k.startswith("eval_ec_")}
    thresholds = task.decision_thresholds()
    print(f"{name}: {scores} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    del trainer, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"name": name, "pooling": pooling, "seconds": seconds, **scores,
            "thresholds": f"{thresholds.min():.2f}–{thresholds.max():.2f}"}


def main(argv: list[str] | None = None) -> None:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, f"{FOLDER}/ (SemEval-2018 E-c)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--max_length", type=int, default=64, help="tokens per tweet (E-c tweets: at most ~60)")
    parser.add_argument("--tune_rows", type=int, default=700, help="train rows held out as the tuning split")
    parser.add_argument("--seed", type=int, default=42)
    quick = {"steps": 10, "tune_rows": 100, "variants": ["old", "mean+tuned"]}
    args = bc.parse_with_presets(parser, argv, {"quick": quick})
    bc.require_files(parser, args.data_dir, [f"{FOLDER}/{f}" for f in FILES.values()])
    bc.quiet_libraries()
    import torch
    from datasets import Dataset

    rows = read_split(args.data_dir, "train")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    tune_rows, train_rows = [rows[i] for i in order[:args.tune_rows]], [rows[i] for i in order[args.tune_rows:]]
    dev_rows = read_split(args.data_dir, "dev")
    if args.quick:
        train_rows, dev_rows = train_rows[:400], dev_rows[:200]
    train, tune, dev = (Dataset.from_dict(columns(r)) for r in (train_rows, tune_rows, dev_rows))
    invocation = bc.Invocation.of("multilabel.py", argv)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.variants:
            results.append(run_variant(name, args, train, tune, dev, workdir))
    gold = sum(sum(r[label] for label in LABELS) for r in dev_rows) / len(dev_rows)
    lines = invocation.header("multi-label defaults on SemEval-2018 E-c: old vs new")
    lines += [
        f"- settings: encoder {bc.model_name(args.model)}, one `multilabel` task (11 label "
        f"columns), {len(train_rows)} training rows (official train minus {len(tune_rows)} held out as the tuning "
        f"split, seed 0), {args.steps} steps of batch {args.batch_size} "
        f"(~{args.steps * args.batch_size / len(train_rows):.1f} epochs), learning rate {args.learning_rate}, "
        f"10 % warm-up, max_length {args.max_length}, seed {args.seed}, "
        f"torch threads {torch.get_num_threads()}; scores on the official dev split ({len(dev_rows)} tweets, gold "
        f"{gold:.2f} labels per tweet), never used to choose a threshold",
        "",
        "| variant | settings | pooling | micro-F1 | macro-F1 | Jaccard | exact match | labels/tweet | thresholds "
        "| train s |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {VARIANTS[r['name']][2]} | {r['pooling']} | {r['micro_f1']:.3f} | "
                     f"{r['macro_f1']:.3f} | {r['jaccard']:.3f} | {r['exact_match']:.3f} | {r['labels_per_row']:.2f} "
                     f"| {r['thresholds']} | {r['seconds']:.0f} |")
    lines.append(f"| SVM baseline | unigram SVM (Mohammad et al. 2018; test split, not dev) | — | "
                 f"{BASELINE['micro_f1']:.3f} | {BASELINE['macro_f1']:.3f} | {BASELINE['jaccard']:.3f} "
                 "| — | — | — | — |")
    lines += ["", f"- the new defaults (`MultiLabel()` with `pooling: auto` read from the checkpoint) are the row "
              f"**{default_variant()}**; the old defaults are the row **old**",
              "- thresholds: lowest–highest decision threshold over the 11 labels (`threshold: tuned`: fitted on "
              "the tuning split at the last step)", ""]
    bc.publish(args, "\n".join(lines))


if __name__ == "__main__":
    main()
