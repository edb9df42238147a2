"""Every shipped example config passes config validation (its data is not needed for that)."""

from pathlib import Path

import pytest

from manyheads.recipe import load_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    run = load_config(path, ["--data_dir", "data"])
    assert run.tasks
    assert run.training_arguments().output_dir
    first_lines = path.read_text(encoding="utf-8").splitlines()[:10]
    assert any("manyheads train" in line for line in first_lines), "examples start with the command to run them"


def test_glue_example_uses_each_tasks_metric():
    run = load_config(EXAMPLES[0].parent / "glue.yaml")
    assert run.task("cola").main_metric == "mcc"
    assert run.task("stsb").type == "regression"
    assert run.training["metric_for_best_model"] == "eval_average"
    assert run.training["load_best_model_at_end"] is True
