"""Shared fixtures: a tiny BERT and a word-level tokenizer built offline, plus small generated data.

Nothing here reads ../shared or the network: a fresh clone runs the suite as is.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

GOOD = ["good", "great", "fine", "nice", "superb"]
BAD = ["bad", "awful", "poor", "weak", "broken"]
COLORS = ["red", "green", "blue", "yellow"]
FILLER = ["the", "a", "item", "was", "very", "it", "is", "and", "thing", "box"]
WORDS = GOOD + BAD + COLORS + FILLER


# Every optional dependency the suite exercises is in the `test` extra (pyproject.toml).
INSTALL_HINT = 'pip install -e ".[test]"'


def require(*modules: str) -> None:
    """Import optional packages a test needs. A missing one raises ImportError with the install hint: at module
    level it fails the file's collection, in a test it fails that test. Never a skip, which would hide the
    feature's tests on a machine without the extras and still report the run green."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"{', '.join(missing)} not installed: these tests need manyheads' test extras. Install "
                          f"them with {INSTALL_HINT}")


def make_tokenizer():
    from transformers import BertTokenizer

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)


def make_encoder(seed: int = 0, dropout: float = 0.0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return BertModel(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny BERT saved with its tokenizer, usable as `model:` in configs."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    make_encoder().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def _tiny_encoder():
    return make_encoder()


@pytest.fixture
def tiny_encoder(_tiny_encoder):
    """Built once per session, deep-copied per test."""
    return copy.deepcopy(_tiny_encoder)


@pytest.fixture
def new_encoder(_tiny_encoder):
    """For tests that build several models: each call returns a fresh deep copy of the session encoder."""
    return lambda: copy.deepcopy(_tiny_encoder)


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def review_trainer(new_encoder, tokenizer, tmp_path):
    """Builds `run_helpers.new_trainer`s (Python API) on fresh copies of the tiny encoder, each in
    tmp_path/<folder>: the four review tasks (or `names`, with `task_options` per task), 64 training rows each."""
    from .run_helpers import REVIEW_TASKS, new_trainer, review_tasks

    def make(folder="out", names=REVIEW_TASKS, task_options=None, **kwargs):
        kwargs.setdefault("tasks", review_tasks(names, **(task_options or {})))
        return new_trainer(new_encoder(), tokenizer, tmp_path / folder, **kwargs)
    return make


def review_rows(n: int, seed: int) -> list[dict]:
    """Short texts whose labels follow from their words (so a tiny model can learn them)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good, bad = rng.randint(0, 3), rng.randint(0, 3)
        colors = sorted(rng.sample(COLORS, rng.randint(0, 2)))
        words = rng.sample(GOOD * 2, good) + rng.sample(BAD * 2, bad) + colors + rng.sample(FILLER, 3)
        rng.shuffle(words)
        other = rng.sample(FILLER, 2) + rng.sample(GOOD + BAD, 1)
        rows.append({
            "text": " ".join(words),
            "other": " ".join(other),
            "sentiment": "pos" if good > bad else "neg",
            "match": int((good > bad) == (other[-1] in GOOD)),
            "colors": colors,
            "score": float(good - bad) + 0.5,
            **{c: int(c in colors) for c in COLORS},
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """train.jsonl (64 rows), eval.jsonl (24 rows) and small.jsonl (10 rows) in a temp folder."""
    write_jsonl(tmp_path / "train.jsonl", review_rows(64, 1))
    write_jsonl(tmp_path / "eval.jsonl", review_rows(24, 2))
    write_jsonl(tmp_path / "small.jsonl", review_rows(10, 3))
    return tmp_path


def task_section(train: str = "train.jsonl", eval_: str = "eval.jsonl") -> list[dict]:
    """One task of each type plus a pair task, as raw config dicts."""
    def data():
        return {"train": train, "eval": eval_}

    return [
        {"name": "sentiment", "type": "classification", "text": "text", "label": "sentiment", "data": data()},
        {"name": "match", "type": "classification", "text": ["text", "other"], "label": "match", "data": data()},
        {"name": "colors", "type": "multilabel", "text": "text", "label": "colors", "labels": COLORS, "data": data()},
        {"name": "score", "type": "regression", "text": "text", "label": "score", "data": data()},
    ]


def base_config(model_dir: str, data_dir: Path, output_dir: Path, **training) -> dict:
    return {
        "model": model_dir,
        "data_dir": str(data_dir),
        "max_length": 32,
        "tasks": task_section(),
        # MultiTaskTrainingArguments fields, at the top level as the recipe takes them.
        "output_dir": str(output_dir), "per_device_train_batch_size": 8, "max_steps": 12, "learning_rate": 1e-3,
        "logging_steps": 4, "report_to": "none", "save_strategy": "no", "use_cpu": True, "seed": 7, **training,
    }
