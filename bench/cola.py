"""CoLA alone: why the quality study never learned it, and which change fixes it (issue 16; not a test).

What it measures and how: bench/README.md, "What each script measures, in detail".

    HF_HUB_OFFLINE=1 python bench/cola.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as bc
from _quality_report import PUBLISHED, Stat
from _stock import train_stock

OLD = {"train": "subset", "epochs": 1, "batch_size": 8, "learning_rate": 1e-4, "pooling": "pooler",
       "class_weights": None, "group_by_length": False}
FULL = {"train": "all", "epochs": 3, "batch_size": 32, "learning_rate": 5e-5, "pooling": "mean",
        "class_weights": None, "group_by_length": True}
# name -> (settings, what it changes). `train`: "subset" (--subset_rows, data seed 0) or "all" (--full_rows).
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "old": (OLD, "the quality study's recipe (BERT pooler)"),
    "old+mean": ({**OLD, "pooling": "mean"}, "old with mean pooling"),
    "old+10ep": ({**OLD, "pooling": "mean", "epochs": 10}, "old+mean, 10 epochs"),
    "full-1ep": ({**FULL, "epochs": 1}, "all rows, 1 epoch"),
    "full-3ep": (FULL, "all rows, 3 epochs (issue 16's regime)"),
    "full-3ep+pooler": ({**FULL, "pooling": "pooler"}, "full-3ep with the BERT pooler"),
    "full-3ep+balanced": ({**FULL, "class_weights": "auto"}, "full-3ep, class weights auto"),
    "full-5ep": ({**FULL, "epochs": 5}, "all rows, 5 epochs"),
    "full-3ep+lr1e-4": ({**FULL, "learning_rate": 1e-4}, "full-3ep at learning rate 1e-4"),
    "full-3ep+cls": ({**FULL, "pooling": "cls"}, "full-3ep reading the [CLS] token (no pooler)"),
    "full-3ep+bs16": ({**FULL, "batch_size": 16}, "full-3ep at batch 16 (twice the steps)"),
    "full-3ep+balanced+lr1e-4": ({**FULL, "class_weights": "auto", "learning_rate": 1e-4},
                                 "the two best single changes together"),
    "full-3ep+bs16+balanced": ({**FULL, "batch_size": 16, "class_weights": "auto"}, "bs16 with class weights auto"),
    "full-5ep+balanced+lr1e-4": ({**FULL, "epochs": 5, "class_weights": "auto", "learning_rate": 1e-4},
                                 "full-3ep+balanced+lr1e-4 for 5 epochs"),
    "full-3ep+balanced+lr2e-4": ({**FULL, "class_weights": "auto", "learning_rate": 2e-4},
                                 "full-3ep+balanced at learning rate 2e-4"),
    "full-3ep+balanced+lr1e-4+max": ({**FULL, "class_weights": "auto", "learning_rate": 1e-4, "pooling": "max"},
                                     "full-3ep+balanced+lr1e-4 with max pooling over tokens"),
    "full-3ep+balanced+lr1e-4+reinit1": ({**FULL, "class_weights": "auto", "learning_rate": 1e-4, "reinit_layers": 1},
                                         "full-3ep+balanced+lr1e-4 with the top encoder layer re-initialised"),
    # The recipe of the one CoLA fine-tune of a sentence-transformers MiniLM we found published
    # (pszemraj/paraphrase-MiniLM-L12-v2-CoLA, dev MCC 0.495 with 12 layers): long and at a large batch.
    "long-16ep-bs128": ({**FULL, "epochs": 16, "batch_size": 128, "learning_rate": 8e-5, "scheduler": "cosine",
                         "warmup": 0.03}, "16 epochs, batch 128, lr 8e-5, cosine, warm-up 0.03"),
    "full-3ep+balanced+lr1e-4+head1e-3": ({**FULL, "class_weights": "auto", "learning_rate": 1e-4,
                                           "head_learning_rate": 1e-3},
                                          "full-3ep+balanced+lr1e-4, the head at 1e-3 (head_learning_rate)"),
    # Not manyheads: transformers' Trainer + AutoModelForSequenceClassification (its head reads the BERT pooler),
    # same rows, epochs, batch, lr and schedule; whether the ceiling is the checkpoint's or manyheads'.
    "plain-3ep": ({**FULL, "pooling": "pooler", "plain": True}, "full-3ep with plain Trainer + AutoModelFor..."),
}
# (from, to, what changes): the differences the list under the table reports, where both rows exist.
STEPS = [("old", "old+mean", "pooler → mean on the subset, 1 epoch"),
         ("old+mean", "old+10ep", "1 → 10 epochs on the subset"),
         ("old+mean", "full-1ep", "subset → all rows, 1 epoch; batch 8 → 32, lr 1e-4 → 5e-5"),
         ("full-1ep", "full-3ep", "1 → 3 epochs on all rows"),
         ("full-3ep", "full-3ep+pooler", "mean → pooler at full-3ep"),
         ("full-3ep", "full-3ep+balanced", "class weights auto at full-3ep"),
         ("full-3ep", "full-5ep", "3 → 5 epochs on all rows"),
         ("full-3ep", "full-3ep+lr1e-4", "lr 5e-5 → 1e-4 at full-3ep"),
         ("full-3ep", "full-3ep+cls", "mean → [CLS] token at full-3ep"),
         ("full-3ep", "full-3ep+bs16", "batch 32 → 16 at full-3ep"),
         ("full-3ep+balanced", "full-3ep+balanced+lr1e-4", "lr 5e-5 → 1e-4 with class weights auto"),
         ("full-3ep+bs16", "full-3ep+bs16+balanced", "class weights auto at batch 16"),
         ("full-3ep+pooler", "plain-3ep", "manyheads → plain Trainer, both on the BERT pooler"),
         ("full-3ep+balanced+lr1e-4", "full-5ep+balanced+lr1e-4", "3 → 5 epochs, class weights auto, lr 1e-4"),
         ("full-3ep+balanced+lr1e-4", "full-3ep+balanced+lr2e-4", "lr 1e-4 → 2e-4 with class weights auto"),
         ("full-3ep+balanced+lr1e-4", "full-3ep+balanced+lr1e-4+max", "mean → max pooling"),
         ("full-3ep+balanced+lr1e-4", "full-3ep+balanced+lr1e-4+reinit1", "top encoder layer re-initialised"),
         ("full-3ep+balanced+lr1e-4", "full-3ep+balanced+lr1e-4+head1e-3", "the head's learning rate 1e-4 → 1e-3"),
         ("full-3ep+balanced+lr1e-4", "long-16ep-bs128", "→ 16 epochs at batch 128, lr 8e-5, cosine, no class weights")]
PUBLISHED_MCC = PUBLISHED["cola"][1]  # MiniLM-L6xH384 fine-tuned on CoLA, GLUE dev MCC (see _quality_report)
QUICK = {"subset_rows": 32, "full_rows": 32, "max_epochs": 1, "eval_rows": 24}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "cola/ (GLUE CoLA: train.tsv, dev.tsv)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="training seeds (weights, dropout, order)")
    parser.add_argument("--subset_rows", type=int, default=528, help="training rows of the old* variants")
    parser.add_argument("--full_rows", type=int, default=None, help="training rows of the full* variants (all)")
    parser.add_argument("--eval_rows", type=int, default=None, help="dev rows (default: all 1,043)")
    parser.add_argument("--max_epochs", type=int, default=None, help="cap on every variant's epochs (smoke runs)")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps with linear warm-up")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the fixed training subset")
    parser.add_argument("--cache_dir", default=str(bc.OUT_DIR / "cola"), help="where rows and data subsets are kept")
    parser.add_argument("--table_only", action="store_true", help="rebuild the table from cached rows; train nothing")
    args = bc.parse_with_presets(parser, argv, {"quick": QUICK})
    bc.require_files(parser, args.data_dir, [Path(bc.GLUE["cola"].folder) / f for f in (bc.GLUE["cola"].train,
                                                                                   bc.GLUE["cola"].dev)])
    return args


def write_data(args: argparse.Namespace, size: int | None) -> tuple[str, int, int]:
    """The subset folder for `size` training rows (None: all) and the dev rows; (folder, train rows, dev rows)."""
    folder, train, dev = bc.write_glue_subsets(args.data_dir, args.cache_dir, {"cola": size}, {"cola": args.eval_rows},
                                            args.data_seed)
    return str(folder), train["cola"], dev["cola"]


def resolved(name: str, args: argparse.Namespace, train_rows: dict[str, int]) -> dict[str, Any]:
    """The variant's settings as run: rows counted, epochs capped by --max_epochs."""
    settings = dict(VARIANTS[name][0])
    settings["train_rows"] = train_rows[settings.pop("train")]
    if args.max_epochs is not None:
        settings["epochs"] = min(settings["epochs"], args.max_epochs)
    return settings


