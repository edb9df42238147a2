"""`manyheads serve MODEL_DIR [--host 127.0.0.1 --port 8000 ...]`: the model over HTTP, with dynamic batching."""

from __future__ import annotations

import argparse
import socket

from ..errors import ConfigError
from .common import model_dir_problem, quiet_libraries

HELP = "Serve a saved model over HTTP (POST /predict, GET /health), batching concurrent requests."
EPILOG = """\
Routes:
  GET  /          the tasks with their input fields and labels, the limits
  GET  /health    {"ready": true, "backend": "torch", "tasks": [...], "queued_rows": 0, "batches": 12}
  POST /predict   {"records": [{"text": "..."}, ...], "tasks": ["optional", "names"]}
                  -> {"predictions": [{"<task>": <prediction>, ...}, ...]} in the order of the records
Without "tasks", a request runs every task that can read all of its records (as 'manyheads predict').

Batching: the rows of concurrent requests that run the same tasks are predicted together, up to
--max_batch_size rows, waiting at most --max_wait_ms for a batch to fill.

Errors are JSON {"error": "<one line>"}: 400 body not JSON; 413 body over --max_body_bytes or more than
--max_request_rows records; 422 not a valid request (the key, or records[i] and the field); 404 / 405 route
or method; 503 shutting down; 500 a failure on the server (traceback in the server's log only).

SIGTERM or Ctrl+C: stops accepting connections, finishes the requests in flight that fit in
--shutdown_timeout seconds, answers the others 503 (JSON, as above), exits 0. The server has no
authentication: keep --host on a loopback address unless a proxy in front of it controls access.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog's JSON examples keep their lines
    parser.epilog = EPILOG
    parser.add_argument("model_dir", help="folder written by 'manyheads train'")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="run the model with torch, or with ONNX Runtime (needs an ONNX export)")
    parser.add_argument("--onnx_file", default=None,
                        help="with --backend onnx: the graph to run, e.g. model_int8.onnx (default: model.onnx)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--max_batch_size", type=int, default=32, help="rows per batch (one encoder pass)")
    parser.add_argument("--max_wait_ms", type=float, default=5.0,
                        help="how long a queued row waits for other requests to fill its batch")
    parser.add_argument("--max_request_rows", type=int, default=256, help="records per request; more is a 413")
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20, help="request body size; more is a 413")
    parser.add_argument("--shutdown_timeout", type=float, default=10.0,
                        help="seconds the requests in flight get to finish after SIGTERM; those still queued "
                             "near the end get a 503")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..serving.server import Limits, load_predictor, missing_dependencies, serve

    limits = Limits(args.max_batch_size, args.max_wait_ms, args.max_request_rows, args.max_body_bytes)
    problems = [p for p in (missing_dependencies(), model_dir_problem(args.model_dir)) if p] + limits.problems("--")
    if not 0 <= args.port <= 65535:
        problems.append(f"--port: got {args.port}; give a port from 0 to 65535, e.g. 8000.")
    if not args.shutdown_timeout > 0:
        problems.append(f"--shutdown_timeout: got {args.shutdown_timeout}; give the seconds (> 0), e.g. 10.")
    if not problems:
        problems += [p for p in [_listen_problem(args.host, args.port)] if p]
    if problems:
        raise ConfigError(problems)
    quiet_libraries()
    try:
        predictor = load_predictor(args.model_dir, args.backend, args.device, args.max_batch_size, args.onnx_file)
    except ConfigError:
        raise  # already names the folder and the fix
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"MODEL_DIR: could not load the model in {args.model_dir} (--backend {args.backend}): "
                          f"{err}") from None
    serve(predictor, args.host, args.port, backend=args.backend, shutdown_timeout=args.shutdown_timeout,
          max_batch_size=limits.max_batch_size, max_wait_ms=limits.max_wait_ms,
          max_request_rows=limits.max_request_rows, max_body_bytes=limits.max_body_bytes)
    return 0


def _listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on `host:port`, found before the model is loaded (None when it can)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        return f"--host: {host!r} is not an address of this machine ({err}); give one such as 127.0.0.1."
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn does: a port whose last connections are still closing (TIME_WAIT) can be reused.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            return (f"--port: cannot listen on {host}:{port} ({err.strerror}); choose another port, or stop the "
                    "program that holds it.")
    return None
