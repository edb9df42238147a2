"""Study 14 (issue 25): when length grouping hurts: the tiny BERT2BERT copy task with random vs grouped batches.

What it measures and how: bench/README.md, study 14.

    python bench/copy_grouping.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import _common as bc

SETTINGS = [(False, 3e-3), (True, 3e-3), (True, 1e-3)]  # (group_by_length, learning rate)


def main(argv: list[str] | None = None) -> int:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "nothing (the data is generated)")
    args = bc.parse_with_presets(parser, argv, {})
    invocation = bc.Invocation.of("copy_grouping.py", argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' tiny BERT2BERT and its data
    from tests.conftest import make_tokenizer
    from tests.test_seq2seq import bert_backbone, make_trainer

    rows = ["| group_by_length | learning rate | exact match | ROUGE-L | eval loss |", "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="manyheads-copy-") as tmp:
        for grouped, rate in SETTINGS:
            trainer = make_trainer(bert_backbone(), make_tokenizer(), Path(tmp) / f"{grouped}-{rate}", steps=300,
                                   train_rows=400, learning_rate=rate, group_by_length=grouped)
            trainer.train()
            m = trainer.evaluate()
            rows.append(f"| {grouped} | {rate:g} | {m['eval_copy_exact_match']:.3f} | {m['eval_copy_rougeL']:.3f} | "
                        f"{m['eval_copy_loss']:.3f} |")
            print(rows[-1], flush=True)
    lines = [*invocation.header("length grouping on a copy task (tiny BERT2BERT)"),
             "- settings: tests/test_seq2seq.py's copy task and classifier, 400 rows, 300 steps, batch 16, uniform "
             "sampling, seed 3", "", *rows, ""]
    bc.publish(args, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