def acceptable_share(prediction: Any, task: Any) -> dict[str, float]:
    """Share of rows predicted label 1 ("acceptable"): 0 or 1 with MCC 0 is a one-class model."""
    import numpy as np

    predicted = np.asarray(prediction.predictions).argmax(-1)
    return {"acceptable_share": float((predicted == task.label_list.index("1")).mean())}


def reinit_top_layers(encoder: Any, count: int) -> None:
    """Re-initialise the top `count` encoder layers as BERT initialises them (Zhang et al. 2021: re-initialising
    the top layers helps small-data fine-tuning). Written out: transformers 5 skips `_init_weights` on modules
    loaded from a checkpoint (a first try through it trained exactly the unchanged model)."""
    import torch

    std = encoder.config.initializer_range
    for layer in encoder.encoder.layer[-count:]:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=std)
                torch.nn.init.zeros_(module.bias)
            elif isinstance(module, torch.nn.LayerNorm):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)


def head_text(settings: dict[str, Any]) -> str:
    head = settings.get("head_learning_rate")
    return f" (head {lr_text(head)})" if head else ""


def train_plain(name: str, settings: dict[str, Any], seed: int, data_dir: str, args: argparse.Namespace,
                common: dict[str, Any]) -> dict[str, Any]:
    """The `plain` variant: stock `Trainer` + `AutoModelForSequenceClassification` on the same rows and recipe."""
    load_before = os.getloadavg()
    run = train_stock("cola", data_dir, args.model, epochs=settings["epochs"], batch_size=settings["batch_size"],
                      learning_rate=settings["learning_rate"], warmup=args.warmup, weight_decay=args.weight_decay,
                      max_length=args.max_length, group_by_length=settings["group_by_length"], seed=seed)
    acceptable = float((run["predictions"].argmax(-1) == 1).mean())  # label ids follow sorted names: "1" is 1
    return {"variant": name, "seed": seed, "settings": settings, "common": common, "pooling_used": "pooler (stock)",
            "fitted_class_weights": None, "steps": run["steps"], "mean_loss": run["mean_loss"],
            "final_loss": run["final_loss"], "train_s": run["train_s"], "mcc": run["metrics"]["mcc"],
            "accuracy": run["metrics"]["accuracy"], "acceptable_share": acceptable, "date": bc.now(),
            "load_before": load_before, "load_after": os.getloadavg()}


