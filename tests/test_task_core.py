"""The Task interface stays small: a core every type has, and opt-in capabilities checked with isinstance."""

from __future__ import annotations

import dataclasses

from manyheads.tasks import (
    TASK_TYPES,
    Classification,
    DetectsConstant,
    FitsOnPredictions,
    MetricInputs,
    MultiLabel,
    OwnPredictionEncoding,
    QuestionAnswering,
    Regression,
    Seq2Seq,
    StockExport,
    Task,
    TextGeneration,
    TokenClassification,
    WordLevel,
    resolve_task_type,
    task_from_spec,
)

CORE = {"METRICS", "type", "check", "spec", "fit", "preprocess", "collate_labels", "build_head", "loss",
        "compute_metrics", "encode_for_prediction", "postprocess"}
# Questions about any task that a type may answer its own way (QA's two span outputs, multilabel's label columns,
# token-level data checks): the labels and head width, and the data checks.
ACCESSORS = {"label_list", "num_outputs", "required_columns", "check_data"}


def _public_members(cls: type) -> set[str]:
    fields = {f.name for f in dataclasses.fields(cls)}
    return {name for name in dir(cls) if not name.startswith("_") and name not in fields}


def test_the_task_core_is_small():
    assert _public_members(Task) == CORE | ACCESSORS


def test_a_type_has_one_name():
    for name, cls in TASK_TYPES.items():
        assert cls.type == name and resolve_task_type(cls.type) is cls
    task = Classification(name="s", labels=["a", "b"])
    assert task.type == "classification" and task.spec()["type"] == "classification"
    assert task_from_spec(task.spec()).type == "classification"

    @dataclasses.dataclass(kw_only=True)
    class Mine(Classification):
        pass

    assert Mine.type == f"{__name__}.test_a_type_has_one_name.<locals>.Mine"  # a user's class: its import path
    assert not any(hasattr(Task, old) for old in ("type_name", "type_key", "generates", "needs_word_ids",
                                                  "stock_auto_class", "stock_problem_type"))


def test_capabilities_of_the_built_in_types():
    tasks = {"classification": Classification(name="c"), "multilabel": MultiLabel(name="m"),
             "regression": Regression(name="r"), "token": TokenClassification(name="t"),
             "qa": QuestionAnswering(name="q", max_length=256), "seq2seq": Seq2Seq(name="g")}
    has = {capability.__name__: sorted(k for k, t in tasks.items() if isinstance(t, capability))
           for capability in (WordLevel, OwnPredictionEncoding, TextGeneration, StockExport, FitsOnPredictions,
                               DetectsConstant, MetricInputs)}
    assert has == {
        "WordLevel": ["token"],
        "OwnPredictionEncoding": ["qa", "seq2seq"],
        "TextGeneration": ["seq2seq"],
        "StockExport": ["classification", "multilabel", "qa", "regression", "token"],
        "FitsOnPredictions": ["multilabel"],
        "DetectsConstant": ["classification", "multilabel", "regression", "seq2seq", "token"],
        "MetricInputs": ["regression"],
    }
