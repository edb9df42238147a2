"""The Python API as a Trainer user meets it: raw datasets in, user metrics out, extension points from user code."""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding

from manyheads import (
    Classification,
    LossWeighting,
    MultiLabel,
    MultiTaskModel,
    MultiTaskPredictor,
    MultiTaskTrainer,
    MultiTaskTrainingArguments,
    Regression,
)

from .conftest import GOOD, review_rows

EXAMPLES = Path(__file__).parent.parent / "examples"


def raw_sets(n: int = 48, seed: int = 1) -> dict[str, Dataset]:
    rows = review_rows(n, seed)
    return {
        "sentiment": Dataset.from_list([{"text": r["text"], "label": r["sentiment"]} for r in rows]),
        "score": Dataset.from_list([{"text": r["text"], "label": r["score"]} for r in rows]),
    }


def new_model(encoder, **tasks):
    tasks = tasks or {"sentiment": Classification(name="sentiment"), "score": Regression(name="score")}
    return MultiTaskModel.from_encoder(encoder, list(tasks.values()))


def arguments(tmp_path, **overrides) -> MultiTaskTrainingArguments:
    values = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8, "max_steps": 8,
              "learning_rate": 1e-3, "logging_steps": 4, "report_to": "none", "save_strategy": "no",
              "use_cpu": True, "seed": 3, "dataloader_pin_memory": False}
    return MultiTaskTrainingArguments(**{**values, **overrides})


def trainer_for(tiny_encoder, tokenizer, tmp_path, model=None, train=None, **kwargs) -> MultiTaskTrainer:
    args = kwargs.pop("args", None) or arguments(tmp_path)
    return MultiTaskTrainer(model=model or new_model(tiny_encoder), args=args,
                            train_dataset=train if train is not None else raw_sets(),
                            processing_class=tokenizer, **kwargs)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----- the example script -----
def write_glue_like(folder: Path) -> None:
    rows = review_rows(40, 5)
    for name, header, make in (
        ("sst2", "sentence\tlabel", lambda r: f"{r['text']}\t{int(r['sentiment'] == 'pos')}"),
        ("rte", "index\tsentence1\tsentence2\tlabel",
         lambda r: f"0\t{r['text']}\t{r['other']}\t{'entailment' if r['match'] else 'not_entailment'}"),
    ):
        (folder / name).mkdir(parents=True)
        for split, part in (("train", rows[:32]), ("dev", rows[32:])):
            (folder / name / f"{split}.tsv").write_text("\n".join([header, *map(make, part)]) + "\n")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_api_example_is_the_plain_script_plus_a_few_lines(tiny_model_dir, tmp_path):
    plain = (EXAMPLES / "plain_trainer.py").read_text().splitlines()
    multi = (EXAMPLES / "python_api.py").read_text().splitlines()
    changed = [line for line in difflib.unified_diff(plain, multi, lineterm="", n=0)
               if line.startswith("+") and not line.startswith("+++")]
    assert 0 < len(changed) <= 15, changed
    write_glue_like(tmp_path / "data")
    common = ["--model", tiny_model_dir, "--data_dir", str(tmp_path / "data"), "--max_steps", "6"]
    plain_trainer = load_example("plain_trainer").main([*common, "--output_dir", str(tmp_path / "plain")])
    assert "eval_f1" in plain_trainer.evaluate()  # the baseline works as a plain Trainer script
    trainer = load_example("python_api").main([*common, "--output_dir", str(tmp_path / "multi")])
    evals = [e for e in trainer.state.log_history if "eval_sst2_f1" in e]
    assert [e["step"] for e in evals] == [2, 4, 6, 6]  # three in training, then the script's own evaluate()
    for key in ("eval_sst2_precision", "eval_sst2_recall", "eval_rte_precision", "eval_rte_recall", "eval_rte_mcc"):
        assert key in evals[-1]
    # load_best_model_at_end on one of compute_metrics' names: the best SST-2 F1 of the three evaluations.
    assert trainer.state.best_metric == pytest.approx(max(e["eval_sst2_f1"] for e in evals[:3]))
    assert trainer.model.tasks["rte"].label_list == ["entailment", "not_entailment"]  # fitted from raw rows
    assert json.loads((tmp_path / "multi" / "config.json").read_text())["tasks"][1]["fitted"]["labels"] == [
        "entailment", "not_entailment"]


