"""Every shipped example config builds: its tasks, arguments, model and trainer, on stand-in data and a tiny model.

As torchtune's config tests bind every component of a shipped config, each `examples/*.yaml` is loaded as written
(only `model` and `data_dir` come from the command line, as its header says), a few rows are written in the files,
formats and columns the config names (TSV with `column_names`, CoNLL with `tag_column`, SQuAD JSON, Hub-only tasks
as JSONL), and the model and trainer are built offline: a tiny BERT, or a tiny T5 where the example uses T5.
"""

from __future__ import annotations

import copy
import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from manyheads.recipe import build_trainer, load_config, read_yaml
from manyheads.recipe.arguments import argument_fields
from manyheads.tasks.base import GROUP_COLUMN

from .conftest import WORDS, make_encoder, make_tokenizer

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
ROWS = {"train": 12, "eval": 6}
# Resolved for the machine, or normalized by TrainingArguments: compared elsewhere.
NOT_COMPARED = {"output_dir", "bf16", "report_to"}


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """A tiny BERT and a tiny T5 with a word-level tokenizer, each long enough for the examples' max_length."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = make_tokenizer()
    tokenizer.model_max_length = 512
    bert = tmp_path_factory.mktemp("bert")
    encoder = make_encoder()
    encoder.config.max_position_embeddings = 512
    type(encoder)(encoder.config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    t5 = tmp_path_factory.mktemp("t5")
    T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=0,
    )).save_pretrained(t5)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # T5 takes no token_type_ids
    tokenizer.save_pretrained(t5)
    return {"bert": str(bert), "t5": str(t5)}


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def cell(task, column: str, index: int, rng: random.Random) -> str | float:
    """A value of `column` for a task: its text, its label (by the task's type), or filler."""
    if column == task.label:
        if task.type == "regression":
            return round(rng.uniform(0, 5), 2)
        return ["pos", "neg"][index % 2]
    return sentence(rng) if column in task.text else "x"


def write_squad(path: Path, rng: random.Random) -> None:
    """SQuAD v1.1 JSON: six articles (so that `eval_fraction` holds out whole ones) of two questions each."""
    articles = []
    for a in range(6):
        paragraphs = []
        for p in range(2):
            answer = rng.choice(WORDS)
            context = f"{sentence(rng)} {answer} {sentence(rng)}"
            start = context.index(f" {answer} ") + 1
            paragraphs.append({"context": context, "qas": [{"id": f"{a}-{p}", "question": sentence(rng, 4),
                                                            "answers": [{"text": answer, "answer_start": start}]}]})
        articles.append({"title": f"article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"data": articles}), encoding="utf-8")


def write_split(entry, split: str, path: Path, rng: random.Random) -> None:
    """`path` in the format and columns `entry.data` names."""
    task, data = entry.task, entry.data
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = data.format or {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl"}[path.suffix]
    n = ROWS[split]
    if fmt == "squad":
        write_squad(path, rng)
    elif fmt == "conll":
        width = max(2, data.tag_column + 1)
        lines = []
        for i in range(n):
            for j in range(4):
                tag = ["B-PER", "O", "B-LOC", "I-LOC"][(i + j) % 4]
                # A tag in every column: one file may serve several tasks (NER, POS, chunks), each its column.
                lines.append(" ".join([rng.choice(WORDS), *[tag] * (width - 1)]))
            lines.append("")
        path.write_text("\n".join(lines) + "\n", encoding=data.encoding)
    elif fmt in ("tsv", "csv"):
        columns = data.column_names or [*task.text, task.label]
        with open(path, "w", encoding=data.encoding, newline="") as handle:
            writer = csv.writer(handle, delimiter=data.delimiter or ("\t" if fmt == "tsv" else ","),
                                quoting=csv.QUOTE_NONE if data.quoting == "none" else csv.QUOTE_MINIMAL)
            if data.header:
                writer.writerow(columns)
            for i in range(n):
                writer.writerow([cell(task, c, i, rng) for c in columns])
    else:
        columns = [*task.text, task.label]
        path.write_text("".join(json.dumps({c: cell(task, c, i, rng) for c in columns}) + "\n" for i in range(n)),
                        encoding=data.encoding)


def stand_in(path: Path, tmp_path: Path, models: dict[str, str]) -> tuple[Path, dict, str]:
    """A copy of the example whose Hub-only tasks read local JSONL files, its data folder filled with stand-in
    files, and the tiny model to use."""
    raw, _ = read_yaml(path)
    model = models["t5"] if "t5" in str(raw["model"]).lower() else models["bert"]
    for task in raw["tasks"]:
        if "train" not in task["data"]:
            task["data"].update(train=f"{task['name']}/train.jsonl", eval=f"{task['name']}/eval.jsonl")
    config = tmp_path / path.name
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    data_dir = tmp_path / "data"
    run = load_config(config, ["--data_dir", str(data_dir), "--model", model])
    rng = random.Random(0)
    for entry in run.tasks:
        for split in ("train", "eval"):
            name = getattr(entry.data, split)
            if name is not None and not (data_dir / name).exists():
                write_split(entry, split, data_dir / name, rng)
    return config, raw, model


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_builds_its_tasks_arguments_model_and_trainer(path, tmp_path, tiny_models):
    first_lines = path.read_text(encoding="utf-8").splitlines()[:10]
    assert any("manyheads train" in line for line in first_lines), "examples start with the command to run them"
    config, raw, model = stand_in(path, tmp_path, tiny_models)
    output_dir = tmp_path / "out"
    run = load_config(config, ["--data_dir", str(tmp_path / "data"), "--model", model, "--output_dir",
                               str(output_dir), "--use_cpu", "true"])
    trainer = build_trainer(run)

    # The tasks: each entry's type and every setting it wrote, on the model the trainer trains.
    assert list(trainer.model.tasks) == [t["name"] for t in raw["tasks"]]
    for written in raw["tasks"]:
        task = trainer.model.tasks[written["name"]]
        assert task.type == written["type"]
        for key, value in written.items():
            if key not in ("name", "type", "data"):
                expected = [value] if key == "text" and isinstance(value, str) else value
                assert getattr(task, key) == expected, (written["name"], key)
        assert len(trainer.train_dataset.datasets[written["name"]]) > 0
        if task.label_list or task.type in ("classification", "token_classification"):
            assert task.label_list  # fitted on the stand-in training rows
    # The arguments: every top-level field of the example, as the trainer got it.
    fields = set(argument_fields())
    for key, value in raw.items():
        if key in fields and key not in NOT_COMPARED | {"model", "data_dir", "max_length"}:
            assert getattr(trainer.args, key) == value, key
    assert trainer.args.output_dir == str(output_dir)
    # The sampler, collator and every task's rows work together: one batch of each task.
    seen = set()
    for batch in trainer.get_train_dataloader():  # a task-group batch (gradient aggregation) holds one per task
        seen |= set(batch[GROUP_COLUMN]) if GROUP_COLUMN in batch else {batch["task"]}
    assert seen == set(trainer.model.tasks)


def test_an_example_written_the_old_way_builds_the_same_run(tmp_path, tiny_models, caplog):
    """The sections of earlier releases (`sampling`, `balancing`, `training`) still load, to the same arguments."""
    path = next(p for p in EXAMPLES if p.name == "glue3_upgrad.yaml")
    config, raw, model = stand_in(path, tmp_path, tiny_models)
    old = {k: copy.deepcopy(v) for k, v in raw.items() if k not in argument_fields() or k in ("model", "max_length")}
    old["balancing"] = {"aggregator": raw["gradient_aggregator"]}
    old["training"] = {k: v for k, v in raw.items() if k in argument_fields() and k not in old
                       and k != "gradient_aggregator"}
    old_path = tmp_path / "old.yaml"
    old_path.write_text(yaml.safe_dump(old), encoding="utf-8")
    flags = ["--data_dir", str(tmp_path / "data"), "--model", model]
    new_args = load_config(config, flags).training_arguments()
    old_args = load_config(old_path, flags).training_arguments()
    assert old_args.to_dict() == new_args.to_dict()
    assert sum("deprecated" in r.getMessage() for r in caplog.records) == 2  # balancing.aggregator, training:
