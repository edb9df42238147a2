"""Per-task losses, weights, metrics and diagnostics scalars reach TensorBoard and MLflow: read back and compared."""

from pathlib import Path

import pytest

from manyheads.callbacks import GradientConflictCallback, UpdateMonitorCallback
from manyheads.recipe import build_config, build_trainer

from .conftest import base_config

TASKS = ("sentiment", "match", "colors")


def train(tiny_model_dir, data_dir, tmp_path, report_to):
    raw = base_config(tiny_model_dir, data_dir, tmp_path / "out", max_steps=6, logging_steps=2,
                      eval_strategy="steps", eval_steps=6, report_to=report_to)
    raw["tasks"] = raw["tasks"][:3]
    raw["diagnostics"] = {"update_monitor": True, "conflict_every": 2}
    trainer = build_trainer(build_config(raw))
    trainer.train()
    monitor = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, UpdateMonitorCallback))
    conflict = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, GradientConflictCallback))
    return trainer, monitor, conflict


def expected_scalars(trainer, monitor, conflict):
    """{key: {step: value}} that the trackers must hold: logged per-task keys plus the diagnostics at log steps."""
    expected: dict[str, dict[int, float]] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if key.startswith(("loss_", "weight_", "share_", "eval_")) and isinstance(value, float):
                expected.setdefault(key, {})[entry["step"]] = value
    for record in monitor.history:  # measured at the logging steps (the default interval)
        for group, values in record["groups"].items():
            if values["grad_norm"] > 0:
                expected.setdefault(f"monitor/relative_update/{group}", {})[record["step"]] = values["relative_update"]
    for measurement in conflict.history:
        for key, value in measurement.scalars().items():
            expected.setdefault(key, {})[measurement.step] = value
    return expected


def check(expected, read, prefix_of, trainer):
    # The diagnostics go to the trackers directly, at their own steps: not into the log line or trainer_state.
    assert not any(k.startswith(("monitor/", "conflict/")) for e in trainer.state.log_history for k in e)
    must = [f"loss_{t}" for t in TASKS] + [f"weight_{t}" for t in TASKS] + [
        "eval_sentiment_accuracy", "eval_colors_micro_f1", "eval_average", "monitor/relative_update/layer.0.ffn",
        "monitor/relative_update/embeddings", "conflict/grad_norm/match", "conflict/cosine/sentiment/colors"]
    assert set(must) <= set(expected)
    for key, points in expected.items():
        got = read(prefix_of(key))
        assert got.keys() >= points.keys(), key
        for step, value in points.items():
            assert got[step] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, step)


def test_tensorboard_event_files_hold_the_per_task_and_diagnostics_scalars(tiny_model_dir, data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, monitor, conflict = train(tiny_model_dir, data_dir, tmp_path, "tensorboard")
    (log_dir,) = {p.parent for p in Path(trainer.args.output_dir).rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])

    def read(tag):
        return {e.step: e.value for e in events.Scalars(tag)} if tag in tags else {}

    def tag_of(key):  # transformers' TensorBoard callback files eval_ keys under eval/, the rest under train/
        return f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"

    check(expected_scalars(trainer, monitor, conflict), read, tag_of, trainer)


def test_mlflow_local_store_holds_the_per_task_and_diagnostics_metrics(tiny_model_dir, data_dir, tmp_path,
                                                                       monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "manyheads-test")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.chdir(tmp_path)  # any default artifact folder (./mlruns) lands in the temp folder
    trainer, monitor, conflict = train(tiny_model_dir, data_dir, tmp_path, "mlflow")

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("manyheads-test")
    (run,) = client.search_runs([experiment.experiment_id])
    names = set(run.data.metrics)

    def read(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} if key in names else {}

    check(expected_scalars(trainer, monitor, conflict), read, lambda key: key, trainer)