# ----- metrics -----
def positive_rate(prediction, task):
    return {"pos_rate": float((prediction.predictions.argmax(-1) == task.label_list.index("pos")).mean())}


def test_custom_metric_reaches_logs_trackers_and_best_model_selection(tiny_encoder, tokenizer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = arguments(tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="sentiment_pos_rate",
                     report_to="tensorboard")
    evaluation = raw_sets(16, 2)
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, args=args, eval_dataset=evaluation,
                          compute_metrics={"sentiment": positive_rate})
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_sentiment_pos_rate" in e]
    assert len(evals) == 4 and all("eval_score_pos_rate" not in e for e in evals)  # only the task it was given
    assert "eval_sentiment_accuracy" in evals[0] and "eval_sentiment_precision" in evals[0]  # built-ins kept
    assert trainer.state.best_metric == pytest.approx(max(e["eval_sentiment_pos_rate"] for e in evals))
    (log_dir,) = {p.parent for p in Path(args.output_dir).rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("eval/sentiment_pos_rate")}
    assert logged == {e["step"]: pytest.approx(e["eval_sentiment_pos_rate"]) for e in evals}
    # The multi-task options are TrainingArguments fields: in the arguments text TensorBoard keeps.
    text = events.Tensors("args/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"sampling_strategy": "proportional"' in text and '"loss_weighting": null' in text


def test_one_metric_function_for_every_task_gets_target_units_for_regression(tiny_encoder, tokenizer, tmp_path):
    seen = {}

    def metrics(prediction):  # the one-argument form of a plain Trainer script
        seen[len(seen)] = prediction
        return {"n": float(len(prediction.label_ids))}

    evaluation = raw_sets(16, 2)
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, eval_dataset=evaluation, compute_metrics=metrics)
    result = trainer.evaluate()
    assert result["eval_sentiment_n"] == 16 and result["eval_score_n"] == 16
    assert sorted(seen[1].label_ids.tolist()) == pytest.approx(sorted(evaluation["score"]["label"]), abs=1e-5)


def test_best_metric_that_no_task_can_report_is_rejected(tiny_encoder, tokenizer, tmp_path):
    args = arguments(tmp_path, metric_for_best_model="eval_sentimnt_f1")
    with pytest.raises(ValueError, match="names no metric of this run"):
        trainer_for(tiny_encoder, tokenizer, tmp_path, args=args, compute_metrics=positive_rate)


# ----- user-defined task types -----
CUSTOM_TASK = '''
from dataclasses import dataclass
from manyheads import Classification


@dataclass(kw_only=True)
class Flagged(Classification):
    """A classification task whose predictions also say whether the label is in `flag`."""

    flag: str = "pos"

    def postprocess(self, logits, inputs=None):
        return [{**p, "flagged": p["label"] == self.flag} for p in super().postprocess(logits, inputs)]
'''


def test_custom_task_type_is_saved_by_import_path_and_reloads_in_a_fresh_process(tiny_encoder, tokenizer, tmp_path,
                                                                                   monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent(CUSTOM_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_tasks import Flagged

    model = new_model(tiny_encoder, sentiment=Flagged(name="sentiment", flag="neg"))
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, model=model, train={"sentiment": raw_sets()["sentiment"]})
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    spec = json.loads((tmp_path / "model" / "config.json").read_text())["tasks"][0]
    assert spec["type"] == "my_tasks.Flagged" and spec["flag"] == "neg"
    records = [{"text": r["text"]} for r in review_rows(6, 9)]
    expected = MultiTaskPredictor(trainer.model, tokenizer, device="cpu").predict(records)
    assert {p["sentiment"]["flagged"] for p in expected} <= {True, False}
    script = ("import json, sys; from manyheads import MultiTaskPredictor; "
              "print(json.dumps(MultiTaskPredictor(sys.argv[1], device='cpu').predict(json.loads(sys.argv[2]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), json.dumps(records)],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert [p["sentiment"]["flagged"] for p in reloaded] == [p["sentiment"]["flagged"] for p in expected]
    for got, want in zip(reloaded, expected):
        assert got["sentiment"]["label"] == want["sentiment"]["label"]
        assert got["sentiment"]["score"] == pytest.approx(want["sentiment"]["score"], abs=1e-6)


# ----- weighting, sampling, freezing, optimizers -----
class Halves(LossWeighting):
    """Every task's loss counts half."""

    def current(self) -> torch.Tensor:
        return torch.full((len(self.tasks),), 0.5)


def test_custom_weighting_instance_trains(tiny_encoder, tokenizer, tmp_path):
    weighting = Halves(["sentiment", "score"])
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, weighting=weighting)
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.weighting is weighting
    logged = [e for e in trainer.state.log_history if "weight_sentiment" in e]
    assert logged and all(e["weight_sentiment"] == 0.5 and e["weight_score"] == 0.5 for e in logged)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_custom_sampling_callable_decides_the_tasks(tiny_encoder, tokenizer, tmp_path):
    calls = []

    def only_first(sizes):
        calls.append(list(sizes))
        return [1.0] + [0.0] * (len(sizes) - 1)

    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, sampling=only_first)
    assert {batch["task"] for batch in trainer.get_train_dataloader()} == {"sentiment"}
    before = snapshot(trainer.model.heads["score"])
    trainer.train()
    assert calls[0] == [48, 48]
    assert all(torch.equal(before[k], v) for k, v in trainer.model.heads["score"].state_dict().items())