def train_row(name: str, settings: dict[str, Any], seed: int, data_dir: str, args: argparse.Namespace,
              common: dict[str, Any]) -> dict[str, Any]:
    """Train one (variant, seed) with a fresh trainer and evaluate it on the dev rows."""
    if settings.get("plain"):
        return train_plain(name, settings, seed, data_dir, args, common)
    from transformers import PrinterCallback

    from manyheads.recipe import build_config, build_trainer

    task = {**bc.glue_task_config("cola"), "pooling": settings["pooling"], "class_weights": settings["class_weights"]}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="manyheads-cola-") as output_dir:
        training = bc.training_fields(output_dir, settings["batch_size"], -1, seed, bf16=False)
        training.update(num_train_epochs=settings["epochs"], learning_rate=settings["learning_rate"],
                        warmup_steps=settings.get("warmup", args.warmup), weight_decay=args.weight_decay,
                        lr_scheduler_type=settings.get("scheduler", "linear"),
                        per_device_eval_batch_size=64, logging_steps=0.1)  # a loss logged every tenth of the run
        if settings.get("head_learning_rate"):
            training["head_learning_rate"] = settings["head_learning_rate"]
        run = build_config({"model": args.model, "data_dir": data_dir, "max_length": args.max_length, "tasks": [task],
                            "group_by_length": settings["group_by_length"], **training})
        trainer = build_trainer(run, compute_metrics=acceptable_share)
        trainer.remove_callback(PrinterCallback)
        if settings.get("reinit_layers"):
            reinit_top_layers(trainer.model.encoder, settings["reinit_layers"])
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    head = trainer.model.heads["cola"]
    fitted = trainer.model.tasks["cola"].fitted.get("class_weights")
    row = {"variant": name, "seed": seed, "settings": settings, "common": common, "pooling_used": head.pooling,
           "fitted_class_weights": fitted, "steps": trainer.state.global_step, "mean_loss": out.training_loss,
           "final_loss": losses[-1] if losses else None, "train_s": round(seconds, 1),
           **{k[len("eval_cola_"):]: float(v) for k, v in metrics.items() if k.startswith("eval_cola_")},
           "date": bc.now(), "load_before": load_before, "load_after": os.getloadavg()}
    del trainer
    gc.collect()
    return row


def row_path(rows_dir: Path, name: str, seed: int, settings: dict[str, Any]) -> Path:
    return rows_dir / f"{name}-seed{seed}-{bc.settings_key(settings)}.json"


