"""Multi-label defaults (tuned thresholds), the stalled-head warning, `threshold` in evaluate / predict, and
`pooling: auto` read from a sentence-transformers folder. Tiny BERT, generated data."""

import itertools
import json
import logging
import random

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset

from manyheads import Classification, MultiLabel, MultiTaskModel, MultiTaskTrainer, MultiTaskTrainingArguments
from manyheads.callbacks import STALLED_FILE, StalledHeadsCallback
from manyheads.callbacks.stalled_heads import stall_reason
from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.report import load_run
from manyheads.serving.predictor import MultiTaskPredictor
from manyheads.tasks import Regression, TokenClassification, apply_checkpoint_pooling, checkpoint_pooling
from manyheads.tasks.multilabel import jaccard, tune_thresholds

from .conftest import COLORS, FILLER, GOOD, base_config, write_jsonl

# Label k is present iff its colour word is in the text; two of them are rare.
RATES = {"red": 0.45, "green": 0.25, "blue": 0.1, "yellow": 0.06}


def colour_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colours = [c for c in COLORS if rng.random() < RATES[c]]
        words = colours + rng.sample(FILLER, 4)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "colors": colours, "sentiment": rng.choice(["pos", "neg"])})
    return rows


def as_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})


def best_constant_micro_f1(rows: list[dict]) -> float:
    """The best micro-F1 any constant label set scores on `rows` (every subset of the labels tried)."""
    gold = np.array([[int(c in r["colors"]) for c in COLORS] for r in rows])
    best = 0.0
    for size in range(1, len(COLORS) + 1):
        for subset in itertools.combinations(range(len(COLORS)), size):
            predicted = np.zeros_like(gold)
            predicted[:, list(subset)] = 1
            tp = (predicted & gold).sum()
            best = max(best, 2 * tp / (predicted.sum() + gold.sum()))
    return float(best)


def args(tmp_path, steps: int, **extra) -> MultiTaskTrainingArguments:
    return MultiTaskTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=steps,
                                      learning_rate=3e-3, report_to="none", save_strategy="no", use_cpu=True,
                                      seed=3, disable_tqdm=True, eval_strategy="steps", eval_steps=steps, **extra)


# ----- thresholds: unit level -----
def test_tune_thresholds_finds_each_labels_best_cut():
    # Label 0: positives score 0.3-0.4, negatives below 0.2 -> a cut in (0.2, 0.3]; label 1: separable at 0.7.
    probs = np.array([[0.35, 0.9], [0.3, 0.8], [0.4, 0.75], [0.32, 0.72], [0.31, 0.71],
                      [0.1, 0.2], [0.15, 0.6], [0.05, 0.1], [0.19, 0.65], [0.0, 0.3]])
    labels = np.array([[1, 1]] * 5 + [[0, 0]] * 5)
    low, high = tune_thresholds(probs, labels)
    assert 0.19 < low <= 0.30 and 0.65 < high <= 0.71


def test_rare_label_falls_back_to_the_global_threshold():
    rng = np.random.default_rng(0)
    labels = np.zeros((100, 2), dtype=int)
    labels[:40, 0] = 1
    labels[:2, 1] = 1  # 2 positives: too few to tune on
    probs = np.where(labels == 1, 0.6, 0.2) + rng.uniform(-0.05, 0.05, labels.shape)
    low, rare = tune_thresholds(probs, labels)
    assert rare == pytest.approx(tune_thresholds(probs[:, :1], labels[:, :1])[0])