def test_tutorial_freezing_loop_over_base_model_trains_the_heads_only(tiny_encoder, tokenizer, tmp_path):
    model = new_model(tiny_encoder)
    assert model.base_model is model.encoder
    for param in model.base_model.parameters():
        param.requires_grad = False
    encoder_before, heads_before = snapshot(model.encoder), snapshot(model.heads)
    trainer_for(tiny_encoder, tokenizer, tmp_path, model=model).train()
    assert all(torch.equal(encoder_before[k], v) for k, v in model.encoder.state_dict().items())
    heads_after = model.heads.state_dict()
    assert all(not torch.equal(heads_before[k], heads_after[k]) for k in heads_before if k.endswith("weight"))


def test_user_optimizer_and_scheduler_with_a_learnable_weighting(tiny_encoder, tokenizer, tmp_path):
    model = new_model(tiny_encoder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = arguments(tmp_path, loss_weighting="uncertainty", loss_weighting_kwargs={"lr": 0.05})
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, model=model, args=args,
                          optimizers=(optimizer, scheduler))
    trainer.train()
    assert len(optimizer.param_groups) == 1  # the user's optimizer is left as built
    assert not torch.equal(trainer.weighting.log_vars.detach(), torch.zeros(2))  # the log-variances learned
    assert trainer.state.global_step == 8


# ----- the errors a Trainer user runs into -----
@pytest.mark.parametrize("change,message", [
    (lambda kw: kw.update(train_dataset=raw_sets()["sentiment"]),
     r"train_dataset must be a dict \{task name: Dataset\}, one entry per task; got Dataset"),
    (lambda kw: kw.update(train_dataset={"sentiment": raw_sets()["sentiment"], "topic": raw_sets()["score"]}),
     r"train_dataset has datasets for \['topic'\], which the model has no task for"),
    (lambda kw: kw.pop("processing_class"), r"is raw text .no input_ids column.*processing_class=tokenizer"),
    (lambda kw: kw.update(train_dataset={"sentiment": raw_sets()["sentiment"].rename_column("text", "review")}),
     r"train_dataset\['sentiment'\] has no column 'text' .*its columns are \['review', 'label'\]"),
    (lambda kw: kw.update(data_collator=DataCollatorWithPadding(kw["processing_class"])),
     "data_collator=DataCollatorWithPadding: a stock collator cannot batch the task column"),
    (lambda kw: kw.update(compute_metrics={"sentimnt": positive_rate}),
     r"compute_metrics has entries for \['sentimnt'\], which are not tasks of the model"),
])
def test_trainer_misuse_gets_one_clear_error(tiny_encoder, tokenizer, tmp_path, change, message):
    kwargs = {"model": new_model(tiny_encoder), "args": arguments(tmp_path), "train_dataset": raw_sets(),
              "processing_class": tokenizer}
    change(kwargs)
    with pytest.raises(ValueError, match=message):
        MultiTaskTrainer(**kwargs)


def test_fp16_without_a_gpu_is_refused_with_the_bf16_hint(tmp_path):
    with pytest.raises(ValueError, match="fp16=True needs a CUDA .* Use bf16=True"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), fp16=True, use_cpu=True)