def findings(by_variant: dict[str, list[dict[str, Any]]], gold_share: float) -> list[str]:
    """The list under the table, every line computed from the rows."""
    mcc = {n: 100 * statistics.fmean(r["mcc"] for r in rows) for n, rows in by_variant.items()}
    one_class = [n for n, rows in by_variant.items()
                 if all(r["mcc"] == 0 and r["acceptable_share"] in (0.0, 1.0) for r in rows)]
    lines = [f"- predict one class on every dev row (MCC 0, in every seed): {', '.join(one_class) or 'none'}",
             f"- learn something (mean MCC > 0): {', '.join(n for n in by_variant if mcc[n] > 0) or 'none'}"]
    for a, b, what in STEPS:
        if a in by_variant and b in by_variant:
            # On the seeds both variants ran (paired: a seed fixes the head's init, dropout and the row order).
            seeds = sorted({r["seed"] for r in by_variant[a]} & {r["seed"] for r in by_variant[b]})
            if not seeds:
                continue
            pair = [100 * statistics.fmean(r["mcc"] for r in by_variant[n] if r["seed"] in seeds) for n in (a, b)]
            steps = f"{by_variant[a][0]['steps']} → {by_variant[b][0]['steps']} steps"
            lines.append(f"- {a} → {b} ({what}): MCC {pair[0]:.1f} → {pair[1]:.1f} ({pair[1] - pair[0]:+.1f}; "
                         f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}; {steps})")
    best = max(mcc, key=lambda n: mcc[n])
    share = statistics.fmean(r["acceptable_share"] for r in by_variant[best])
    seeds = sorted({len(rows) for rows in by_variant.values()})
    best_seeds = ",".join(str(r["seed"]) for r in sorted(by_variant[best], key=lambda r: r["seed"]))
    lines += [f"- best mean here: {best}, MCC {mcc[best]:.1f} (seeds {best_seeds}; means over different seeds: the "
              f"paired lines above compare like with like), predicting {share:.2f} of dev rows acceptable (gold "
              f"{gold_share:.2f}); published MiniLM-L6xH384 single-task CoLA: {PUBLISHED_MCC} (microsoft/unilm "
              "MiniLM README: the masked-LM MiniLM, not the sentence-embedding fine-tune all-MiniLM-L6-v2 used here)",
              f"- seeds per variant: {'/'.join(map(str, seeds))}; no difference above is tested against seed spread"]
    return lines


