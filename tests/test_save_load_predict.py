"""One saved folder restores every head exactly; predict from it equals the in-memory model; the CLI works."""

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModel

from manyheads import MultiTaskModel
from manyheads.cli.main import main
from manyheads.recipe import build_config, build_trainer
from manyheads.serving.predictor import MultiTaskPredictor

from .conftest import base_config, review_rows


@pytest.fixture
def trained(tiny_model_dir, data_dir, tmp_path):
    trainer = build_trainer(build_config(base_config(tiny_model_dir, data_dir, tmp_path / "out")))
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    return trainer, tmp_path / "model"


def test_save_writes_one_folder_and_restores_exactly(trained):
    trainer, folder = trained
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "manyheads"
    assert [t["name"] for t in config["tasks"]] == ["sentiment", "match", "colors", "score"]
    # Settings and fitted state are saved apart (labels inferred from data, target scaling learned in training).
    assert config["tasks"][0]["fitted"]["labels"] == ["neg", "pos"]
    assert config["tasks"][3]["normalize"] is True and config["tasks"][3]["fitted"]["std"] > 0
    loaded = AutoModel.from_pretrained(folder)
    assert isinstance(loaded, MultiTaskModel)
    original = trainer.model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k].cpu(), restored[k]) for k in original)


def test_predict_after_reload_equals_in_memory(trained):
    trainer, folder = trained
    records = [{"text": r["text"], "other": r["other"]} for r in review_rows(20, 5)]
    in_memory = MultiTaskPredictor(trainer.model, trainer.processing_class, batch_size=7).predict(records)
    reloaded = MultiTaskPredictor(str(folder), batch_size=3).predict(records)
    assert len(in_memory) == 20 and set(in_memory[0]) == {"sentiment", "match", "colors", "score"}
    for a, b in zip(in_memory, reloaded):
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert a["sentiment"]["score"] == pytest.approx(b["sentiment"]["score"], abs=1e-5)
        assert a["colors"]["scores"] == pytest.approx(b["colors"]["scores"], abs=1e-5)
        assert a["score"]["score"] == pytest.approx(b["score"]["score"], abs=1e-5)


def test_predictions_match_the_evaluated_logits(trained):
    """The predictor's one-pass logits equal the per-task forward used in evaluation (no cross-talk)."""
    trainer, _ = trained
    model = trainer.model.eval()
    tok = trainer.processing_class
    enc = tok(["good red item", "bad box"], padding=True, return_tensors="pt")
    with torch.no_grad():
        all_heads = model.forward_all(**enc)
        for name in ("sentiment", "colors", "score"):
            single = model(**enc, task=name).logits
            assert torch.allclose(all_heads[name], single, atol=1e-6)


def test_predict_subset_and_missing_columns(trained):
    trainer, folder = trained
    predictor = MultiTaskPredictor(str(folder))
    only = predictor.predict([{"text": "good good red"}], tasks=["colors"])
    assert list(only[0]) == ["colors"]
    # Without the pair's second column, the pair task cannot run; the single-text ones do.
    rows = predictor.predict([{"text": "good good red"}])
    assert set(rows[0]) == {"sentiment", "colors", "score"}
    with pytest.raises(ValueError, match="unknown task"):
        predictor.predict([{"text": "x"}], tasks=["nope"])
    with pytest.raises(ValueError, match=r"task 'match' reads columns \['text', 'other'\]; the records have"):
        predictor.predict([{"text": "x"}], tasks=["match"])


def test_cli_train_evaluate_predict(tiny_model_dir, data_dir, tmp_path, capsys):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "run")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(cfg), "--max_steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "eval_average:" in out and "model saved to" in out
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert "eval_sentiment_mcc" in results and "eval_score_spearman" in results

    assert main(["evaluate", str(tmp_path / "run"), str(cfg), "--output", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["eval_average"] == pytest.approx(results["eval_average"], abs=1e-6)

    # A labelled test split (here: the eval file again) gives the same scores under test_ keys.
    raw["tasks"][0]["data"]["test"] = "eval.jsonl"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["evaluate", str(tmp_path / "run"), str(cfg), "--split", "test", "--output",
                 str(tmp_path / "t.json")]) == 0
    test = json.loads((tmp_path / "t.json").read_text())
    assert test["test_sentiment_accuracy"] == pytest.approx(results["eval_sentiment_accuracy"])
    assert "test_match_accuracy" not in test  # only tasks with a test split

    rows = tmp_path / "in.csv"
    rows.write_text("text,other\ngood good red,the box bad\nbad awful,nice item\n", encoding="utf-8")
    assert main(["predict", str(tmp_path / "run"), "--input", str(rows), "--output", str(tmp_path / "p.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1]
    assert lines[0]["sentiment"]["label"] in ("neg", "pos")
    assert set(lines[0]["colors"]["scores"]) == {"red", "green", "blue", "yellow"}
    assert np.isfinite(lines[1]["score"]["score"])

    assert main(["predict", str(tmp_path / "run"), "--input", str(rows), "--output", str(tmp_path / "q.jsonl"),
                 "--task", "nope"]) == 2
    assert "--task: ['nope'] not in this model" in capsys.readouterr().err


def test_demo_runs_end_to_end_with_a_given_encoder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--model", tiny_model_dir, "--output_dir", str(out), "--train_rows", "48",
                 "--eval_rows", "16", "--max_steps", "3", "--per_device_train_batch_size", "8"])
    assert code == 0
    text = capsys.readouterr().out
    for task in ("sentiment", "topic", "aspects", "rating"):
        assert task in text
    assert "eval_average" in text and "rating=" in text
    assert (out / "model.safetensors").is_file()


def test_env_prints_versions(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "transformers:" in out and "torch:" in out
