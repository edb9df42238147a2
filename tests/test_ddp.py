"""Two real processes (torchrun, gloo on CPU) against one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from manyheads.recipe import build_config, build_trainer

from .conftest import base_config

STRATEGIES = ("proportional", "temperature", "uniform", "round_robin")
TASKS = ("sentiment", "match", "score")  # sequence-level losses: a mean over 2x4 rows == mean of two means of 4


def raw_config(model_dir, data_dir, out, balancing=None, strategy="proportional", batch=4, **training):
    raw = base_config(model_dir, data_dir, out, per_device_train_batch_size=batch, **training)
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in TASKS]
    # Unequal sizes, so that the strategies draw different task sequences.
    for task, size in zip(raw["tasks"], (64, 32, 16)):
        task["data"]["max_train_samples"] = size
    raw["sampling"] = {"strategy": strategy}
    if balancing:
        raw["balancing"] = balancing
    return raw


def many_config(model_dir, data_dir, out, batch=4, **training):
    """50 tasks: 48 sentiment datasets of unequal sizes, two per shared head (`head: h<k>`), plus two own heads."""
    raw = base_config(model_dir, data_dir, out, per_device_train_batch_size=batch, **training)
    sentiment, match = raw["tasks"][0], raw["tasks"][1]
    tasks = [{**sentiment, "name": f"s{i}", "head": f"h{i // 2}",
              "data": {"train": "train.jsonl", "max_train_samples": 8 + 4 * (i % 5)}} for i in range(48)]
    tasks += [{**match, "data": {"train": "train.jsonl"}}, {**sentiment, "data": {"train": "small.jsonl"}}]
    raw["tasks"] = tasks
    raw["sampling_strategy"] = "temperature"
    return raw


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tiny_model_dir, tmp_path_factory):
    """All two-process jobs in one torchrun launch (starting processes is the slow part)."""
    from .conftest import review_rows, write_jsonl

    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", review_rows(64, 1))
    write_jsonl(data / "eval.jsonl", review_rows(23, 2))  # odd size: DDP eval must not count padding rows
    jobs = {f"strategy_{s}": raw_config(tiny_model_dir, data, root / f"strategy_{s}", strategy=s, max_steps=6)
            for s in STRATEGIES}
    jobs["upgrad"] = raw_config(tiny_model_dir, data, root / "upgrad", {"aggregator": "upgrad"}, max_steps=4)
    jobs["equal_best"] = raw_config(tiny_model_dir, data, root / "equal_best", max_steps=8, eval_strategy="steps",
                                    eval_steps=4, save_strategy="steps", save_steps=4, load_best_model_at_end=True,
                                    metric_for_best_model="eval_average")
    # PCGrad draws a random task order: ranks must agree on it.
    jobs["pcgrad"] = raw_config(tiny_model_dir, data, root / "pcgrad", {"aggregator": "pcgrad"}, max_steps=4,
                                logging_steps=1)
    for method in ("uncertainty", "gradnorm", "dwa"):
        jobs[method] = raw_config(tiny_model_dir, data, root / method, {"weighting": method,
                                  "weighting_kwargs": {"period": 2} if method == "dwa" else {}}, max_steps=6,
                                  logging_steps=2)
    # Soft and hybrid sharing: per-task adapters, each micro-batch (the same task on both ranks) runs its own.
    for mode in ("lora", "hybrid"):
        jobs[mode] = raw_config(tiny_model_dir, data, root / mode, max_steps=6, logging_steps=2)
        jobs[mode]["sharing"] = {"mode": mode, "r": 4, "alpha": 8, "dropout": 0.0}  # dropout masks differ by rank
    # A generation task (BERT2BERT decoder) next to a classifier: token-normalised loss summed over both ranks.
    jobs["seq2seq"] = raw_config(tiny_model_dir, data, root / "seq2seq", max_steps=6, logging_steps=2,
                                 gradient_accumulation_steps=2)
    jobs["seq2seq"]["tasks"] = [jobs["seq2seq"]["tasks"][0], {
        "name": "echo", "type": "seq2seq", "text": "text", "label": "other", "max_target_length": 8,
        "max_new_tokens": 4, "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}]
    # Resume in epoch 3 (10 rows per task: 2 steps per task per epoch), mid-epoch, with accumulation.
    for name in ("resume_full", "resume_from_7"):
        jobs[name] = raw_config(tiny_model_dir, data, root / name, strategy="temperature", max_steps=12,
                                save_strategy="steps", save_steps=7)
        for task in jobs[name]["tasks"]:
            task["data"] = {"train": "small.jsonl"}
    # 50 tasks with shared heads: a run, and the same run resumed mid-way from its checkpoint.
    for name in ("many_full", "many_from_5"):
        jobs[name] = many_config(tiny_model_dir, data, root / name, max_steps=10, save_strategy="steps", save_steps=5,
                                 logging_steps=5)
    write_jsonl(data / "small.jsonl", review_rows(10, 3))
    spec = []
    resumes = {"resume_from_7": root / "resume_full" / "checkpoint-7",
               "many_from_5": root / "many_full" / "checkpoint-5"}
    for name, raw in jobs.items():
        (root / name).mkdir()
        spec.append({"name": name, "config": raw, "out": str(root / name)})
        if name in resumes:
            spec[-1]["resume"] = str(resumes[name])
    (root / "jobs.json").write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(worker), str(root / "jobs.json")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    (root / "torchrun.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    assert result.returncode == 0, result.stderr[-4000:]
    records = {}
    for name in jobs:
        ranks = [json.loads((root / name / f"rank{r}.json").read_text()) for r in (0, 1)]
        records[name] = (ranks, torch.load(root / name / "weights.pt"))
    return data, root, records


def test_pcgrad_weights_agree_across_ranks(ddp_runs):
    ranks, _ = ddp_runs[2]["pcgrad"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert [e["weight_sentiment"] for e in ranks[0]["logs"]] == [e["weight_sentiment"] for e in ranks[1]["logs"]]


@pytest.mark.parametrize("method", ["uncertainty", "gradnorm", "dwa"])
def test_weighting_state_is_identical_on_all_ranks(method, ddp_runs):
    ranks, _ = ddp_runs[2][method]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
    assert ranks[0]["weighting"] == ranks[1]["weighting"]
    weights = [[e[f"weight_{t}"] for t in TASKS] for e in ranks[0]["logs"]]
    assert weights == [[e[f"weight_{t}"] for t in TASKS] for e in ranks[1]["logs"]]
    assert len({tuple(w) for w in weights}) > 1  # the weights moved during the run


def test_mid_epoch_resume_under_ddp_is_exact(ddp_runs):
    _, _, records = ddp_runs
    (full, full_weights), (resumed, resumed_weights) = records["resume_full"], records["resume_from_7"]
    assert full[0]["seen"][7:] == resumed[0]["seen"] == resumed[1]["seen"]
    for key, value in full_weights.items():
        assert torch.equal(value, resumed_weights[key]), key


def single_process(model_dir, data, out, **kwargs):
    # Same global batch as 2 ranks x 4 rows.
    trainer = build_trainer(build_config(raw_config(model_dir, data, out, batch=8, **kwargs)))
    trainer.train()
    return trainer


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_with_the_same_head_on_all_ranks(strategy, ddp_runs):
    _, _, records = ddp_runs
    ranks, _ = records[f"strategy_{strategy}"]
    assert ranks[0]["world_size"] == 2
    assert len(ranks[0]["seen"]) == 6
    assert ranks[0]["seen"] == ranks[1]["seen"]
    assert set(ranks[0]["seen"]) <= set(TASKS)


def test_strategies_differ(ddp_runs):
    sequences = {tuple(ddp_runs[2][f"strategy_{s}"][0][0]["seen"]) for s in STRATEGIES}
    assert len(sequences) >= 3


def test_upgrad_two_processes_match_one_process(ddp_runs, tiny_model_dir, tmp_path):
    data, _, records = ddp_runs
    ranks, weights = records["upgrad"]
    assert ranks[0]["seen"] == ranks[1]["seen"] == [sorted(TASKS)] * 4
    reference = single_process(tiny_model_dir, data, tmp_path / "single", balancing={"aggregator": "upgrad"},
                               max_steps=4)
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_equal_weighting_ddp_matches_one_process_and_evaluates_each_example_once(ddp_runs, tiny_model_dir,
                                                                                  tmp_path):
    data, root, records = ddp_runs
    ranks, weights = records["equal_best"]
    for rank in ranks:
        assert rank["eval_sizes"] == {t: 23 for t in TASKS}
    assert ranks[0]["metrics"]["eval_average"] == ranks[1]["metrics"]["eval_average"]
    # Best-model selection: both ranks agree and the checkpoint exists.
    assert ranks[0]["best"] == ranks[1]["best"] and ranks[0]["best"].startswith(str(root / "equal_best"))
    assert os.path.isdir(ranks[0]["best"])
    reference = single_process(tiny_model_dir, data, tmp_path / "single", max_steps=8, eval_strategy="steps",
                               eval_steps=4, save_strategy="steps", save_steps=4, load_best_model_at_end=True,
                               metric_for_best_model="eval_average")
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=key)
    single_metrics = reference.evaluate()
    assert ranks[0]["metrics"]["eval_average"] == pytest.approx(single_metrics["eval_average"], abs=1e-4)


@pytest.mark.parametrize("mode", ["lora", "hybrid"])
def test_adapters_train_under_ddp_and_match_one_process(mode, ddp_runs, tiny_model_dir, tmp_path):
    from manyheads.modeling.adapters import is_adapter_parameter

    data, _, records = ddp_runs
    ranks, weights = records[mode]
    assert ranks[0]["seen"] == ranks[1]["seen"] and ranks[0]["checksum"] == ranks[1]["checksum"]
    raw = raw_config(tiny_model_dir, data, tmp_path / "single", batch=8, max_steps=6, logging_steps=2)
    raw["sharing"] = {"mode": mode, "r": 4, "alpha": 8, "dropout": 0.0}  # dropout masks differ by rank
    reference = build_trainer(build_config(raw))
    initial = {k: v.clone() for k, v in reference.model.state_dict().items()}
    reference.train()
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=key)
    lora_b = [k for k in weights if is_adapter_parameter(k) and "lora_B" in k]
    assert lora_b and all(not torch.equal(weights[k], initial[k]) for k in lora_b)  # every adapter trained
    base = [k for k in weights if k.startswith("encoder.") and not is_adapter_parameter(k)]
    unchanged = all(torch.equal(weights[k], initial[k]) for k in base)
    assert unchanged == (mode == "lora")


def test_generation_task_trains_under_ddp_and_matches_one_process(ddp_runs, tiny_model_dir, tmp_path):
    data, _, records = ddp_runs
    ranks, weights = records["seq2seq"]
    assert ranks[0]["seen"] == ranks[1]["seen"] and ranks[0]["checksum"] == ranks[1]["checksum"]
    assert "echo" in ranks[0]["seen"]
    # Every eval row generated once over both ranks, and the same metrics on both.
    assert ranks[0]["metrics"]["eval_echo_rougeL"] == ranks[1]["metrics"]["eval_echo_rougeL"]
    raw = raw_config(tiny_model_dir, data, tmp_path / "single", batch=8, max_steps=6, logging_steps=2,
                     gradient_accumulation_steps=2)
    raw["tasks"] = [raw["tasks"][0], {"name": "echo", "type": "seq2seq", "text": "text", "label": "other",
                                      "max_target_length": 8, "max_new_tokens": 4,
                                      "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}]
    reference = build_trainer(build_config(raw))
    reference.train()
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=key)
    # Evaluation parity: every eval row generated once (23, not the 32 of two padded rank shards: gathering the
    # texts after the loop kept accelerate's padding duplicates) and, from the very same weights, the same metrics
    # as one process (DDP's ~1e-7 weight differences could flip a barely trained decoder's near-tie tokens).
    assert ranks[0]["eval_sizes"]["echo"] == 23
    reference.model.load_state_dict({key: weights[key] for key in reference.model.state_dict()})
    single = reference.evaluate()
    assert single["eval_echo_rougeL"] == pytest.approx(ranks[0]["metrics"]["eval_echo_rougeL"])


def test_fifty_tasks_with_shared_heads_under_ddp_match_one_process_and_resume_exactly(ddp_runs, tiny_model_dir,
                                                                                    tmp_path):
    data, _, records = ddp_runs
    (full, full_weights), (resumed, resumed_weights) = records["many_full"], records["many_from_5"]
    assert full[0]["seen"] == full[1]["seen"] and len(full[0]["seen"]) == 10  # one task per step, on both ranks
    assert len(set(full[0]["seen"])) > 3  # temperature sampling over 50 tasks draws many of them
    assert full[0]["seen"][5:] == resumed[0]["seen"] == resumed[1]["seen"]
    heads = {key.split(".")[1] for key in full_weights if key.startswith("heads.")}
    assert heads == {f"h{k}" for k in range(24)} | {"match", "sentiment"}  # 26 heads for 50 tasks
    for key, value in full_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    reference = build_trainer(build_config(many_config(tiny_model_dir, data, tmp_path / "single", batch=8,
                                                       max_steps=10, logging_steps=5)))
    reference.train()
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(full_weights[key], value, atol=1e-5, rtol=1e-4, msg=key)