def test_stock_group_by_length_groups_training_only_and_keeps_the_eval_order(tiny_encoder, tokenizer, tmp_path):
    from torch.utils.data import SequentialSampler

    args = arguments(tmp_path, train_sampling_strategy="group_by_length")
    assert args.group_by_length and args.train_sampling_strategy == "random"
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, args=args,
                          eval_dataset={k: v.select(range(24)) for k, v in raw_sets(48, 2).items()})
    # Stock Trainer would length-group the evaluation rows too: predictions out of the dataset's order.
    assert isinstance(trainer._get_eval_sampler(trainer.eval_dataset["sentiment"]), SequentialSampler)


def test_warmup_longer_than_the_run_warns(tiny_encoder, tokenizer, tmp_path, caplog):
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, args=arguments(tmp_path, warmup_steps=50))
    with caplog.at_level(logging.WARNING, logger="manyheads"):
        trainer.train()
    assert "warmup_steps is 50 but the run has 8 optimizer steps" in caplog.text


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "a.b"}, r"Classification\(name='a.b'\): name: got 'a.b'; use letters, digits"),
    ({"name": ""}, "name: got ''"),
    ({"name": "x", "text": ["a", "b", "c"]}, "give one column .single text. or two"),
    ({"name": "x", "class_weights": "inverse"}, "class_weights: got 'inverse'; use 'auto', a list"),
])
def test_task_settings_are_checked_when_the_task_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Classification(**kwargs)


def test_a_plain_training_arguments_object_gets_the_multitask_defaults(tiny_encoder, tokenizer, tmp_path):
    from transformers import TrainingArguments

    plain = TrainingArguments(output_dir=str(tmp_path), max_steps=2, use_cpu=True, report_to="none")
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, args=plain)
    assert isinstance(trainer.args, MultiTaskTrainingArguments)
    assert trainer.args.max_steps == 2 and trainer.args.sampling_strategy == "proportional"
    trainer.train()


# ----- label options for common files -----
def test_label_names_and_label_separator_read_index_labels(tiny_encoder, tokenizer, tmp_path):
    rows = review_rows(32, 4)
    colors = ["red", "green", "blue", "yellow"]
    names_file = tmp_path / "colors.txt"
    names_file.write_text("\n".join(colors) + "\n")
    train = {
        "colors": Dataset.from_list([{"text": r["text"], "label": ",".join(str(colors.index(c)) for c in r["colors"])}
                                     for r in rows]),
        "good": Dataset.from_list([{"text": r["text"], "label": int(any(w in GOOD for w in r["text"].split()))}
                                   for r in rows]),
    }
    tasks = {"colors": MultiLabel(name="colors", label_separator=",", label_names=str(names_file)),
             "good": Classification(name="good", label_names=["no", "yes"])}
    trainer = trainer_for(tiny_encoder, tokenizer, tmp_path, model=new_model(tiny_encoder, **tasks), train=train)
    assert trainer.model.tasks["colors"].label_list == colors  # the file's order, not sorted
    assert trainer.model.tasks["good"].label_list == ["no", "yes"]
    first = trainer.train_dataset.datasets["colors"][0]["labels"]
    assert first == [float(c in rows[0]["colors"]) for c in colors]
    trainer.train()
    prediction = MultiTaskPredictor(trainer.model, tokenizer, device="cpu").predict([{"text": "red box"}])[0]
    assert set(prediction["colors"]["scores"]) == set(colors) and prediction["good"]["label"] in ("no", "yes")


def test_length_grouping_is_the_default_for_training_only(tiny_encoder, tokenizer, tmp_path):
    """The sampler a Python user gets groups by length (issue 25); group_by_length=False gives random batches; the
    evaluation loader keeps the dataset's order either way."""
    grouped = trainer_for(tiny_encoder, tokenizer, tmp_path / "a", eval_dataset=raw_sets(24, 2))
    plain = trainer_for(tiny_encoder, tokenizer, tmp_path / "b", args=arguments(tmp_path / "b", group_by_length=False))
    assert grouped.args.group_by_length and grouped._batch_sampler().lengths is not None
    assert plain._batch_sampler().lengths is None

    def padding(trainer):
        batches = list(trainer.get_train_dataloader())
        return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel()
                                                                              for b in batches)

    assert padding(grouped) < padding(plain)
    order = [int(i) for b in grouped.get_eval_dataloader("sentiment") for i in b["input_ids"][:, 1]]
    assert order == [row[1] for row in grouped.eval_dataset["sentiment"]["input_ids"]]
