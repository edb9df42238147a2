"""Check that exported stock models give manyheads' own predictions, on a trained model and real inputs.

What it compares and how: bench/README.md, "`check_export.py`".

    HF_HUB_OFFLINE=1 python bench/check_export.py runs/ner_qa_sst2 --config examples/ner_qa_sst2.yaml \
        --data_dir ../shared/data -n 50
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch


def _inputs(config_path: str, data_dir: str, model_dir: str, task: str, n: int) -> list[dict[str, Any]]:
    from manyheads.recipe import load_config, prepare_data

    run = load_config(config_path, ["--data_dir", data_dir, "--model", model_dir])
    run.tasks = [t for t in run.tasks if t.name == task]
    raw = prepare_data(run, tokenize=False).raw[task].splits["eval"]
    columns = run.task(task).text
    records = []
    for row in raw.select(range(min(n, len(raw)))):
        record = {c: row[c] for c in columns}
        if run.task(task).type == "token_classification":
            record = {"text": " ".join(row[columns[0]])}
        records.append(record)
    return records


def _compare(task: Any, out: str, records: list[dict[str, Any]], ours: list[dict[str, Any]], tokenizer: Any) -> int:
    from transformers import AutoModelForQuestionAnswering, pipeline

    from manyheads.tasks.question_answering import best_span

    kind = task.type
    agree = 0
    if kind == "question_answering":
        stock = AutoModelForQuestionAnswering.from_pretrained(out).eval()
        for record, mine in zip(records, ours):
            encoded, metas = task.encode_for_prediction([[record[task.text[0]]], [record[task.text[1]]]],
                                                        tokenizer, False)
            with torch.no_grad():
                result = stock(**encoded)
            spans = [best_span(result.start_logits[i].numpy(), result.end_logits[i].numpy(), m["offsets"],
                               task.max_answer_length) for i, m in enumerate(metas)]
            spans = [s for s in spans if s is not None]
            best = max(spans) if spans else None
            agree += best is not None and (best[1], best[2]) == (mine["start"], mine["end"])
    elif kind == "token_classification":
        tagger = pipeline("token-classification", model=out, aggregation_strategy="first", device="cpu")
        for record, mine in zip(records, ours):
            theirs = {(e["entity_group"], e["start"], e["end"]) for e in tagger(record["text"])}
            agree += theirs == {(e["type"], e["start"], e["end"]) for e in mine["entities"]}
    else:
        text = [r[task.text[0]] if len(task.text) == 1 else
                {"text": r[task.text[0]], "text_pair": r[task.text[1]]} for r in records]
        classifier = pipeline("text-classification", model=out, device="cpu")
        agree += sum(t["label"] == m["label"] for t, m in zip(classifier(text), ours))
    return int(agree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--config", required=True, help="the run's config (for the eval data)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("-n", type=int, default=50, help="inputs per task")
    args = parser.parse_args()

    from manyheads.export.stock import ExportError, export_task
    from manyheads.serving.predictor import MultiTaskPredictor

    predictor = MultiTaskPredictor(args.model_dir)
    for name, task in predictor.model.tasks.items():
        if task.type in ("multilabel", "regression"):
            continue  # covered by tests/test_export.py; no label-level pipeline output to compare here
        with tempfile.TemporaryDirectory() as scratch:
            out = str(Path(scratch) / name)
            try:
                export_task(args.model_dir, name, out)
            except ExportError as err:
                print(f"{name}: not exportable: {err}")
                continue
            records = _inputs(args.config, args.data_dir, args.model_dir, name, args.n)
            ours = [p[name] for p in predictor.predict(records, tasks=[name])]
            agree = _compare(task, out, records, ours, predictor.tokenizer)
            print(f"{name} ({task.type}): stock route agrees with manyheads predict on {agree}/{len(records)}")


if __name__ == "__main__":
    main()
