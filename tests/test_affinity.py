"""Task affinity (TAG): the lookahead matrix against a hand-made lookahead, a toy whose answer is known, no effect on
training, `sharing: lora` refused, the grouping search on known matrices, the command and the report."""

from __future__ import annotations

import copy
import json
import random
import time

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset

from manyheads import Classification
from manyheads.callbacks import (
    AFFINITY_FILE,
    AFFINITY_SUMMARY,
    TaskAffinityCallback,
    default_every,
    diagnostics_dir,
    make_probe_batches,
    measure_affinity,
    recommend_groupings,
)
from manyheads.callbacks.affinity_groups import group_score
from manyheads.cli.main import main
from manyheads.errors import ConfigError

from .conftest import base_config, make_encoder, require, review_rows
from .run_helpers import REVIEW_TASKS, assert_same_model_state, new_trainer
from .test_report import render_in_chromium


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def hand_lookahead(model, probes, lr):
    """TAG's affinity done by hand: for each task a copy of the model, one SGD step of its encoder on that task's
    probe loss, then every task's probe loss relative to before."""
    model = copy.deepcopy(model).eval()
    tasks = list(probes)
    with torch.no_grad():
        before = [float(model(**probes[t]).loss) for t in tasks]
    expected = torch.zeros(len(tasks), len(tasks), dtype=torch.float64)
    for i, task in enumerate(tasks):
        work = copy.deepcopy(model)
        params = [p for n, p in work.named_parameters() if n.startswith("encoder.") and p.requires_grad]
        grads = torch.autograd.grad(work(**probes[task]).loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= lr * g
            for j, other in enumerate(tasks):
                expected[i, j] = 1 - float(work(**probes[other]).loss) / before[j]
    return expected


def test_run_writes_matrices_equal_to_a_hand_lookahead(review_trainer):
    callback = TaskAffinityCallback(every=3, probe_batch_size=6)
    trainer = review_trainer(max_steps=6, lr_scheduler_type="constant", trainer_kwargs={"callbacks": [callback]})
    trainer.train()
    folder = diagnostics_dir(trainer.args.output_dir)
    records = read_jsonl(f"{folder}/{AFFINITY_FILE}")
    assert [r["step"] for r in records] == [3, 6]
    for record in records:
        assert record["tasks"] == list(REVIEW_TASKS) and record["lr"] == pytest.approx(1e-3)
        assert np.array(record["matrix"]).shape == (4, 4) and all(v > 0 for v in record["loss"].values())
    # The last measurement saw the final weights (constant learning rate): redo it by hand.
    expected = hand_lookahead(trainer.model, callback.probe_batches, trainer.args.learning_rate)
    actual = torch.tensor(records[-1]["matrix"], dtype=torch.float64)
    assert torch.allclose(actual, expected, rtol=1e-3, atol=3e-7), (actual, expected)
    assert (actual.diagonal() > 0).all()  # a step on a task lowers its own loss

    summary = json.loads(open(f"{folder}/{AFFINITY_SUMMARY}", encoding="utf-8").read())
    assert summary["tasks"] == list(REVIEW_TASKS) and summary["measurements"] == 2 and summary["steps"] == [3, 6]
    mean = np.mean([r["matrix"] for r in records], axis=0)
    assert np.allclose(summary["matrix"], mean, rtol=1e-9, atol=1e-15)
    assert [g["groups"] for g in summary["groupings"]] == [1, 2, 3]
    assert all(sorted(t for group in g["partition"] for t in group) == sorted(REVIEW_TASKS)
               and len(g["partition"]) == g["groups"] and g["exact"] for g in summary["groupings"])


def test_measurement_restores_the_model_exactly(review_trainer):
    trainer = review_trainer(max_steps=1)
    model = trainer.model.train()
    probes = make_probe_batches(trainer.train_dataset.datasets, trainer.data_collator, size=4)
    before = copy.deepcopy(model)
    result = measure_affinity(model, probes, lr=0.5)  # a large step: any drift would show
    assert_same_model_state(model, before)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert result.tasks == list(REVIEW_TASKS) and np.abs(np.array(result.matrix)).max() > 1e-3
    # An error in the middle of a lookahead (the shared weights moved) puts them back all the same.
    broken = {**probes, "match": {**probes["match"], "labels": probes["match"]["labels"][:1]}}
    with pytest.raises(ValueError):
        measure_affinity(model, broken, lr=0.5)
    assert_same_model_state(model, before)
    assert model.training


@pytest.mark.parametrize("balancing", [{}, {"loss_weighting": "uncertainty"}, {"loss_weighting": "dwa"},
                                       {"gradient_aggregator": "upgrad"}],
                         ids=["equal", "uncertainty", "dwa", "upgrad"])
def test_a_run_with_the_callback_ends_with_the_same_weights(new_encoder, tokenizer, tmp_path, balancing):
    if "gradient_aggregator" in balancing:
        require("torchjd")

    def run(folder, callbacks):
        # Dropout on: had the measurements drawn from the training RNG stream, the runs would part. With a loss
        # weighting or a gradient aggregator the lookahead still uses the plain task losses and leaves no trace.
        trainer = new_trainer(make_encoder(dropout=0.2), tokenizer, tmp_path / folder, max_steps=4,
                              trainer_kwargs={"callbacks": callbacks}, **balancing)
        trainer.train()
        return trainer

    plain = run("plain", [])
    measured = run("measured", [callback := TaskAffinityCallback(every=1, probe_batch_size=4)])
    assert [m.step for m in callback.history] == [1, 2, 3]  # at step 4 the linear schedule's rate is 0: skipped
    assert_same_model_state(plain.model, measured.model)
    for a, b in zip(plain.optimizer.state.values(), measured.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_copy_helps_and_shuffled_labels_do_not(tokenizer, new_encoder, tmp_path):
    rows = review_rows(64, 1)
    texts, labels = [r["text"] for r in rows], [r["sentiment"] for r in rows]
    shuffled = random.Random(0).sample(labels, len(labels))
    data = {"real": Dataset.from_dict({"text": texts, "label": labels}),
            "copy": Dataset.from_dict({"text": texts, "label": labels}),
            "shuffled": Dataset.from_dict({"text": texts, "label": shuffled})}
    tasks = [Classification(name=name, label="label", labels=["neg", "pos"], max_length=32) for name in data]
    callback = TaskAffinityCallback(every=3, probe_batch_size=16)
    trainer = new_trainer(new_encoder(), tokenizer, tmp_path / "out", tasks=tasks, train=data, max_steps=12,
                          lr_scheduler_type="constant", learning_rate=3e-3, trainer_kwargs={"callbacks": [callback]},
                          head_learning_rate_scaling="none")  # the toy's heads tuned at one rate
    trainer.train()
    mean = torch.tensor([m.matrix for m in callback.history]).mean(dim=0)  # rows: step on; columns: onto
    real, copy_, noise = 0, 1, 2
    assert len(callback.history) == 4
    assert mean[copy_, real] > 0 and mean[real, copy_] > 0
    assert mean[copy_, real] - mean[noise, real] > 0.5 * mean[copy_, real]
    assert mean[real, copy_] - mean[noise, copy_] > 0.5 * mean[real, copy_]
    assert abs(mean[noise, real]) < 0.5 * mean[copy_, real]  # about none, next to the copy's
    best_pair = recommend_groupings(mean.numpy(), list(data))[1]["partition"]
    assert best_pair == [["real", "copy"], ["shuffled"]]


def test_lora_and_bad_arguments_are_refused(new_encoder, tokenizer, tmp_path):
    trainer = new_trainer(new_encoder(), tokenizer, tmp_path / "out", sharing="lora", max_steps=2,
                          trainer_kwargs={"callbacks": [TaskAffinityCallback(every=1)]})
    with pytest.raises(ConfigError, match="sharing: 'lora'.*no parameter is shared.*sharing: hard or hybrid"):
        trainer.train()
    assert trainer.state.global_step == 0
    for key in ("every", "start", "measurements", "probe_batch_size"):
        with pytest.raises(ValueError, match=f"{key}=0; give an integer >= 1"):
            TaskAffinityCallback(**{key: 0})


def test_default_every_keeps_the_measurements_cheap():
    assert default_every(2) == 50 and default_every(4) == 50 and default_every(8) == 118
    for n in (4, 8, 12, 30):  # a measurement costs ~ n (n + 3) / 3 training steps
        assert n * (n + 3) / 3 / default_every(n) <= 0.25 + 1e-9
    # A probe batch larger than a training step's rows costs more per pass; a smaller one is not counted cheaper.
    assert default_every(4, probe_batch_size=16, train_batch_size=8) == 75
    assert default_every(8, probe_batch_size=16, train_batch_size=64) == default_every(8)


def blocks(sizes, inside=1.0, across=-0.5, seed=0):
    """A matrix of groups of tasks that help each other and hurt the rest, with small noise."""
    n = sum(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    matrix = np.where(labels[:, None] == labels[None, :], inside, across)
    return matrix + np.random.default_rng(seed).normal(0, 0.05, (n, n)), labels


def all_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in all_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1:]]


def test_grouping_finds_known_blocks():
    matrix, _ = blocks([2, 2])
    tasks = ["a", "b", "c", "d"]
    found = {g["groups"]: g for g in recommend_groupings(matrix, tasks)}
    assert found[2]["partition"] == [["a", "b"], ["c", "d"]]
    # Each task's score: the mean affinity onto it from the rest of its group; the grouping's: the tasks' mean.
    assert found[2]["score"] == pytest.approx((matrix[1, 0] + matrix[0, 1] + matrix[3, 2] + matrix[2, 3]) / 4)
    assert found[1]["partition"] == [tasks] and len(found[3]["partition"]) == 3
    # A task that every other task hurts, and that hurts them, is best trained alone.
    lonely = np.full((3, 3), 0.4)
    lonely[2, :2] = lonely[:2, 2] = -1.0
    assert recommend_groupings(lonely, ["x", "y", "z"])[1]["partition"] == [["x", "y"], ["z"]]
    assert group_score(lonely, [2]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        recommend_groupings(np.zeros((3, 2)), ["x", "y", "z"])


def test_exhaustive_search_is_exact_and_greedy_beyond():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(7, 7))
    best = {}
    for partition in all_partitions(list(range(7))):  # Bell(7) = 877
        score = sum(group_score(matrix, g) for g in partition) / 7
        best[len(partition)] = max(best.get(len(partition), -np.inf), score)
    found = recommend_groupings(matrix, [str(i) for i in range(7)])
    assert {g["groups"]: g["score"] for g in found} == pytest.approx({k: best[k] for k in range(1, 7)})
    start = time.perf_counter()
    ten = recommend_groupings(rng.normal(size=(10, 10)), [str(i) for i in range(10)])  # Bell(10) = 115,975
    assert time.perf_counter() - start < 5 and len(ten) == 9 and ten[0]["exact"]
    # Beyond ten tasks: greedy, which still recovers clear blocks.
    matrix, labels = blocks([4, 5, 3])
    names = [f"t{i}" for i in range(12)]
    found = {g["groups"]: g for g in recommend_groupings(matrix, names, max_groups=4)}
    assert not found[3]["exact"] and sorted(found) == [1, 2, 3, 4]
    assert sorted(map(sorted, found[3]["partition"])) == sorted(
        sorted(names[i] for i in np.flatnonzero(labels == k)) for k in range(3))


def test_command_prints_groupings_and_the_report_shows_them(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    raw = base_config(tiny_model_dir, data_dir, out, max_steps=4, lr_scheduler_type="constant")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["affinity", str(config), "--every", "2", "--probe_batch_size", "4", "--max_steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "mean of 2 measurement(s) at steps 2..4" in printed
    assert "2 group(s): {" in printed and "3 group(s): {" in printed
    summary = json.loads((out / "diagnostics" / AFFINITY_SUMMARY).read_text(encoding="utf-8"))
    assert summary["tasks"] == ["sentiment", "match", "colors", "score"] and summary["measurements"] == 2

    assert main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    two = next(g for g in summary["groupings"] if g["groups"] == 2)
    assert "Task affinity" in html and "Recommended split into 2 groups: " in html
    assert " | ".join("{" + ", ".join(group) + "}" for group in two["partition"]) in html
    page = render_in_chromium(out / "report" / "index.html", tmp_path)
    assert "task_affinity.png" in {img["src"] for img in page.images}
    assert all(img.get("data-loaded") == "yes" for img in page.images)

    lora = dict(raw, sharing="lora", output_dir=str(tmp_path / "lora"))
    config.write_text(yaml.safe_dump(lora), encoding="utf-8")
    assert main(["affinity", str(config)]) == 2
    assert "sharing: 'lora' shares no parameter" in capsys.readouterr().err
    assert not (tmp_path / "lora").exists()

    # A run that ends before the first measurement fails: a script would otherwise go on without affinity.json.
    config.write_text(yaml.safe_dump(dict(raw, output_dir=str(tmp_path / "short"))), encoding="utf-8")
    assert main(["affinity", str(config), "--every", "3", "--max_steps", "2"]) == 1
    assert "no affinity measured: training ended (step 2) before step 3" in capsys.readouterr().out
    assert not (tmp_path / "short" / "diagnostics" / AFFINITY_SUMMARY).exists()


DDP_WORKER = '''
import sys
import torch
sys.path.insert(0, sys.argv[2])
from manyheads.callbacks import TaskAffinityCallback, measure_affinity
from tests.conftest import make_encoder, make_tokenizer
from tests.run_helpers import new_trainer

out = sys.argv[1]
callback = TaskAffinityCallback(every=2, probe_batch_size=4)
trainer = new_trainer(make_encoder(), make_tokenizer(), out, max_steps=2, per_device_train_batch_size=4,
                      lr_scheduler_type="constant", disable_tqdm=True, trainer_kwargs={"callbacks": [callback]})
trainer.train()
local = measure_affinity(trainer.model, callback.probe_batches, trainer.args.learning_rate)  # this rank alone
torch.save({"world": trainer.args.world_size, "reduced": callback.history[-1].matrix, "local": local.matrix,
            "ids": callback.probe_batches["sentiment"]["input_ids"],
            "weights": torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])},
           f"{out}/rank{trainer.args.process_index}.pt")
'''


def test_under_ddp_the_matrix_is_the_mean_over_ranks(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from .test_ddp import free_port

    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    root = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(worker), str(tmp_path), root]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    assert not torch.equal(ranks[0]["ids"], ranks[1]["ids"])  # each rank probes its own rows
    local = [torch.tensor(r["local"], dtype=torch.float64) for r in ranks]
    assert not torch.allclose(local[0], local[1])
    for r in ranks:
        assert torch.allclose(torch.tensor(r["reduced"], dtype=torch.float64), (local[0] + local[1]) / 2,
                              rtol=1e-5, atol=1e-9)
    records = read_jsonl(tmp_path / "diagnostics" / AFFINITY_FILE)
    assert [r["step"] for r in records] == [2]  # one line, from the main process
