"""What task-affinity measurement (TAG, `TaskAffinityCallback` at its default `every`) costs: one multi-task
MiniLM run with the callback vs the same run without it (not a test; issue 28, budget <= 1.3x).

Synthetic tasks of mixed types (bench/many_tasks.py's: classification, multi-label, regression, token
classification, random words), N = 4 and 8 tasks, batch 16, the same steps, seed and weights on both sides; each
pair runs `--rounds` times in alternating order and each time is the median over the rounds. Wall time of
`trainer.train()` (tokenization and model building excluded: the same on both sides).

    python bench/affinity_cost.py                      # N = 4 8, 240 steps, MiniLM
    python bench/affinity_cost.py --sizes 4 --steps 60 --model tiny   # a smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as bc
import many_tasks as mt

BUDGET = 1.3  # issue 28: a run with affinity measurements <= 1.3x the same run without


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    parser.add_argument("--model", default="minilm", help="'minilm' (the PyPI package), 'tiny', or an encoder folder")
    bc.add_output_arguments(parser)
    parser.add_argument("--sizes", nargs="+", type=bc.positive, default=[4, 8], help="task counts N")
    parser.add_argument("--steps", type=bc.positive, default=240, help="optimizer steps of every run")
    parser.add_argument("--batch_size", type=bc.positive, default=16)
    parser.add_argument("--rows_per_task", type=bc.positive, default=400)
    parser.add_argument("--rounds", type=bc.positive, default=1, help="on/off pairs per N (alternating order)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.quick:  # a smoke run of the script itself
        args.model, args.sizes, args.steps, args.rows_per_task = "tiny", [4], 60, 64
    args.results = args.results or str(bc.QUICK_RESULTS if args.quick else bc.DEFAULT_RESULTS)
    return args


def timed_run(encoder: str, n: int, args: argparse.Namespace, affinity: bool, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer, PrinterCallback, set_seed

    from manyheads import MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments
    from manyheads.callbacks import TaskAffinityCallback

    plan = mt.task_plan(n)
    train = {p["name"]: mt.make_rows(p, args.rows_per_task, 2 * i) for i, p in enumerate(plan)}
    set_seed(args.seed)
    model = MultiTaskModel.from_encoder(encoder, mt.make_tasks(plan, 128))
    fields = bc.training_fields(str(workdir / ("on" if affinity else "off")), args.batch_size, args.steps, args.seed,
                                False)
    callback = TaskAffinityCallback() if affinity else None
    trainer = MultiTaskTrainer(model=model, args=MultiTaskTrainingArguments(**fields, dataloader_pin_memory=False),
                               train_dataset=train, processing_class=AutoTokenizer.from_pretrained(encoder),
                               callbacks=[callback] if callback else None)
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "every": callback.every if callback else None,
            "measurements": len(callback.history) if callback else 0}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("affinity_cost.py", argv)
    bc.quiet_libraries()
    import torch

    torch.set_num_threads(1)  # as the other timing studies: one thread, steadier on a 2-core machine
    workdir = Path(tempfile.mkdtemp(prefix="affinity-cost-"))
    encoder = {"minilm": bc.default_model(), "tiny": None}.get(args.model, args.model) or mt.tiny_encoder(
        workdir / "tiny")
    rows = []
    for n in args.sizes:
        times: dict[bool, list[float]] = {False: [], True: []}
        info: dict[str, Any] = {}
        for round_ in range(args.rounds):
            for affinity in ((False, True) if round_ % 2 == 0 else (True, False)):
                result = timed_run(encoder, n, args, affinity, workdir / f"{n}-{round_}")
                times[affinity].append(result["seconds"])
                if affinity:
                    info = result
                print(f"  N={n} round {round_ + 1} affinity {'on' if affinity else 'off'}: "
                      f"{result['seconds']:.1f} s", flush=True)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"n": n, "off": off, "on": on, "ratio": on / off, **info})
    lines = ["| N | every (default) | measurements | train s without | train s with | ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['every']} | {r['measurements']} | {r['off']:.1f} | {r['on']:.1f} | {r['ratio']:.3f}x |"
              for r in rows]
    worst = max(r["ratio"] for r in rows)
    verdict = "met" if worst <= BUDGET else "not met"
    header = invocation.header("Task affinity (TAG) cost at the default `every` (issue 28)")
    settings = (f"- settings: {bc.model_name(encoder) if args.model != 'tiny' else 'tiny BERT'}, fp32, one torch "
                f"thread, batch {args.batch_size}, {args.steps} steps, {args.rows_per_task} synthetic rows per task "
                f"(many_tasks.py's mixed types), {args.rounds} round(s), medians")
    section = "\n".join([*header, settings, "", *lines, "",
                         f"- worst ratio {worst:.3f}x (budget <= {BUDGET}x): **{verdict}**"])
    bc.publish(args, section)
    return 0 if math.isfinite(worst) else 1


if __name__ == "__main__":
    bc.script_main(main)