def test_threshold_settings_and_postprocess():
    task = MultiLabel(name="c", labels=["a", "b"])
    assert task.threshold == "tuned" and task.decision_thresholds().tolist() == [0.5, 0.5]  # untuned: 0.5
    logits = np.log(np.array([[0.3 / 0.7, 0.6 / 0.4]]))  # probabilities 0.3 and 0.6
    assert task.postprocess(logits)[0]["labels"] == ["b"]
    task.fitted["thresholds"] = [0.2, 0.7]
    assert task.postprocess(logits)[0]["labels"] == ["a"]
    task.set_threshold({"b": 0.55})  # one label changed, the other keeps its tuned 0.2
    assert task.decision_thresholds().tolist() == [0.2, 0.55]
    assert task.postprocess(logits)[0]["labels"] == ["a", "b"]
    task.set_threshold(0.9)
    assert task.postprocess(logits)[0]["labels"] == []
    with pytest.raises(ConfigError, match=r"labels \['zzz'\] are not labels of task 'c'"):
        task.set_threshold({"zzz": 0.3})
    with pytest.raises(ConfigError, match=r"threshold: got 1.5; it must be between 0 and 1"):
        MultiLabel(name="c", threshold=1.5)
    with pytest.raises(ConfigError, match=r"threshold: got 'best'"):
        MultiLabel(name="c", threshold="best")
    with pytest.raises(ConfigError, match=r"pos_weight: got 'log'; use 'auto' or 'sqrt'"):
        MultiLabel(name="c", pos_weight="log")


def test_pos_weight_sqrt_is_the_capped_root_of_auto():
    rows = as_dataset(colour_rows(400, 0))
    auto, sqrt = (MultiLabel(name="c", label="colors", pos_weight=w) for w in ("auto", "sqrt"))
    auto.fit(rows)
    sqrt.fit(rows)
    expected = np.clip(np.sqrt(auto.fitted["pos_weight"]), 1.0, 10.0)
    assert sqrt.fitted["pos_weight"] == pytest.approx(expected.tolist())
    # The default (bench/multilabel.py on E-c: micro-F1 0.632 vs 0.586 unweighted, both with tuned thresholds).
    assert MultiLabel(name="c").pos_weight == "sqrt"


def test_jaccard_is_the_semeval_row_mean():
    gold = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    predicted = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert jaccard(gold, predicted) == pytest.approx((1 / 3 + 1 + 0) / 3)


# ----- learning with the defaults -----
def test_defaults_learn_rare_labels_above_the_constant_predictor(tiny_encoder, tokenizer, tmp_path):
    train, evaluation = colour_rows(320, 1), colour_rows(120, 2)
    task = MultiLabel(name="colors", label="colors")
    torch.manual_seed(0)  # the head's initialisation, independent of the tests that ran before
    model = MultiTaskModel.from_encoder(tiny_encoder, [task])
    trainer = MultiTaskTrainer(model=model, args=args(tmp_path, 160), train_dataset={"colors": as_dataset(train)},
                               eval_dataset={"colors": as_dataset(evaluation)}, processing_class=tokenizer)
    trainer.train()
    # Thresholds were tuned at the evaluation of the last step, one per label.
    assert len(task.fitted["thresholds"]) == 4 and task.decision_thresholds().tolist() == task.fitted["thresholds"]
    held_out = colour_rows(200, 3)  # rows that chose no threshold
    metrics = trainer.evaluate(eval_dataset={"colors": task.preprocess(as_dataset(held_out), tokenizer)})
    constant = best_constant_micro_f1(held_out)
    # Seeds 0-7 gave 0.64-0.79 against the best constant predictor's 0.51 (160 steps).
    assert metrics["eval_colors_micro_f1"] > constant + 0.08, (metrics, constant)
    assert metrics["eval_colors_macro_f1"] > 0.5
    assert metrics["eval_colors_constant_predictions"] == 0.0
    # Saved with the model: a reloaded predictor uses the same thresholds.
    trainer.save_model(str(tmp_path / "model"))
    reloaded = MultiTaskModel.from_pretrained(str(tmp_path / "model"))
    assert reloaded.tasks["colors"].fitted["thresholds"] == task.fitted["thresholds"]


