"""`manyheads serve`: routes, request errors, dynamic batching of concurrent requests, and a real server that
finishes its in-flight request and exits 0 on SIGTERM."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from starlette.testclient import TestClient

from manyheads import Classification, MultiTaskModel, MultiTaskPredictor, Regression
from manyheads.cli.main import main
from manyheads.errors import ConfigError
from manyheads.serving.server import create_app

from .conftest import make_encoder, make_tokenizer, review_rows
from .run_helpers import wait_for

TASKS = ["sentiment", "score", "match"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """Untrained heads (these tests are about the server, not accuracy): two single-text tasks and a pair task."""
    folder = tmp_path_factory.mktemp("serve-model")
    MultiTaskModel.from_encoder(make_encoder(), [
        Classification(name="sentiment", labels=["neg", "pos"]),
        Regression(name="score"),
        Classification(name="match", text=["text", "other"], labels=["0", "1"]),
    ]).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def predictor(model_dir) -> MultiTaskPredictor:
    return MultiTaskPredictor(model_dir, device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    """Small limits, so that the limit errors need small requests."""
    with TestClient(create_app(predictor, max_request_rows=4, max_body_bytes=4096)) as test_client:
        yield test_client


def assert_same(got, want) -> None:
    """Equal predictions; scores to 1e-5 (rows batched with others are padded differently)."""
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for got_item, want_item in zip(got, want):
            assert_same(got_item, want_item)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5)
    else:
        assert got == want


def texts(n: int, seed: int, pair: bool = False) -> list[dict]:
    return [{"text": r["text"], **({"other": r["other"]} if pair else {})} for r in review_rows(n, seed)]


# ----- routes -----
def test_health_and_description(client):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() | {"batches": 0} == {"ready": True, "backend": "torch", "tasks": TASKS, "queued_rows": 0,
                                              "batches": 0}
    about = client.get("/").json()
    assert about["tasks"] == [
        {"name": "sentiment", "type": "classification", "inputs": ["text"], "labels": ["neg", "pos"]},
        {"name": "score", "type": "regression", "inputs": ["text"]},
        {"name": "match", "type": "classification", "inputs": ["text", "other"], "labels": ["0", "1"]},
    ]
    assert about["limits"]["max_request_rows"] == 4 and "POST /predict" in about["routes"]


@pytest.mark.parametrize("records, tasks", [
    (texts(3, 1), None),  # single-text rows: the tasks that read "text"
    (texts(2, 2, pair=True), None),  # pairs: every task
    (texts(2, 3, pair=True), ["match"]),
    (texts(1, 4) + texts(1, 5, pair=True), None),  # as `predict`: only the tasks that read every record
])
def test_predict_answers_as_the_predictor(client, predictor, records, tasks):
    body = {"records": records} if tasks is None else {"records": records, "tasks": tasks}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    assert_same(response.json()["predictions"], predictor.predict(records, tasks))


# ----- request errors: (body, status, the message's start) -----
EXAMPLE = '{"records": [{"text": "..."}], "tasks": ["optional", "task names"]}'
BAD_REQUESTS = {
    "not_json": (b'{"records": [', 400, "request body: not valid JSON (Expecting value at line 1 column 14); send "
                                        f"an object like {EXAMPLE}"),
    "empty_body": (b"", 400, "request body: not valid JSON (Expecting value at line 1 column 1)"),
    "not_utf8": (b'{"records": [{"text": "\xff"}]}', 400, "request body: not valid JSON (UnicodeDecodeError)"),
    "a_list": ([{"text": "good"}], 422, f"request body: got a list; send an object like {EXAMPLE}"),
    "unknown_key": ({"record": []}, 422, "request body: unknown key(s) ['record']; the keys are 'records' and"),
    "records_missing": ({"tasks": ["score"]}, 422, f"records: missing; send an object like {EXAMPLE}"),
    "records_object": ({"records": {"text": "good"}}, 422, "records: got an object; give a list of records"),
    "records_empty": ({"records": []}, 422, "records: the list is empty; give at least one record"),
    "record_string": ({"records": [{"text": "good"}, "bad"]}, 422,
                      "records[1]: got a string; each record is an object of field: text"),
    "too_many_rows": ({"records": [{"text": "good"}] * 5}, 413,
                      "records: 5 records, over the limit of 4 per request (max_request_rows); split them"),
    "body_too_big": ({"records": [{"text": "good " * 1000}]}, 413,
                     "request body: 5027 bytes, over the limit of 4096 (max_body_bytes)"),
    "tasks_string": ({"records": [{"text": "good"}], "tasks": "score"}, 422,
                     "tasks: got 'score'; give a non-empty list of task names from ['sentiment', 'score', 'match']"),
    "tasks_empty": ({"records": [{"text": "good"}], "tasks": []}, 422, "tasks: got []; give a non-empty list"),
    "task_unknown": ({"records": [{"text": "good"}], "tasks": ["score", "topic"]}, 422,
                     "tasks: unknown task(s) ['topic']; this model has ['sentiment', 'score', 'match']"),
    "field_missing": ({"records": [{"text": "a", "other": "b"}, {"text": "good"}], "tasks": ["match"]}, 422,
                      "records[1]: field 'other' (task 'match') is missing; the row has ['text']"),
    "field_not_text": ({"records": [{"text": "good"}, {"text": 3}]}, 422,
                       "records[1]: field 'text' (task 'sentiment') is a number (3); give a string"),
    "no_task_reads": ({"records": [{"text": "good"}, {"id": 7}]}, 422,
                      "records[1]: no task can read this row: its fields are ['id']; the tasks read sentiment: 'text'"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_its_status_and_a_one_line_json_error(client, case):
    body, status, message = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error.startswith(message), error
    assert "\n" not in error and "Traceback" not in error


def test_a_body_without_content_length_is_cut_off_at_the_limit(client):
    chunks = iter([b'{"records": [{"text": "' + b"good " * 600, b"bad " * 600 + b'"}]}'])  # sent chunked
    response = client.post("/predict", content=chunks)
    assert response.status_code == 413
    assert response.json()["error"].startswith("request body: more than 4096 bytes, over the limit of 4096")


def test_unknown_route_and_wrong_method(client):
    missing = client.get("/predictions")
    assert (missing.status_code, missing.json()) == (404, {"error": "no route /predictions; the routes are GET /, "
                                                                    "GET /health and POST /predict"})
    wrong = client.get("/predict")
    assert (wrong.status_code, wrong.json()) == (405, {"error": "GET /predict: method not allowed; use POST"})
    assert wrong.headers["allow"] == "POST"
    assert client.delete("/health").status_code == 405


def test_records_with_no_task_in_common_are_a_422(tmp_path):
    folder = tmp_path / "model"
    MultiTaskModel.from_encoder(make_encoder(), [
        Classification(name="nli", text=["premise", "hypothesis"], labels=["no", "yes"]),
        Classification(name="qq", text=["q1", "q2"], labels=["no", "yes"]),
    ]).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    records = [{"premise": "a", "hypothesis": "b", "q1": "c", "q2": "d"}, {"premise": "e", "hypothesis": "f"},
               {"q1": "g", "q2": "h"}]
    with TestClient(create_app(MultiTaskPredictor(folder, device="cpu"))) as test_client:
        response = test_client.post("/predict", json={"records": records})
    assert response.status_code == 422
    assert response.json()["error"] == ("records: no task can read every record: records[2] is read by ['qq'], "
                                        "records[0] to records[1] by ['nli']; send them in separate requests, or "
                                        "name the 'tasks' to run")


# ----- batching and the worker -----
def test_concurrent_requests_share_batches_and_each_gets_its_own_rows(predictor):
    # Each request: its own rows (1 to 3, or 11: more than a batch), its own tasks (three task sets in all).
    requests = []
    for i in range(20):
        records = texts(11 if i == 7 else 1 + i % 3, seed=100 + i, pair=i % 4 == 1)
        requests.append({"records": records, **({"tasks": ["sentiment"]} if i % 5 == 3 else {})})
    # A long wait, so that requests sent together meet in the queue even on a busy machine.
    app = create_app(predictor, max_batch_size=8, max_wait_ms=300)
    start, answers = threading.Barrier(len(requests)), {}

    def send(i: int) -> None:
        start.wait(timeout=30)
        answers[i] = test_client.post("/predict", json=requests[i])

    with TestClient(app) as test_client:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
    for i, body in enumerate(requests):
        assert answers[i].status_code == 200, answers[i].text
        got = answers[i].json()["predictions"]
        assert len(got) == len(body["records"])
        assert_same(got, predictor.predict(body["records"], body.get("tasks")))
    stats = app.state.batcher.stats
    assert stats.rows == sum(len(body["records"]) for body in requests)
    assert max(stats.sizes) <= 8  # the 11-row request was split
    assert max(stats.requests) > 1  # at least one batch held the rows of several requests


def test_health_answers_while_a_batch_runs(predictor):
    entered, release = threading.Event(), threading.Event()
    slow = copy.copy(predictor)

    def blocking_predict_rows(records, row_tasks):
        entered.set()
        release.wait(timeout=60)
        return predictor.predict_rows(records, row_tasks)

    slow.predict_rows = blocking_predict_rows
    answer = {}
    with TestClient(create_app(slow, max_wait_ms=0)) as test_client:
        thread = threading.Thread(target=lambda: answer.update(r=test_client.post("/predict", json={
            "records": texts(2, 9)})))
        thread.start()
        try:
            assert entered.wait(timeout=60)
            health = test_client.get("/health")
            assert health.status_code == 200 and health.json()["queued_rows"] == 2
        finally:
            release.set()
            thread.join(timeout=60)
    assert answer["r"].status_code == 200 and len(answer["r"].json()["predictions"]) == 2


def test_a_failure_on_the_server_is_a_one_line_500_with_the_traceback_in_the_log(predictor, caplog):
    failing = copy.copy(predictor)
    calls = []

    def predict_rows(records, row_tasks):
        calls.append(len(records))
        if len(calls) == 1:
            raise RuntimeError("details for the log only")
        return predictor.predict_rows(records, row_tasks)

    failing.predict_rows = predict_rows
    with caplog.at_level(logging.ERROR, logger="manyheads.serving.server"), \
            TestClient(create_app(failing)) as test_client:
        failed = test_client.post("/predict", json={"records": texts(1, 1)})
        after = test_client.post("/predict", json={"records": texts(1, 1)})  # the worker lives on
    assert failed.status_code == 500
    assert failed.json() == {"error": "prediction failed on the server (RuntimeError); the server log has the details"}
    assert after.status_code == 200
    assert "details for the log only" in caplog.text
    assert any(record.exc_info for record in caplog.records)


def test_an_app_whose_lifespan_did_not_run_answers_503(predictor):
    test_client = TestClient(create_app(predictor))  # not `with`: no lifespan, no worker
    assert test_client.get("/health").json()["ready"] is False
    response = test_client.post("/predict", json={"records": texts(1, 1)})
    assert response.status_code == 503
    assert "with TestClient(app) as client" in response.json()["error"]


def test_bad_limits_are_config_errors(predictor):
    with pytest.raises(ConfigError, match=r"max_batch_size: got 0; give a number >= 1, e.g. 32.\n"
                                          r"max_wait_ms: got -1; give a number >= 0"):
        create_app(predictor, max_batch_size=0, max_wait_ms=-1)


# ----- the command -----
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("options, message", [
    (["--max_batch_size", "0"], "--max_batch_size: got 0; give a number >= 1, e.g. 32."),
    (["--max_body_bytes", "1"], "--max_body_bytes: got 1; give a number >= 2"),
    (["--port", "70000"], "--port: got 70000; give a port from 0 to 65535"),
    (["--host", "no-such-host.invalid"], "--host: 'no-such-host.invalid' is not an address of this machine"),
])
def test_bad_options_exit_2(model_dir, options, message, capsys):
    assert main(["serve", model_dir, *options]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_model_or_a_busy_port_exits_2(model_dir, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert f"MODEL_DIR: folder not found: {tmp_path / 'nothing'}" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", model_dir, "--port", str(port)]) == 2
    assert f"--port: cannot listen on 127.0.0.1:{port} (Address already in use)" in capsys.readouterr().err


def test_without_uvicorn_the_command_says_what_to_install(model_dir, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", model_dir]) == 2
    assert 'error: the server needs uvicorn: pip install "manyheads[serve]"' in capsys.readouterr().err


def test_a_real_server_finishes_its_in_flight_request_and_exits_0_on_sigterm(model_dir, predictor, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    # A long --max_wait_ms keeps the request in the queue while the signal arrives.
    command = [sys.executable, "-m", "manyheads.cli.main", "serve", model_dir, "--port", str(port),
               "--max_wait_ms", "1500", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    answer: dict[str, httpx.Response] = {}
    try:
        wait_for(lambda: httpx.get(f"{base}/health", timeout=5).json()["ready"], 180, "it answered /health", process)
        records = texts(3, 11, pair=True)
        assert_same(httpx.post(f"{base}/predict", json={"records": records}, timeout=30).json()["predictions"],
                    predictor.predict(records))
        in_flight = threading.Thread(target=lambda: answer.update(r=httpx.post(
            f"{base}/predict", json={"records": records[:2]}, timeout=60)))
        in_flight.start()
        wait_for(lambda: httpx.get(f"{base}/health", timeout=5).json()["queued_rows"] == 2, 20,
                 "the request was queued", process)
        process.send_signal(signal.SIGTERM)
        in_flight.join(timeout=60)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
    assert answer["r"].status_code == 200, output
    assert_same(answer["r"].json()["predictions"], predictor.predict(records[:2]))
    assert "Traceback" not in output and "Shutting down" in output, output


def test_the_onnx_backend_serves_the_same_predictions(model_dir, predictor, tmp_path, capsys):
    from manyheads.serving.server import load_predictor

    assert main(["export", model_dir, "--format", "onnx", "--output", str(tmp_path / "onnx"), "--quantize",
                 "int8"]) == 0, capsys.readouterr().err
    records = texts(3, 21, pair=True)
    with TestClient(create_app(load_predictor(tmp_path / "onnx", backend="onnx", device="cpu"))) as test_client:
        assert test_client.get("/health").json()["backend"] == "onnx"
        response = test_client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    assert_same(response.json()["predictions"], predictor.predict(records))
    int8 = load_predictor(tmp_path / "onnx", backend="onnx", device="cpu", onnx_file="model_int8.onnx")
    with TestClient(create_app(int8, backend="onnx")) as test_client:
        response = test_client.post("/predict", json={"records": records})
    assert response.status_code == 200 and len(response.json()["predictions"]) == len(records)
    assert int8.model.file.endswith("model_int8.onnx")
