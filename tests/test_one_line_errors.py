"""Errors that used to end in a traceback (or in no error at all) where one `error: ...` line is promised.

Each case drives the real command line (`manyheads.cli.main.main`) and checks the README's promise: one line on
stderr naming the file or key, the problem and the fix; exit code 2 for bad input, 4 for a full disk; no
traceback; and, for bad input, the output folder left as it was. Issue 29, item 5.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from manyheads.cli.main import main

from .conftest import base_config, make_encoder, make_tokenizer, require, review_rows, write_jsonl
from .test_bad_inputs import snapshot

NOT_A_MODEL_FIX = "give the folder written by 'manyheads train'"


def one_error(capsys, code: int, expected_code: int = 2) -> str:
    """The single `error:` line of a run that must have stopped with `expected_code` and no traceback."""
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == expected_code, f"exit code {code}\n{captured.err}"
    assert len(lines) == 1, f"expected one error line\n{captured.err}"
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def write_config(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


class Planted:
    """Pickles as a call to os.mkdir: a loader that ran it would create the folder named."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __reduce__(self):
        return os.mkdir, (self.folder,)


# ----- a. evaluate / export on a folder that is no manyheads model -----

@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("kind", ["missing", "file", "plain_encoder"])
def test_evaluate_and_export_refuse_a_folder_that_holds_no_model(command, kind, tmp_path, tiny_model_dir, data_dir,
                                                                  capsys):
    model_dir = {"missing": str(tmp_path / "no-such-model"), "plain_encoder": tiny_model_dir}.get(kind)
    if kind == "file":
        model_dir = str(tmp_path / "model.txt")
        Path(model_dir).write_text("x", encoding="utf-8")
    config = write_config(tmp_path / "cfg.yaml", base_config(tiny_model_dir, data_dir, tmp_path / "out"))
    argv = ([command, model_dir, config] if command == "evaluate"
            else [command, model_dir, "--task", "sentiment", "--output", str(tmp_path / "exported")])
    line = one_error(capsys, main(argv))
    problem = {"missing": "folder not found", "file": "is a file, not a folder",
               "plain_encoder": "holds a 'bert' model, not a manyheads one"}
    assert f"MODEL_DIR: {model_dir}" in line or f"MODEL_DIR: folder not found: {model_dir}" in line, line
    assert problem[kind] in line and NOT_A_MODEL_FIX in line, line
    assert not (tmp_path / "exported").exists()


# ----- b. predict --backend onnx on a truncated graph -----

@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> str:
    """A manyheads model of one classification task, exported as an ONNX graph."""
    from manyheads import Classification, MultiTaskModel

    root = tmp_path_factory.mktemp("onnx")
    MultiTaskModel.from_encoder(make_encoder(), [Classification(name="sentiment", labels=["neg", "pos"])]) \
        .save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    assert main(["export", str(root / "model"), "--format", "onnx", "--output", str(root / "graph")]) == 0
    return str(root / "graph")


def test_predict_on_a_truncated_onnx_graph_is_one_line(onnx_folder, tmp_path, capsys):
    folder = tmp_path / "graph"
    shutil.copytree(onnx_folder, folder)
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    rows = write_jsonl(tmp_path / "in.jsonl", review_rows(4, 1))
    capsys.readouterr()
    code = main(["predict", str(folder), "--backend", "onnx", "--input", rows, "--output", str(tmp_path / "p.jsonl")])
    line = one_error(capsys, code)
    assert f"MODEL_DIR: {graph} cannot be read as an ONNX graph" in line, line
    assert "truncated or corrupted" in line and "--format onnx" in line, line
    assert not (tmp_path / "p.jsonl").exists()


# ----- c. --resume with training state that torch.load refuses -----

@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    """A 4-step run of one task with complete checkpoints at steps 2 and 4; its config (without output_dir)."""
    root = tmp_path_factory.mktemp("resume")
    write_jsonl(root / "train.jsonl", review_rows(64, 1))
    raw = base_config(tiny_model_dir, root, root / "run", max_steps=4, save_strategy="steps", save_steps=2)
    raw["tasks"] = [{**raw["tasks"][0], "data": {"train": "train.jsonl"}}]
    assert main(["train", write_config(root / "cfg.yaml", raw)]) == 0
    return root / "run", raw