# ----- the stalled-head warning -----
def test_a_frozen_constant_head_is_flagged_by_name(tiny_encoder, tokenizer, tmp_path, caplog):
    rows = colour_rows(96, 4)
    tasks = [Classification(name="sentiment", label="sentiment"), MultiLabel(name="colors", label="colors")]
    model = MultiTaskModel.from_encoder(tiny_encoder, tasks)
    data = {name: as_dataset(rows) for name in ("sentiment", "colors")}
    trainer = MultiTaskTrainer(model=model, args=args(tmp_path, 4), train_dataset=data,
                               eval_dataset={k: as_dataset(colour_rows(32, 5)) for k in data},
                               processing_class=tokenizer)
    # The colours head outputs its bias only, and never learns: a head stuck at a constant answer.
    head = model.heads["colors"].classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-3.0)
    for p in model.heads["colors"].parameters():
        p.requires_grad_(False)
    callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StalledHeadsCallback))
    with caplog.at_level(logging.WARNING, logger="manyheads"):
        trainer.train()
    flagged = [m for m in callback.warnings if "'colors'" in m]
    assert len(flagged) == 1
    assert "looks stalled at step 4" in flagged[0] and "same label set" in flagged[0]
    assert "pos_weight: sqrt" in flagged[0] and "sampling temperature" in flagged[0]
    assert any("task 'colors' looks stalled" in r.getMessage() for r in caplog.records)
    records = [json.loads(line) for line in (tmp_path / "out" / "diagnostics" / STALLED_FILE).read_text().splitlines()]
    assert [(r["task"], r["step"]) for r in records if r["task"] == "colors"] == [("colors", 4)]
    # `manyheads report` shows it.
    trainer.save_state()
    (line,) = [x for x in load_run(tmp_path / "out").stalled_lines() if "'colors'" in x]
    assert "stalled at the last evaluation (step 4)" in line
    assert "eval_colors_constant_predictions" in trainer.state.log_history[-2]


def test_stall_reasons_per_type():
    metrics = {"eval_c_constant_predictions": 0.0, "eval_c_micro_f1": 0.0}
    assert "micro_f1 is 0" in stall_reason(metrics, "eval", MultiLabel(name="c"))
    assert stall_reason({**metrics, "eval_c_micro_f1": 0.4}, "eval", MultiLabel(name="c")) is None
    classification = Classification(name="c", labels=["a", "b", "c"])
    logits = np.array([[0.1, 2.0, 0.3], [0.5, 1.0, 0.2], [0.0, 3.0, 0.0]])
    assert classification.constant_predictions(logits, None)
    assert not classification.constant_predictions(logits[:, ::-1] * [1, 1, 0] + [[0, 0, 5], [0, 0, 0], [0, 0, 0]],
                                                   None)
    regression = Regression(name="r")
    regression.fitted.update(mean=0.0, std=1.0)
    labels = np.array([0.0, 1.0, 2.0, 3.0])
    assert regression.constant_predictions(np.full(4, 1.5) + 1e-6 * np.arange(4), labels)
    assert not regression.constant_predictions(labels * 0.1, labels)
    tokens = TokenClassification(name="t", labels=["O", "B-X", "I-X"])
    tags = np.zeros((2, 3, 3))
    tags[..., 0] = 1.0  # "O" everywhere
    tags[1, 2, 1] = 5.0  # ... but on a padded position, which does not count
    assert tokens.constant_predictions(tags, np.array([[0, 1, 0], [0, 0, -100]]))
    tags[0, 1, 1] = 5.0
    assert not tokens.constant_predictions(tags, np.array([[0, 1, 0], [0, 0, -100]]))


