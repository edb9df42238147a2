"""`manyheads serve` keeps its promises at the edges: on SIGTERM with more queued work than `--shutdown_timeout`
allows, every request gets either its 200 or a 503 JSON error (never a plain 500), and neither that nor a client
that hangs up mid-body leaves a traceback in the server's log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from manyheads import Classification, MultiTaskModel

from .conftest import make_encoder, make_tokenizer, review_rows
from .run_helpers import wait_for

# The real command, with each predict call slowed by argv[1] seconds (so the queue outlasts the shutdown timeout).
SLOW_SERVER = """
import sys, time
from manyheads.serving.predictor import MultiTaskPredictor
predict_rows = MultiTaskPredictor.predict_rows
def slow(self, records, row_tasks):
    time.sleep(float(sys.argv[1]))
    return predict_rows(self, records, row_tasks)
MultiTaskPredictor.predict_rows = slow
from manyheads.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("serve-shutdown-model")
    MultiTaskModel.from_encoder(make_encoder(), [Classification(name="sentiment", labels=["neg", "pos"])]
                                ).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`manyheads serve` in a subprocess on 127.0.0.1, its output in a log file."""

    def __init__(self, model_dir: str, log_path: Path, delay: float, *options: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w+", encoding="utf-8")  # noqa: SIM115 (closed by stop())
        command = [sys.executable, "-c", SLOW_SERVER, str(delay), "serve", model_dir, "--port", str(self.port),
                   "--device", "cpu", *options]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "NO_COLOR": "1"})

    def wait_for(self, condition, seconds: float, what: str) -> None:
        wait_for(condition, seconds, what, self.process, self.output)

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=5).json()

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(encoding="utf-8")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def start_server(model_dir, tmp_path) -> Iterator:
    servers: list[Server] = []

    def start(delay: float, *options: str) -> Server:
        servers.append(Server(model_dir, tmp_path / f"server-{len(servers)}.log", delay, *options))
        servers[-1].wait_for(lambda: servers[-1].health()["ready"], 180, "it answered /health")
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def assert_clean_log(output: str) -> None:
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
    assert "ERROR" not in output, output


def test_on_sigterm_every_queued_request_gets_its_200_or_a_503_json_error(start_server):
    # One row per batch, 0.4 s per batch: 12 requests need about 5 s, the shutdown timeout allows 2.
    server = start_server(0.4, "--max_batch_size", "1", "--max_wait_ms", "0", "--shutdown_timeout", "2")
    records = [{"text": row["text"]} for row in review_rows(12, 3)]
    answers: dict[int, httpx.Response | Exception] = {}

    def send(i: int) -> None:
        try:
            answers[i] = httpx.post(f"{server.base}/predict", json={"records": [records[i]]}, timeout=60)
        except httpx.HTTPError as err:  # a connection cut without an answer is a failure of the server
            answers[i] = err

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(records))]
    for thread in threads:
        thread.start()
    server.wait_for(lambda: server.health()["queued_rows"] == len(records), 30, "all 12 requests were queued")
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert server.process.wait(timeout=30) == 0
    output = server.output()
    statuses = []
    for i in range(len(records)):
        answer = answers[i]
        assert isinstance(answer, httpx.Response), f"request {i}: {answer!r}\n{output}"
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            assert [set(p) for p in answer.json()["predictions"]] == [{"sentiment"}]
        else:
            assert answer.status_code == 503, f"request {i}: {answer.status_code} {answer.text}\n{output}"
            assert answer.headers["content-type"] == "application/json"
            assert "shutting down" in answer.json()["error"]
    assert 503 in statuses, statuses  # more work than the timeout allows: some requests were turned away
    assert 200 in statuses, statuses  # ... and the ones that fit in it were finished
    assert time.monotonic() - sent < 30
    assert_clean_log(output)


HALF_A_REQUEST = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"records\": [{\"text\": \"half a")


def test_a_client_that_hangs_up_or_is_cut_off_mid_body_leaves_no_traceback(start_server):
    server = start_server(0.0, "--shutdown_timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(HALF_A_REQUEST)
        time.sleep(0.3)  # the server is reading the body when the client goes
    answer = httpx.post(f"{server.base}/predict", json={"records": [{"text": "still serving"}]}, timeout=30)
    assert answer.status_code == 200, answer.text
    # A client still sending its body when the shutdown timeout ends is cut off with a 503 answer too.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.sendall(HALF_A_REQUEST)
        time.sleep(0.3)  # the server is reading the body when the signal comes
        server.process.send_signal(signal.SIGTERM)
        received = b""
        while chunk := slow.recv(4096):
            received += chunk
    assert server.process.wait(timeout=30) == 0
    output = server.output()
    assert received.startswith(b"HTTP/1.1 503"), received
    assert b"application/json" in received and b"shutting down" in received, received
    # uvicorn's own line about cancelling the request at its timeout is an ERROR, but there is no traceback.
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
    assert sum("disconnected" in line for line in output.splitlines()) <= 1, output
