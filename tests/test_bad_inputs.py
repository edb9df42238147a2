"""Bad input never costs a run: a corpus of malformed inputs, each through the real `manyheads train`.

Every case must give exactly one `error: ...` line on stderr that names the file, row or key, the value and the
fix; exit code 2; no traceback; and nothing written to (or deleted from) the output folder. The library-level
checks behind these messages are tested next to their code (test_config.py, test_data_errors.py, ...); this
is the end-to-end corpus of issue 6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from manyheads.cli.main import main

from .conftest import base_config, make_encoder, make_tokenizer, review_rows, write_jsonl


@dataclass
class Case:
    """`build(ctx)` breaks the default config / data / output folder; `needles` must all be in the error line."""

    build: Callable[[Ctx], None]
    needles: tuple[str, ...]
    warning: str | None = None  # a `warning: ...` line expected besides the error


@dataclass
class Ctx:
    raw: dict
    dir: Path
    out: Path
    models: dict[str, str]
    argv: list[str] = field(default_factory=list)
    text: str | None = None  # the config file's text, when a case needs it verbatim
    config_bytes: bytes | None = None  # ... or its bytes (an encoding other than UTF-8)

    def rows(self, name: str, mutate: Callable[[list[dict]], None], n: int = 16) -> str:
        rows = review_rows(n, 9)
        mutate(rows)
        return write_jsonl(self.dir / name, rows)

    def only(self, index: int, **changes) -> dict:
        """Keep one task of the default four (so one problem gives one line), changed as given."""
        task = {**self.raw["tasks"][index], **changes}
        self.raw["tasks"] = [task]
        return task

    def write(self, name: str, text: str) -> str:
        (self.dir / name).write_text(text, encoding="utf-8")
        return name


def _set(path: str, value):
    """A case that sets one (dotted) key of the raw config."""
    def build(ctx: Ctx) -> None:
        *parents, last = path.split(".")
        node = ctx.raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value
    return build


def _token_rows(ctx: Ctx) -> None:
    rows = [{"tokens": ["red", "box"], "tags": ["B-C", "O"]}, {"tokens": ["a", "blue", "item"], "tags": ["O", "B-C"]}]
    ctx.write("ner.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    ctx.raw["tasks"] = [{"name": "ner", "type": "token_classification", "text": "tokens", "label": "tags",
                         "data": {"train": "ner.jsonl"}}]


def _conll(ctx: Ctx) -> None:
    ctx.write("bad.conll", "red NN B-NP B-C\nbox NN I-NP\n\n")
    ctx.raw["tasks"] = [{"name": "ner", "type": "token_classification", "text": "tokens", "label": "tags",
                         "data": {"train": "bad.conll", "format": "conll"}}]


def _qa(ctx: Ctx) -> None:
    rows = [{"question": "which color", "context": "the red box", "answers": {"text": ["red"], "answer_start": [5]}}]
    ctx.write("qa.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    ctx.raw["tasks"] = [{"name": "qa", "type": "question_answering", "text": ["question", "context"],
                         "label": "answers", "doc_stride": 8, "data": {"train": "qa.jsonl"}}]


def _multilabel_columns(ctx: Ctx) -> None:
    ctx.only(2, label_columns=["red", "green", "blue", "yellow"], labels=None,
             data={"train": ctx.rows("ml.jsonl", lambda r: r[4].update(green=2))})
    ctx.raw["tasks"][0].pop("label")


def _previous_run(ctx: Ctx) -> None:
    ctx.out.mkdir()
    (ctx.out / "trainer_state.json").write_text("{}", encoding="utf-8")
    (ctx.out / "checkpoint-4").mkdir()


def _incomplete_checkpoint(ctx: Ctx) -> None:
    (ctx.out / "checkpoint-4").mkdir(parents=True)
    (ctx.out / "checkpoint-4" / "model.safetensors").write_bytes(b"partial")
    ctx.argv = ["--resume"]


def _labels(mutate, where: int = 0):
    def build(ctx: Ctx) -> None:
        ctx.raw["tasks"][where]["labels"] = ["neg", "pos"]
        ctx.raw["tasks"][where]["data"] = {"train": "train.jsonl", "eval": ctx.rows("bad.jsonl", mutate)}
    return build


def _eval_rows(task: int, mutate):
    def build(ctx: Ctx) -> None:
        ctx.raw["tasks"][task]["data"] = {"train": "train.jsonl", "eval": ctx.rows("bad.jsonl", mutate)}
    return build


def _checkpoint(tasks: list, corrupt: bool = False):
    """A complete-looking checkpoint-4 in the output folder, of a model with `tasks` (task objects)."""
    def build(ctx: Ctx) -> None:
        from manyheads import MultiTaskModel
        from manyheads.training.checkpoints import mark_complete

        folder = ctx.out / "checkpoint-4"
        MultiTaskModel.from_encoder(make_encoder(), tasks).save_pretrained(folder)
        (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
        if corrupt:
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-100])
        mark_complete(str(folder))
        ctx.argv.append("--resume")
    return build


def _other_encoder_checkpoint(ctx: Ctx) -> None:
    """checkpoint-4 of the same task and labels on an encoder of another size."""
    from transformers import BertConfig, BertModel

    from manyheads import MultiTaskModel
    from manyheads.training.checkpoints import mark_complete

    ctx.only(0, labels=["neg", "pos"])
    folder = ctx.out / "checkpoint-4"
    encoder = BertModel(BertConfig(vocab_size=30, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=20, max_position_embeddings=64))
    MultiTaskModel.from_encoder(encoder, [_classification("sentiment", ["neg", "pos"])]).save_pretrained(folder)
    (folder / "trainer_state.json").write_text("{}", encoding="utf-8")
    mark_complete(str(folder))
    ctx.argv.append("--resume")


def _classification(name: str, labels: list[str]):
    from manyheads import Classification

    return Classification(name=name, labels=labels)


def _alias_bomb(ctx: Ctx) -> None:
    """A few hundred bytes of YAML whose aliases expand to 10**8 strings, as the value of an integer key: the
    message must show a bounded excerpt, not the expansion (which grew past 5 GB)."""
    names = "abcdefgh"
    levels = ["    - &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"    - &{names[i + 1]} [" + ", ".join([f"*{names[i]}"] * 10) + "]" for i in range(7)]
    text = yaml.safe_dump({k: v for k, v in ctx.raw.items() if k != "freeze"})
    ctx.text = text + "freeze:\n  layers:\n" + "\n".join(levels) + "\n"


CASES: dict[str, Case] = {
    # ----- the config file itself -----
    "yaml_syntax_error": Case(lambda c: setattr(c, "text", "model: x\ntasks:\n  - name: [unclosed\n"),
                              ("cfg.yaml:", "YAML syntax error", "Fix the YAML at that line")),
    "unknown_top_level_key": Case(_set("samplng_strategy", "uniform"),
                                  ("unknown key 'samplng_strategy'", "Did you mean 'sampling_strategy'",
                                   "Valid keys: model")),
    "unknown_task_type": Case(_set("tasks.0.type", "clasification"),
                              ("tasks[0] (sentiment).type", "'clasification'", "Did you mean 'classification'")),
    "duplicate_task_names": Case(_set("tasks.1.name", "sentiment"),
                                 ("tasks:", "'sentiment' is used by 2 tasks", "Rename")),
    "wrong_type_of_a_section_key": Case(_set("freeze.layers", "two"),
                                        ("config.freeze.layers", "'two'", "expected an integer", "Fix the value")),
    "unknown_command_line_flag": Case(lambda c: c.argv.extend(["--max_stepz", "3"]),
                                      ("'--max_stepz'", "Did you mean 'max_steps'")),
    # ----- training arguments, sampling, balancing, diagnostics -----
    "unknown_training_argument": Case(_set("learning_rat", 1e-4),
                                      ("'learning_rat'", "Did you mean 'learning_rate'")),
    "wrong_type_of_training_argument": Case(_set("learning_rate", "fast"),
                                            ("'learning_rate'", "'fast'", "expected float", "Fix the value")),
    "training_arguments_conflict": Case(
        lambda c: c.raw.update(load_best_model_at_end=True, eval_strategy="steps", save_strategy="epoch"),
        ("arguments:", "load_best_model_at_end", "STEPS", "EPOCH", "Fix these fields")),
    "unknown_sampling_strategy": Case(_set("sampling_strategy", "random"),
                                      ("'sampling_strategy' is 'random'", "valid choices: proportional")),
    "temperature_not_positive": Case(lambda c: c.raw.update(sampling_strategy="temperature", sampling_temperature=0),
                                     ("'sampling_temperature' is 0", "must be > 0")),
    "old_key_and_its_field_both_given": Case(lambda c: c.raw.update(sampling_strategy="uniform",
                                                                    sampling={"strategy": "temperature"}),
                                             ("'sampling_strategy' is given both", "'sampling.strategy'")),
    "unknown_metric_for_best_model": Case(_set("metric_for_best_model", "eval_acc"),
                                          ("metric_for_best_model", "'eval_acc'", "Valid: eval_average")),
    "unknown_weighting": Case(_set("loss_weighting", "equl"),
                              ("'loss_weighting' is 'equl'", "valid choices: equal")),
    "bad_weighting_kwargs": Case(lambda c: c.raw.update(loss_weighting="dwa", loss_weighting_kwargs={"tmp": 2}),
                                 ("loss_weighting 'dwa'", "'tmp'", "Fix loss_weighting_kwargs")),
    "aggregator_with_one_task": Case(lambda c: (c.only(0), c.raw.update(gradient_aggregator="upgrad")),
                                     ("aggregator 'upgrad'", "this run has 1", "add tasks")),
    "unknown_diagnostics_key": Case(_set("diagnostics", {"monitor_evry": 5}),
                                    ("config.diagnostics: unknown key 'monitor_evry'", "Did you mean")),
    # ----- the encoder -----
    "model_path_does_not_exist": Case(lambda c: c.raw.update(model=str(c.dir / "no-such-encoder")),
                                      ("model: folder not found", "no-such-encoder", "Check the path")),
    "tokenizer_missing_from_model_folder": Case(lambda c: c.raw.update(model=c.models["no_tokenizer"]),
                                                ("model:", "no-tokenizer", "has no tokenizer files",
                                                 "tokenizer.save_pretrained")),
    "model_folder_without_config": Case(lambda c: c.raw.update(model=c.models["tokenizer_only"]),
                                        ("model:", "tokenizer-only", "has no config.json", "save_pretrained")),
    "max_length_larger_than_encoder_allows": Case(_set("tasks.0.max_length", 512),
                                                  ("tasks.sentiment.max_length", "512", "Set max_length <= 64")),
    # ----- data files -----
    "missing_data_file": Case(_set("tasks.0.data", {"train": "nope.jsonl"}),
                              ("tasks.sentiment.data.train", "nope.jsonl", "Check the path")),
    "missing_column": Case(lambda c: c.only(0, text="review", data={"train": "train.jsonl"}),
                           ("train.jsonl", "column 'review'", "task 'sentiment'", "Fix 'text'/'label'")),
    "empty_file": Case(lambda c: (c.write("empty.jsonl", ""), _set("tasks.3.data",
                                                                   {"train": "train.jsonl", "eval": "empty.jsonl"})(c)),
                       ("empty.jsonl", "eval file of task 'score' is empty", "Point it at a file with rows")),
    "empty_split_header_only": Case(lambda c: (c.write("head.csv", "text,sentiment\n"),
                                               c.only(0, data={"train": "head.csv"})),
                                    ("head.csv", "train file of task 'sentiment' has a header but no rows",
                                     "Point it at a file")),
    "unreadable_file_format": Case(lambda c: (c.write("rows.xyz", "a\n"), c.only(0, data={"train": "rows.xyz"})),
                                   ("tasks.sentiment.data.train", "rows.xyz", "set 'format'")),
    "conll_wrong_number_of_columns": Case(_conll, ("bad.conll", "line 2 has 3 columns, expected 4",
                                                   "Give every token line the same")),
    # ----- data cells -----
    "label_not_in_declared_labels": Case(_labels(lambda r: r[3].update(sentiment="meh")),
                                         ("bad.jsonl", "data row 4", "column 'sentiment'", "'meh'",
                                          "Add it to 'labels'")),
    "empty_label": Case(_eval_rows(0, lambda r: r[7].update(sentiment=None)),
                        ("bad.jsonl", "data row 8", "column 'sentiment'", "label is empty", "Fill or drop")),
    "regression_target_not_a_number": Case(_eval_rows(3, lambda r: r[5].update(score="high")),
                                           ("bad.jsonl", "data row 6", "column 'score'", "'high'", "not a number",
                                            "Fix or drop")),
    "regression_target_nan": Case(_eval_rows(3, lambda r: r[1].update(score=float("nan"))),
                                  ("bad.jsonl", "data row 2", "column 'score'", "nan", "not finite", "Fix or drop")),
    "text_cell_not_a_string": Case(_eval_rows(0, lambda r: r[2].update(text=None)),
                                   ("bad.jsonl", "data row 3", "column 'text'", "None", "not a string",
                                    "Fill or drop")),
    "multilabel_value_not_0_or_1": Case(_multilabel_columns, ("ml.jsonl", "data row 5", "column 'green'",
                                                              "value 2", "Use 0/1")),
    "multilabel_cell_not_a_list": Case(_eval_rows(2, lambda r: r[0].update(colors="red")),
                                       ("bad.jsonl", "data row 1", "column 'colors'", "'red'",
                                        "Use a JSON list")),
    "token_and_tag_lists_differ": Case(_token_rows, ("ner.jsonl", "data row 2", "3 words but 2 tags",
                                                     "Give one tag per word")),
    "qa_answer_not_at_offset": Case(_qa, ("qa.jsonl", "data row 1", "'red'", "not found at offset 5",
                                          "Fix answer_start")),
    # ----- the output folder -----
    "output_folder_holds_another_run": Case(_previous_run, ("output_dir:", "already holds a run", "checkpoint-4",
                                                            "--resume", "--overwrite")),
    "overwrite_with_bad_data_keeps_the_old_run": Case(
        lambda c: (_previous_run(c), c.argv.append("--overwrite"), _set("tasks.0.data", {"train": "nope.jsonl"})(c)),
        ("tasks.sentiment.data.train", "nope.jsonl", "Check the path")),
    "resume_without_checkpoint": Case(lambda c: c.argv.append("--resume"),
                                      ("--resume: no complete checkpoint", "Run without --resume")),
    "resume_with_only_an_incomplete_checkpoint": Case(_incomplete_checkpoint,
                                                      ("--resume: no complete checkpoint", "Run without --resume"),
                                                      warning="checkpoint-4 is incomplete"),
    "resume_from_a_missing_folder": Case(lambda c: c.argv.extend(["--resume", str(c.dir / "checkpoint-9")]),
                                         ("--resume: checkpoint folder not found", "checkpoint-9", "Check the path")),
    "resume_and_overwrite_together": Case(lambda c: c.argv.extend(["--overwrite", "--resume"]),
                                          ("--resume and --overwrite", "Give one of them")),
    # ----- round 2 (issue 13): checked before anything runs -----
    "output_dir_is_a_file": Case(lambda c: c.out.write_text("x", encoding="utf-8"),
                                 ("output_dir:", "is a file", "Give a folder")),
    "output_dir_under_a_file": Case(lambda c: (c.out.write_text("x", encoding="utf-8"),
                                               c.raw.update(output_dir=str(c.out / "run"))),
                                    ("output_dir:", "lies under", "which is a file")),
    "task_name_with_a_dot": Case(_set("tasks.0.name", "sst.2"), ("tasks[0] (sst.2)", "name: got 'sst.2'",
                                                                 "use letters, digits")),
    "task_name_empty": Case(_set("tasks.0.name", ""), ("tasks[0] ()", "name: got ''")),
    "config_not_utf8": Case(lambda c: setattr(c, "config_bytes", "model: caf\u00e9\n".encode("latin-1")),
                            ("cfg.yaml: not UTF-8 text", "0xe9", "Save the config as UTF-8")),
    "data_not_utf8": Case(lambda c: ((c.dir / "latin.csv").write_bytes("text,sentiment\ncaf\u00e9 good,pos\n"
                                                                      .encode("latin-1")),
                                     c.only(0, data={"train": "latin.csv"})),
                          ("latin.csv: line 2 is not valid utf-8", "0xe9", "data.encoding")),
    "jsonl_garbage_line": Case(lambda c: (c.write("bad.jsonl", '{"text": "a", "sentiment": "pos"}\n\n{oops\n'),
                                          c.only(0, data={"train": "bad.jsonl"})),
                               ("bad.jsonl: line 3 is not valid JSON", "'{oops'", "Fix or remove that line")),
    "encoder_weights_truncated": Case(lambda c: c.raw.update(model=c.models["truncated"]),
                                      ("model:", "model.safetensors cannot be read", "truncated or corrupted")),
    "resume_from_a_checkpoint_of_other_tasks": Case(_checkpoint([_classification("other", ["a", "b"])]),
                                                    ("--resume:", "checkpoint-4", "has tasks ['other']",
                                                     "start a new run")),
    "resume_from_a_checkpoint_with_other_labels": Case(
        lambda c: (c.only(0, labels=["pos", "neg"]), _checkpoint([_classification("sentiment", ["neg", "pos"])])(c)),
        ("--resume:", "task 'sentiment' has labels ['neg', 'pos'] in the checkpoint but ['pos', 'neg']")),
    "resume_from_a_checkpoint_of_another_encoder": Case(_other_encoder_checkpoint,
                                                        ("--resume:", "the checkpoint's encoder differs from model",
                                                         "hidden_size, num_hidden_layers", "vocab_size")),
    "resume_from_a_corrupted_checkpoint": Case(
        lambda c: (c.only(0, labels=["neg", "pos"]),
                   _checkpoint([_classification("sentiment", ["neg", "pos"])], corrupt=True)(c)),
        ("checkpoint-4/model.safetensors cannot be read", "truncated or corrupted")),
    # ----- round 2: config errors that used to surface only after training started -----
    "class_weights_negative_and_nan": Case(_set("tasks.0.class_weights", [-1, float("nan")]),
                                           ("tasks[0] (sentiment)", "class_weights: got [-1.0, nan]",
                                            "finite number >= 0")),
    "multilabel_rows_all_empty_without_labels": Case(
        lambda c: (c.only(2, labels=None, data={"train": c.rows("empty.jsonl", lambda r: [x.update(colors=[])
                                                                                          for x in r])})),
        ("tasks.colors: no label occurs in the training split", "Declare 'labels'")),
    # ----- round 2: silent cases -----
    "duplicate_declared_labels": Case(_set("tasks.0.labels", ["neg", "pos", "neg"]),
                                      ("labels: ['neg'] appear more than once",)),
    "dict_valued_labels": Case(_set("tasks.0.labels", [{"neg": 0}]),
                               ("tasks[0] (sentiment).labels", "got [{'neg': 0}]", "expected list[str]")),
    "number_mixed_into_a_label_column": Case(_eval_rows(0, lambda r: r[4].update(sentiment=1)),
                                             ("bad.jsonl", "data row 5", "label 1 mixes with", "names or numbers")),
    "max_length_zero": Case(_set("tasks.0.max_length", 0), ("max_length: got 0; it must be >= 1",)),
    "yaml_alias_bomb": Case(_alias_bomb, ("config.freeze.layers", "got [['x', 'x',", "...]", "expected an integer")),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Broken encoder folders: weights without a tokenizer, a tokenizer without config or weights, truncated
    weights."""
    root = tmp_path_factory.mktemp("broken-models")
    make_encoder().save_pretrained(root / "no-tokenizer")
    make_tokenizer().save_pretrained(root / "tokenizer-only")
    make_encoder().save_pretrained(root / "truncated")
    make_tokenizer().save_pretrained(root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return {"no_tokenizer": str(root / "no-tokenizer"), "tokenizer_only": str(root / "tokenizer-only"),
            "truncated": str(root / "truncated")}


def snapshot(folder: Path) -> list[tuple[str, int, int]] | None:
    """Everything under `folder` (name, size, mtime), or None when it does not exist."""
    if not folder.exists():
        return None
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def write_case(name: str, tmp_path: Path, tiny_model_dir: str, data_dir: Path, models: dict) -> tuple[Path, Ctx]:
    out = tmp_path / "out"
    raw = base_config(tiny_model_dir, data_dir, out)
    ctx = Ctx(raw=raw, dir=data_dir, out=out, models=models)
    CASES[name].build(ctx)
    path = tmp_path / "cfg.yaml"
    if ctx.config_bytes is not None:
        path.write_bytes(ctx.config_bytes)
    else:
        path.write_text(ctx.text if ctx.text is not None else yaml.safe_dump(raw), encoding="utf-8")
    return path, ctx


def check_output(name: str, code: int, err: str, out_text: str, before, after) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, f"{name}: exit code {code}\n{err}"
    assert len(lines) == 1, f"{name}: expected one error line\n{err}"
    for needle in CASES[name].needles:
        assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"
    warning = CASES[name].warning
    if warning is not None:
        assert any(line.startswith("warning:") and warning in line for line in err.splitlines()), err
    assert "Traceback" not in err + out_text
    assert after == before, f"{name}: the output folder changed"


def run_case(command: str, name: str, tmp_path: Path, tiny_model_dir: str, data_dir: Path, models: dict,
             capsys) -> None:
    path, ctx = write_case(name, tmp_path, tiny_model_dir, data_dir, models)
    before = snapshot(ctx.out)
    code = main([command, str(path), *ctx.argv])
    captured = capsys.readouterr()
    check_output(name, code, captured.err, captured.out, before, snapshot(ctx.out))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_caught_before_training(name, tmp_path, tiny_model_dir, data_dir, models, capsys):
    run_case("train", name, tmp_path, tiny_model_dir, data_dir, models, capsys)


def test_the_config_every_case_breaks_is_itself_accepted(tmp_path, tiny_model_dir, data_dir, capsys):
    """The corpus's control: unbroken, the default config, data and output folder pass `validate` without an error
    or warning line, so each case's error comes from what that case breaks."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny_model_dir, data_dir, tmp_path / "out")), encoding="utf-8")
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith(("error:", "warning:"))], err


def test_bad_input_through_real_processes(tmp_path, tiny_model_dir, models):
    """The command line in its own process (two at once, to share the import time): exit code 2, one line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    runs = []
    for name in ("yaml_syntax_error", "output_folder_holds_another_run"):
        folder = tmp_path / name
        folder.mkdir()
        write_jsonl(folder / "train.jsonl", review_rows(64, 1))
        write_jsonl(folder / "eval.jsonl", review_rows(24, 2))
        path, ctx = write_case(name, folder, tiny_model_dir, folder, models)
        process = subprocess.Popen([sys.executable, "-m", "manyheads.cli.main", "train", str(path), *ctx.argv],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        runs.append((name, ctx, snapshot(ctx.out), process))
    for name, ctx, before, process in runs:
        out, err = process.communicate(timeout=180)
        check_output(name, process.returncode, err, out, before, snapshot(ctx.out))


def test_overwrite_replaces_the_previous_run(tmp_path, tiny_model_dir, data_dir, capsys):
    path, ctx = write_case("output_folder_holds_another_run", tmp_path, tiny_model_dir, data_dir, {})
    ctx.raw["max_steps"] = 2
    path.write_text(yaml.safe_dump(ctx.raw), encoding="utf-8")
    assert main(["train", str(path), "--overwrite"]) == 0
    capsys.readouterr()
    # The old run's checkpoint and state are gone (a later --resume cannot pick them up); the new model is there.
    assert not (ctx.out / "checkpoint-4").exists()
    # trainer_state.json is the new run's (2 steps), written at its end for `manyheads report`.
    assert json.loads((ctx.out / "trainer_state.json").read_text())["global_step"] == 2
    assert (ctx.out / "model.safetensors").is_file()


ROUND_2 = [name for name in CASES if list(CASES).index(name) >= list(CASES).index("output_dir_is_a_file")]


@pytest.mark.parametrize("name", [n for n in ROUND_2 if not n.startswith("resume")])
def test_validate_reports_what_train_would_refuse(name, tmp_path, tiny_model_dir, data_dir, models, capsys):
    run_case("validate", name, tmp_path, tiny_model_dir, data_dir, models, capsys)