# ----- threshold in evaluate and predict -----
@pytest.fixture
def colour_run(tiny_model_dir, tmp_path):
    """A saved model trained 2 steps (its head outputs are close to 0.5 for every label), and its config."""
    write_jsonl(tmp_path / "train.jsonl", colour_rows(48, 6))
    write_jsonl(tmp_path / "eval.jsonl", colour_rows(40, 7))
    raw = base_config(tiny_model_dir, tmp_path, tmp_path / "run", max_steps=2, learning_rate=1e-5)
    raw["tasks"] = [{"name": "colors", "type": "multilabel", "text": "text", "label": "colors", "labels": COLORS,
                     "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(cfg)]) == 0
    return raw, cfg, tmp_path


def test_evaluate_honours_the_config_threshold_and_the_flag(colour_run):
    raw, cfg, tmp_path = colour_run
    gold = np.array([[int(c in r["colors"]) for c in COLORS] for r in colour_rows(40, 7)])
    everything = 2 * gold.sum() / (2 * gold.sum() + (1 - gold).sum())  # micro-F1 when every label is predicted
    raw["tasks"][0]["threshold"] = 0.01  # in the config given to evaluate
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["evaluate", str(tmp_path / "run"), str(cfg), "--output", str(tmp_path / "low.json")]) == 0
    low = json.loads((tmp_path / "low.json").read_text())
    assert low["eval_colors_micro_f1"] == pytest.approx(everything)
    assert main(["evaluate", str(tmp_path / "run"), str(cfg), "--threshold", "0.99", "--output",
                 str(tmp_path / "high.json")]) == 0  # the flag wins over the config
    high = json.loads((tmp_path / "high.json").read_text())
    assert high["eval_colors_micro_f1"] == 0.0 and high["eval_colors_constant_predictions"] == 1.0


def test_predict_threshold_number_and_per_label(colour_run, capsys):
    _, _, tmp_path = colour_run
    rows = tmp_path / "in.jsonl"
    write_jsonl(rows, [{"text": "red box"}, {"text": "the blue thing"}])

    def predict(*threshold: str) -> list[list[str]]:
        out = tmp_path / "p.jsonl"
        assert main(["predict", str(tmp_path / "run"), "--input", str(rows), "--output", str(out), *threshold]) == 0
        return [json.loads(line)["colors"]["labels"] for line in out.read_text().splitlines()]

    assert predict("--threshold", "0.01") == [COLORS, COLORS]
    assert predict("--threshold", "0.99") == [[], []]
    assert predict("--threshold", "red=0.01,green=0.99", "--threshold", "blue=0.99,yellow=0.99") == [["red"], ["red"]]
    assert main(["predict", str(tmp_path / "run"), "--input", str(rows), "--output", str(tmp_path / "x.jsonl"),
                 "--threshold", "purple=0.2"]) == 2
    assert "--threshold: labels ['purple'] are in no multilabel task" in capsys.readouterr().err
    # The library level: the saved model's task takes the same setting.
    predictor = MultiTaskPredictor(str(tmp_path / "run"))
    predictor.model.tasks["colors"].set_threshold(0.01)
    assert predictor.predict([{"text": "red"}])[0]["colors"]["labels"] == COLORS


# ----- pooling: auto from a sentence-transformers folder -----
def test_auto_pooling_follows_a_sentence_transformers_folder(tiny_model_dir, tmp_path):
    assert checkpoint_pooling(tiny_model_dir) is None  # a plain transformers folder says nothing
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    modes = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    assert checkpoint_pooling(folder) == "mean"
    tasks = [MultiLabel(name="a"), Classification(name="b", pooling="cls"), TokenClassification(name="t")]
    assert apply_checkpoint_pooling(tasks, folder) == {"a": "mean"}  # an explicit choice is kept
    assert [getattr(t, "pooling", None) for t in tasks] == ["mean", "cls", None]
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**modes, "pooling_mode_max_tokens": True}))
    assert checkpoint_pooling(folder) is None  # mean + max: no head pooling of that maths
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**modes, "pooling_mode_mean_tokens": False,
                                                                  "pooling_mode_max_tokens": True}))
    assert checkpoint_pooling(folder) == "max"


def test_recipe_reads_the_pooling_of_the_encoder_folder(tiny_model_dir, tmp_path):
    import shutil

    from manyheads.recipe import build_config, build_model

    folder = tmp_path / "st"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "modules.json").write_text(json.dumps([{"path": "1_Pooling",
                                                      "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    raw = base_config(str(folder), tmp_path, tmp_path / "run")
    raw["tasks"] = [{"name": "s", "type": "classification", "text": "text", "label": "sentiment", "labels": GOOD[:2]}]
    run = build_config(raw)
    model = build_model(run, run.fresh_tasks())
    assert model.heads["s"].pooling == "mean" and model.config.tasks[0]["pooling"] == "mean"
    assert run.tasks[0].task.pooling == "auto"  # the recipe's own task is left as written