STATE_CASES = {
    "optimizer_truncated": ("optimizer.pt", "truncated or corrupted"),
    "optimizer_planted": ("optimizer.pt", "Python objects other than tensors"),
    "scheduler_planted": ("scheduler.pt", "Python objects other than tensors"),
    "rng_state_planted": ("rng_state.pth", "Python objects other than tensors"),
    "balancing_planted": ("balancing.pt", "Python objects other than tensors"),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_resume_with_unreadable_training_state_is_one_line(case, checkpointed_run, tmp_path, capsys):
    run, raw = checkpointed_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    name, needle = STATE_CASES[case]
    target = out / "checkpoint-4" / name
    if case.endswith("truncated"):
        target.write_bytes(target.read_bytes()[:-200])
    else:
        torch.save({"state": Planted(tmp_path / "ran")}, target)
    config = write_config(tmp_path / "cfg.yaml", {**raw, "output_dir": str(out)})
    before = snapshot(out)
    capsys.readouterr()
    line = one_error(capsys, main(["train", config, "--resume"]))
    assert f"--resume: {target} cannot be read" in line and needle in line, line
    assert "Resume from an earlier checkpoint" in line and "start over" in line, line
    assert not (tmp_path / "ran").exists(), "the planted pickle ran"
    assert snapshot(out) == before


# ----- d. a full disk while torch.save writes optimizer.pt -----

class _FillsUp:
    """A file object whose disk fills up after `room` bytes: the write fails as `error` says."""

    def __init__(self, handle, error: BaseException, room: int = 1000):
        self.handle, self.error, self.room = handle, error, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise self.error
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


@pytest.mark.parametrize("errno_given", [True, False], ids=["errno", "no_errno"])
def test_disk_full_while_saving_the_optimizer_is_exit_4(errno_given, tmp_path, tiny_model_dir, data_dir, capsys,
                                                        monkeypatch):
    """torch.save reports the full disk as a RuntimeError of its zip writer ("unexpected pos ..."); given a path
    (as Trainer saves optimizer.pt) it carries no errno, so then the disk's free space is what says "full"."""
    from manyheads.training.checkpoints import is_complete

    out = tmp_path / "out"
    raw = base_config(tiny_model_dir, data_dir, out, max_steps=9, save_strategy="steps", save_steps=3)
    raw["tasks"] = raw["tasks"][:1]
    config = write_config(tmp_path / "cfg.yaml", raw)
    real_save, saves = torch.save, []
    error = OSError(errno.ENOSPC, "No space left on device") if errno_given else RuntimeError(
        "basic_ios::clear: iostream error")

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            saves.append(f)
            if len(saves) == 2:  # checkpoint-6: the disk fills up in the middle of the optimizer's state
                with open(f, "wb") as handle:
                    return real_save(obj, _FillsUp(handle, error), *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    if not errno_given:
        real_usage = shutil.disk_usage

        def usage(path):
            full = real_usage(path)
            return full._replace(free=0) if str(path).startswith(str(out)) else full

        monkeypatch.setattr(shutil, "disk_usage", usage)
    capsys.readouterr()
    line = one_error(capsys, main(["train", config]), expected_code=4)
    assert line.startswith(f"error: disk full while writing to {out} (No space left on device"), line
    assert line.endswith(f"the latest complete checkpoint, {out / 'checkpoint-3'}, is intact. Free space, then "
                         "resume with --resume."), line
    assert is_complete(str(out / "checkpoint-3")) and not is_complete(str(out / "checkpoint-6"))


def test_a_failed_write_on_a_disk_with_room_is_not_called_full(tmp_path, monkeypatch):
    from manyheads.cli.train import disk_full_reason

    writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    reader = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")
    assert disk_full_reason(writer, str(tmp_path)) is None  # this disk has room: some other failure
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    assert disk_full_reason(writer, str(tmp_path / "not" / "yet")).startswith("No space left on device")
    assert disk_full_reason(reader, str(tmp_path)) is None
    assert disk_full_reason(RuntimeError("CUDA out of memory"), str(tmp_path)) is None


# ----- e. an encoder whose pytorch_model.bin is a pickle of something else than tensors -----

@pytest.mark.parametrize("content", ["planted", "not_tensors"])
@pytest.mark.parametrize("command", ["train", "validate"])
def test_encoder_pickle_without_tensors_is_one_line(content, command, tmp_path, data_dir, capsys):
    encoder = tmp_path / "encoder"
    make_encoder().save_pretrained(encoder)
    make_tokenizer().save_pretrained(encoder)
    (encoder / "model.safetensors").unlink()
    weights = encoder / "pytorch_model.bin"
    if content == "planted":
        torch.save({"embeddings.word_embeddings.weight": Planted(tmp_path / "ran")}, weights)
    else:
        torch.save({**make_encoder().state_dict(), "embeddings.word_embeddings.weight": [0.0, 1.0]}, weights)
    out = tmp_path / "out"
    config = write_config(tmp_path / "cfg.yaml", base_config(str(encoder), data_dir, out))
    capsys.readouterr()
    line = one_error(capsys, main([command, config]))
    needle = "Python objects other than tensors" if content == "planted" else "is not a tensor"
    assert f"model: {weights} cannot be read" in line and needle in line, line
    assert "Copy or download the model again" in line, line
    assert not (tmp_path / "ran").exists() and not out.exists()


# ----- f. a YAML alias bomb in a training field -----

def bomb_under_training(raw: dict, key: str) -> str:
    """The config's YAML with the training field `<key>` set to 10**8 strings: 8 levels of nested aliases, a few hundred
    bytes (as test_bad_inputs' `yaml_alias_bomb` does under `freeze:`)."""
    names = "abcdefgh"
    levels = ["    - &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"    - &{names[i + 1]} [" + ", ".join([f"*{names[i]}"] * 10) + "]" for i in range(7)]
    text = yaml.safe_dump({k: v for k, v in raw.items() if k != key})
    return text + f"{key}:\n" + "\n".join(levels) + "\n"


@pytest.mark.parametrize("command", ["validate", "train"])
def test_yaml_alias_bomb_under_training_is_refused(command, tmp_path, tiny_model_dir, data_dir, capsys):
    out = tmp_path / "out"
    path = tmp_path / "cfg.yaml"
    path.write_text(bomb_under_training(base_config(tiny_model_dir, data_dir, out), "run_name"), encoding="utf-8")
    capsys.readouterr()
    line = one_error(capsys, main([command, str(path)]))
    assert "'run_name': got [['x', 'x'," in line and "...]" in line and "expected str" in line, line
    assert len(line) < 400 and not out.exists()


# ----- g. sharing.target_modules that match no layer of the encoder -----

@pytest.mark.parametrize("command", ["validate", "train"])
def test_target_modules_matching_no_layer_leave_the_output_folder_alone(command, tmp_path, tiny_model_dir,
                                                                        data_dir, capsys):
    require("peft")
    out = tmp_path / "out"
    raw = base_config(tiny_model_dir, data_dir, out)
    raw["sharing"] = {"mode": "lora", "target_modules": ["nope"]}
    config = write_config(tmp_path / "cfg.yaml", raw)
    capsys.readouterr()
    line = one_error(capsys, main([command, config]))
    assert "sharing: target_modules: ['nope'] matches no layer" in line and "[query, value]" in line, line
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


# ----- h. messages that did not say which line, or read oddly -----

@pytest.mark.parametrize("case", ["tag_column_out_of_range", "one_column"])
def test_conll_problems_name_the_line(case, tmp_path, tiny_model_dir, data_dir, capsys):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out")
    conll = data_dir / "ner.conll"
    data = {"train": "ner.conll", "format": "conll"}
    if case == "tag_column_out_of_range":
        conll.write_text("red B-C\nbox O\n\na O\nblue B-C\n", encoding="utf-8")
        data["tag_column"] = 3
    else:
        conll.write_text("red\nbox\n", encoding="utf-8")
    raw["tasks"] = [{"name": "ner", "type": "token_classification", "text": "tokens", "label": "tags", "data": data}]
    config = write_config(tmp_path / "cfg.yaml", raw)
    capsys.readouterr()
    line = one_error(capsys, main(["validate", config]))
    assert f"{conll}: cannot read as conll: " in line, line
    if case == "tag_column_out_of_range":
        assert "tag_column 3 is not a column of line 1, which has 2 columns ('red B-C')" in line, line
        assert "Set the task's data.tag_column to 1" in line and "list index" not in line, line
    else:
        assert "line 1 has 1 column ('red'); a token line holds the word and its tag" in line, line
        assert "expected 1" not in line, line


# ----- i. a task named like another task's metric prefix -----

def test_metrics_table_keeps_a_task_named_a_loss_apart_from_task_a(tmp_path, tiny_model_dir, data_dir, capsys):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=2)
    first = raw["tasks"][0]
    raw["tasks"] = [{**first, "name": "a"}, {**first, "name": "a_loss"}]
    config = write_config(tmp_path / "cfg.yaml", raw)
    capsys.readouterr()
    assert main(["train", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("task "))
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in (["a"], ["a_loss"])}
    # Before: task a's row took a_loss's metrics as columns loss_accuracy, loss_f1, ...
    assert "loss_accuracy" not in header and set(rows) == {"a", "a_loss"}, lines
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert f"{results['eval_a_loss_accuracy']:.4f}" in rows["a_loss"], (rows, results)


def test_an_eval_label_missing_from_training_is_not_blamed_on_declared_labels(tiny_encoder, tokenizer, tmp_path):
    """Item 5h: no labels were declared, so the message names the training split, not 'declared labels'."""
    from datasets import Dataset

    from manyheads import Classification, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments

    train = Dataset.from_list([{"text": "good item", "label": "pos"}, {"text": "bad item", "label": "neg"}])
    held_out = Dataset.from_list([{"text": "a item", "label": "meh"}])
    model = MultiTaskModel.from_encoder(tiny_encoder, [Classification(name="s")])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none")
    with pytest.raises(ValueError, match=r"label 'meh' does not occur in the training split \(labels found there: "
                                         r"\['neg', 'pos'\]\), so the head has no output for it"):
        MultiTaskTrainer(model=model, args=args, train_dataset={"s": train}, eval_dataset={"s": held_out},
                         processing_class=tokenizer)
