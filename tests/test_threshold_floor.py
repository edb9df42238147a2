"""Tuned multilabel thresholds never trade micro-F1 for one rare label's F1 (issue 29 item 2 b): a label whose own
F1 peaks at the bottom of the grid, predicted on nearly every row, keeps the global threshold instead."""

from __future__ import annotations

import numpy as np
import pytest

from manyheads import MultiLabel
from manyheads.tasks.multilabel import tune_thresholds

ROWS = 400


def split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and 0/1 labels of two labels: `common` (40 %, learnt: positives score 0.5-0.9) and `rare`
    (2 %, 8 rows here: more than the 5 positives tuning asks for) that the head has not learnt: its positives
    score 0.020-0.029, every other row 0.03-0.4, so its own F1 is best at the grid's lowest threshold, 0.02, where
    it is predicted on every row."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((ROWS, 2), dtype=int)
    labels[rng.permutation(ROWS)[:160], 0] = 1
    labels[rng.permutation(ROWS)[:8], 1] = 1
    common = np.where(labels[:, 0] == 1, rng.uniform(0.5, 0.9, ROWS), rng.uniform(0.1, 0.45, ROWS))
    rare = np.where(labels[:, 1] == 1, rng.uniform(0.020, 0.029, ROWS), rng.uniform(0.03, 0.4, ROWS))
    return np.stack([common, rare], axis=1), labels


def micro_f1(probs: np.ndarray, labels: np.ndarray, thresholds) -> float:
    predicted = probs >= np.asarray(thresholds)
    return float(2 * (predicted & (labels == 1)).sum() / (predicted.sum() + labels.sum()))


def logits(probs: np.ndarray) -> np.ndarray:
    return np.log(probs / (1 - probs))


def test_a_rare_labels_bottom_of_the_grid_threshold_falls_back_to_the_global_one():
    probs, labels = split(0)
    # The label's own F1 alone would pick 0.02 (what the tuning did before): predicted on all 400 rows.
    assert tune_thresholds(probs, labels, keep_micro_f1=False)[1] == pytest.approx(0.02)
    common, rare = tune_thresholds(probs, labels)
    assert 0.45 <= common <= 0.5
    # The global threshold (best micro-F1 over both labels) lies in the common label's gap, above every score of
    # the rare label: it is predicted on no row, its F1 is 0, and no row gets a false positive from it.
    assert 0.45 <= rare <= 0.5 and not (probs[:, 1] >= rare).any()
    # On the eval split and on fresh rows: at least a flat 0.5 and the old thresholds.
    for probs_, labels_ in (split(0), split(1)):
        tuned = micro_f1(probs_, labels_, [common, rare])
        assert tuned >= micro_f1(probs_, labels_, [0.5, 0.5])
        assert tuned > micro_f1(probs_, labels_, [common, 0.02]) + 0.1


def test_the_task_fits_the_floored_thresholds_and_scores_above_constant_and_flat():
    probs, labels = split(0)
    task = MultiLabel(name="tags", labels=["common", "rare"])
    task.fit_on_predictions(logits(probs), labels)
    assert task.fitted["thresholds"][1] > 0.02
    test_probs, test_labels = split(1)
    scores = task.compute_metrics(logits(test_probs), test_labels)
    flat = MultiLabel(name="tags", labels=["common", "rare"], threshold=0.5).compute_metrics(logits(test_probs),
                                                                                            test_labels)
    assert scores["micro_f1"] >= flat["micro_f1"]
    always_common = 2 * test_labels[:, 0].sum() / (ROWS + test_labels.sum())
    assert scores["micro_f1"] > always_common


def test_macro_f1_as_main_metric_keeps_each_labels_own_threshold():
    """Macro-F1 averages per-label F1s, which the rare label's false positives cannot lower elsewhere."""
    probs, labels = split(0)
    task = MultiLabel(name="tags", labels=["common", "rare"], main_metric="macro_f1")
    task.fit_on_predictions(logits(probs), labels)
    assert task.fitted["thresholds"][1] == pytest.approx(0.02)


def test_a_label_whose_own_threshold_helps_micro_f1_keeps_it():
    # Label 1 is learnt, with a cut at 0.3 (well below the global one): its own threshold raises micro-F1.
    rng = np.random.default_rng(2)
    labels = np.zeros((ROWS, 2), dtype=int)
    labels[:200, 0] = 1
    labels[:40, 1] = 1
    probs = np.stack([np.where(labels[:, 0] == 1, rng.uniform(0.6, 0.9, ROWS), rng.uniform(0.1, 0.55, ROWS)),
                      np.where(labels[:, 1] == 1, rng.uniform(0.31, 0.4, ROWS), rng.uniform(0.0, 0.29, ROWS))], 1)
    common, learnt = tune_thresholds(probs, labels)
    assert 0.29 < learnt <= 0.31 and common > 0.5