def label_share(folder: str, split: str) -> float:
    """Share of label 1 ("acceptable") in a subset file written by `write_glue_subset` (label: the last column)."""
    lines = (Path(folder) / "cola" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return sum(line.rsplit("\t", 1)[1] == "1" for line in lines) / len(lines)


def lr_text(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")


def feature_spread(model: str, folder: str, rows: int = 200) -> list[str]:
    """What each pooling hands the head before any training, on the first `rows` dev sentences: the mean over
    dimensions of the per-dimension sd across sentences, and the mean pairwise cosine (how alike sentences look)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    lines = (Path(folder) / "cola" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    # The dev file is sorted by length: an even spread over it, not its shortest sentences.
    sentences = [line.rsplit("\t", 1)[0] for line in lines[::max(1, len(lines) // rows)][:rows]]
    tokenizer, encoder = AutoTokenizer.from_pretrained(model), AutoModel.from_pretrained(model).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        out = encoder(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    features = {"pooler": out.pooler_output, "cls": out.last_hidden_state[:, 0],
                "mean": (out.last_hidden_state * mask).sum(1) / mask.sum(1)}
    text = []
    for name, x in features.items():
        unit = torch.nn.functional.normalize(x, dim=-1)
        cosine = (unit @ unit.T)[~torch.eye(len(x), dtype=torch.bool)].mean()
        text.append(f"`{name}` sd {x.std(0).mean():.3f}, cosine {cosine:.2f}")
    return [f"- what the head reads before training, over {len(sentences)} dev sentences (mean per-dimension sd "
            "across sentences; mean pairwise cosine): " + "; ".join(text)]


def report(args: argparse.Namespace, rows: list[dict[str, Any]], rows_dir: Path, dev_rows: int, gold_share: float,
           train_share: float, invocation: bc.Invocation, data_folder: str) -> str:
    from manyheads.tasks import checkpoint_pooling

    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    model = bc.model_name(args.model)
    lines = invocation.header("CoLA alone: why MCC stayed 0, variant by variant")
    lines += [
        f"- settings: encoder {model}; one `classification` task (main metric MCC); AdamW, linear decay and warm-up "
        f"{args.warmup} (unless a variant's description says otherwise), weight decay {args.weight_decay}, "
        f"max_length {args.max_length}, fp32, dynamic padding; "
        f"dev: {dev_rows} rows of CoLA dev (gold share acceptable {gold_share:.2f}); training subset of the old* "
        f"variants: data seed {args.data_seed}; rows in `{bc.display_path(rows_dir)}`",
        f"- `pooling: auto` on this checkpoint now reads `{checkpoint_pooling(args.model)}` from its modules.json; "
        "before, it meant `pooler` (the rows name the pooling explicitly)",
        *feature_spread(args.model, data_folder),
        "",
        "| variant | what | train rows | epochs | batch | lr | pooling | class weights | length groups | steps "
        "| final loss | dev MCC ×100 | accuracy | predicted acceptable | train s | seeds |",
        "|---|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        if name not in by_variant:
            continue
        group = by_variant[name]
        s = group[0]["settings"]
        weights = group[0]["fitted_class_weights"]
        weights_text = "/".join(f"{w:.2f}" for w in weights) if weights else "none"
        losses = [r["final_loss"] for r in group if r["final_loss"] is not None]
        lines.append(
            f"| {name} | {VARIANTS[name][1]} | {s['train_rows']} | {s['epochs']} | {s['batch_size']} | "
            f"{lr_text(s['learning_rate'])}{head_text(s)} | {group[0]['pooling_used']} | {weights_text} | "
            f"{'yes' if s['group_by_length'] else 'no'} | {group[0]['steps']} | "
            f"{statistics.fmean(losses) if losses else float('nan'):.3f} | {Stat([r['mcc'] for r in group]).text()} | "
            f"{Stat([r['accuracy'] for r in group]).text()} | "
            f"{statistics.fmean(r['acceptable_share'] for r in group):.2f} "
            f"| {statistics.fmean(r['train_s'] for r in group):.0f} | {','.join(str(r['seed']) for r in group)} |")
    lines.append("| published | MiniLM-L6xH384 (masked-LM MiniLM; microsoft/unilm) | | | | | | | | | | "
                 f"{PUBLISHED_MCC} | | | | |")
    entropy = -sum(p * math.log(p) for p in (train_share, 1 - train_share) if p > 0)
    lines += ["", "- final loss: the mean training loss over the last tenth of the steps; for scale, a model that "
              f"gives every row the share of acceptable rows in the full* training rows ({train_share:.2f}) has loss "
              f"{entropy:.3f} (unweighted); class weights: the fitted weights of labels 0/1; accuracy ×100; "
              "predicted acceptable: share of dev rows predicted label 1", "",
              "What the numbers say (computed from the rows):", "", *findings(by_variant, gold_share), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("cola.py", argv)
    bc.quiet_libraries()
    folders = {"subset": write_data(args, args.subset_rows), "all": write_data(args, args.full_rows)}
    train_rows = {kind: info[1] for kind, info in folders.items()}
    dev_rows = folders["all"][2]
    common = {"model": args.model, "dev_rows": dev_rows, "max_length": args.max_length, "warmup": args.warmup,
              "weight_decay": args.weight_decay, "data_seed": args.data_seed, "bf16": False}
    rows_dir = Path(args.cache_dir) / bc.settings_key(common) / "rows"
    plan = {(n, s): resolved(n, args, train_rows) for s in args.seeds for n in args.variants}
    todo = [] if args.table_only else [k for k, v in plan.items() if not row_path(rows_dir, *k, v).is_file()]
    print(f"plan: {len(plan)} (variant, seed) pairs, {len(todo)} to train; rows in {rows_dir}", flush=True)
    for i, (name, seed) in enumerate(todo):
        settings = plan[(name, seed)]
        row = train_row(name, settings, seed, folders[VARIANTS[name][0]["train"]][0], args, common)
        bc.save_row(row_path(rows_dir, name, seed, settings), row)
        print(f"  [{i + 1}/{len(todo)}] {name} seed {seed}: MCC {100 * row['mcc']:.1f}, accuracy "
              f"{row['accuracy']:.3f}, acceptable {row['acceptable_share']:.2f}, {row['steps']} steps "
              f"({row['train_s']:.0f} s)", flush=True)
    rows = [json.loads(p.read_text(encoding="utf-8")) for k, v in plan.items()
            if (p := row_path(rows_dir, *k, v)).is_file()]
    if not rows:
        print("no rows yet: nothing to report")
        return 1
    shares = label_share(folders["all"][0], "dev"), label_share(folders["all"][0], "train")
    bc.publish(args, report(args, rows, rows_dir, dev_rows, *shares, invocation, folders["all"][0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
