"""An HTTP server for a saved model: `POST /predict` runs every task (or the named ones) on a list of records.

`serve("out/model", port=8000)`, or `create_app(MultiTaskPredictor("out/model"))` for any ASGI server.
Concurrent requests are batched: a request is queued as pieces of at most `max_batch_size` rows; one worker
takes the oldest piece plus the pieces that run the same tasks and arrive within `max_wait_ms` of it, up to
`max_batch_size` rows, and predicts them in one `predict_rows` call, on one thread that owns the predictor (a
torch model is not re-entrant here), so the event loop keeps answering `/health` during a long batch. A request
runs the tasks of `MultiTaskPredictor.predict`: those named in `tasks`, else every task that reads all its records.

Errors are JSON `{"error": "<one line>"}`: 400 body not JSON; 413 body over `max_body_bytes` or more than
`max_request_rows` records; 422 JSON that is not a valid request (names the key or `records[i]` and field);
404/405 route or method; 503 server not started or shutting down; 500 a failure on the server (its traceback
goes to the server log only). On SIGTERM, `serve` finishes the requests it can within `shutdown_timeout` and
answers the others 503 before uvicorn would cut them off; a client that hangs up mid-request is one log line.
Needs `pip install "manyheads[serve]"` (starlette, uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import json
import logging
import os
import signal
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, shown
from ..records import kind_of
from .batcher import SHUTTING_DOWN, Batcher, Limits, RequestError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request

    from .predictor import MultiTaskPredictor

logger = logging.getLogger(__name__)
INSTALL_HINT = 'pip install "manyheads[serve]"'
EXAMPLE = '{"records": [{"text": "..."}], "tasks": ["optional", "task names"]}'


def missing_dependencies() -> str | None:
    """A message naming the serving packages that are not installed, with the install hint; None if all are."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    return f"the server needs {' and '.join(missing)}: {INSTALL_HINT}" if missing else None


# ----- reading and checking a request -----
async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) as soon as Content-Length or the bytes read so far pass `max_bytes`."""
    def too_big(size: str) -> RequestError:
        return RequestError(413, f"request body: {size} bytes, over the limit of {max_bytes} (max_body_bytes); "
                                 "send fewer or shorter records per request")

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big(declared)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_big(f"more than {max_bytes}")
    return bytes(body)


def parse_request(body: bytes, model_tasks: list[str], max_rows: int) -> tuple[list[dict], list[str] | None]:
    """`(records, tasks)` of a `/predict` body; `RequestError` (400, 413, 422) naming the key and the fix."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        what = f"{err.msg} at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else \
            type(err).__name__
        raise RequestError(400, f"request body: not valid JSON ({what}); send an object like {EXAMPLE}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"request body: got {kind_of(data)}; send an object like {EXAMPLE}")
    unknown = sorted(set(data) - {"records", "tasks"})
    if unknown:
        raise RequestError(422, f"request body: unknown key(s) {shown(unknown)}; the keys are 'records' and "
                                "'tasks' (optional)")
    if "records" not in data:
        raise RequestError(422, f"records: missing; send an object like {EXAMPLE}")
    records = data["records"]
    if not isinstance(records, list):
        raise RequestError(422, f"records: got {kind_of(records)}; give a list of records, "
                                'e.g. [{"text": "..."}]')
    if not records:
        raise RequestError(422, "records: the list is empty; give at least one record")
    if len(records) > max_rows:
        raise RequestError(413, f"records: {len(records)} records, over the limit of {max_rows} per request "
                                "(max_request_rows); split them over several requests")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(422, f"records[{i}]: got {kind_of(record)}; each record is an object of field: text, "
                                    "e.g. {\"text\": \"...\"}")
    tasks = data.get("tasks")
    if tasks is None:
        return records, None
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise RequestError(422, f"tasks: got {shown(tasks)}; give a non-empty list of task names from {model_tasks}, "
                                "or leave 'tasks' out to run every task that can read the records")
    unknown = [t for t in tasks if t not in model_tasks]
    if unknown:
        raise RequestError(422, f"tasks: unknown task(s) {shown(unknown)}; this model has {model_tasks}")
    return records, tasks


def request_tasks(predictor: MultiTaskPredictor, records: list[dict], tasks: list[str] | None) -> tuple[str, ...]:
    """The tasks to run on every record (those of `MultiTaskPredictor.predict`), in the model's order; a record
    that one of them cannot read is a 422 naming `records[i]` and the field."""
    if tasks is None:
        plans = [predictor.plan_row(record, None, where=f"records[{i}]") for i, record in enumerate(records)]
        for plan in plans:
            if plan.error:
                raise RequestError(422, plan.error)
        # The tasks whose fields every record has (a bad value is reported below, as `predict` raises it).
        readable = [set(plan.tasks) | set(plan.errors) for plan in plans]
        tasks = [name for name in predictor.tasks if all(name in names for names in readable)]
        if not tasks:
            common, i = readable[0], 0
            while common & readable[i + 1]:  # stops: the tasks common to all of them are none
                common, i = common & readable[i + 1], i + 1
            first = "records[0]" if i == 0 else f"records[0] to records[{i}]"
            raise RequestError(422, f"records: no task can read every record: records[{i + 1}] is read by "
                                    f"{_ordered(readable[i + 1], predictor)}, {first} by "
                                    f"{_ordered(common, predictor)}; send them in separate requests, or name "
                                    "the 'tasks' to run")
    for i, record in enumerate(records):
        plan = predictor.plan_row(record, tasks, where=f"records[{i}]")
        if plan.problems:
            raise RequestError(422, plan.problems[0])
    return tuple(name for name in predictor.tasks if name in tasks)


def _ordered(names: set[str], predictor: MultiTaskPredictor) -> list[str]:
    return [name for name in predictor.tasks if name in names]


def describe(predictor: MultiTaskPredictor, backend: str, limits: Limits) -> dict[str, Any]:
    """What `GET /` answers: the tasks with their input fields and labels, the routes and the limits."""
    specs = predictor.heads  # one entry per head: datasets that share a head are one task here
    tasks = []
    for name in predictor.tasks:
        task = specs.get(name)
        entry: dict[str, Any] = {"name": name}
        if task is not None:
            entry.update(type=task.type, inputs=list(task.text))
            if task.label_list:
                entry["labels"] = task.label_list
        tasks.append(entry)
    return {"backend": backend, "tasks": tasks, "limits": asdict(limits),
            "inputs": "a record gives each input field of a task as text; a single-text task also reads a plain "
                      "'text' field",
            "routes": {"GET /": "this description", "GET /health": "tasks, backend, ready",
                       "POST /predict": f"{EXAMPLE} -> {{\"predictions\": [{{task: prediction}}, ...]}}"}}


# ----- the app -----
def create_app(predictor: MultiTaskPredictor, *, backend: str | None = None, max_batch_size: int = 32,
               max_wait_ms: float = 5.0, max_request_rows: int = 256, max_body_bytes: int = 1 << 20) -> Starlette:
    """A starlette app serving `predictor`: `GET /`, `GET /health`, `POST /predict` (see the module docstring).

    `backend` is only reported (default: the predictor's `backend`, else "torch"). The batch worker starts with
    the app's lifespan; `app.state.batcher.stats` counts the batches and their sizes.
    """
    if missing := missing_dependencies():
        raise ConfigError(missing)
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    limits = Limits(max_batch_size, max_wait_ms, max_request_rows, max_body_bytes)
    if limits.problems():
        raise ConfigError(limits.problems())
    backend = backend or getattr(predictor, "backend", "torch")
    batcher = Batcher(predictor, limits)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def index(request: Request) -> JSONResponse:
        return JSONResponse(describe(predictor, backend, limits))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ready": batcher.ready, "backend": backend, "tasks": predictor.tasks,
                             "queued_rows": batcher.queued_rows, "batches": batcher.stats.batches})

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, limits.max_body_bytes)
            records, tasks = parse_request(body, predictor.tasks, limits.max_request_rows)
            predictions = await batcher.submit(request_tasks(predictor, records, tasks), records)
        except RequestError as err:
            return error(err.status, str(err))
        except ClientDisconnect:
            # Nobody is left to answer (the response goes nowhere): a line for the log, not a traceback.
            logger.info("a client disconnected before sending its whole request body; request dropped")
            return error(400, "request body: the client disconnected before sending all of it")
        return JSONResponse({"predictions": predictions})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)  # registered for HTTPException only
        path = request.url.path
        if exc.status_code == 404:
            message = f"no route {path}; the routes are GET /, GET /health and POST /predict"
        elif exc.status_code == 405:
            message = f"{request.method} {path}: method not allowed; use {(exc.headers or {}).get('Allow', 'GET')}"
        else:
            message = str(exc.detail)
        return error(exc.status_code, message, exc.headers)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback (server side) after this response is sent.
        return error(500, f"internal server error ({type(exc).__name__}); the server log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(routes=[Route("/", index, methods=["GET"]), Route("/health", health, methods=["GET"]),
                            Route("/predict", predict, methods=["POST"])],
                    middleware=[Middleware(_AnswerWhenCutOff, batcher=batcher)],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    app.state.batcher = batcher
    return app


class _AnswerWhenCutOff:
    """ASGI middleware: a request that the ASGI server cancels while shutting down (its graceful timeout ran out,
    e.g. a client still sending its body) gets the 503 JSON answer, not uvicorn's plain-text 500 and a logged
    traceback. Other cancellations go on as they came."""

    def __init__(self, app: Any, batcher: Batcher):
        self.app, self.batcher = app, batcher

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_track(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_track)
        except asyncio.CancelledError:
            if not self.batcher.draining:
                raise
            if not started:  # once a response has begun, the server closes the connection on its own
                from starlette.responses import JSONResponse

                await JSONResponse({"error": SHUTTING_DOWN}, status_code=503)(scope, receive, send)


def load_predictor(model_dir: str | os.PathLike, backend: str = "torch", device: str | None = None,
                   batch_size: int = 32, onnx_file: str | None = None) -> MultiTaskPredictor:
    """The predictor of a saved model folder (torch) or of its ONNX export (`onnx_file`: e.g. the int8 graph)."""
    from .predictor import MultiTaskPredictor

    return MultiTaskPredictor(model_dir, device=device, batch_size=batch_size, backend=backend, onnx_file=onnx_file)


def serve(model: MultiTaskPredictor | str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
          backend: str = "torch", device: str | None = None, shutdown_timeout: float = 10.0,
          log_level: str = "info", **limits: Any) -> None:
    """Serve `model` (a predictor, or a saved model folder) with uvicorn until SIGINT/SIGTERM.

    On a signal the server stops accepting connections and lets in-flight requests finish; those that cannot
    finish within `shutdown_timeout` seconds get a 503 JSON answer. Then it returns. `limits`: the `Limits`
    fields, as for `create_app`.
    """
    if missing := missing_dependencies():
        raise ConfigError(missing)
    import uvicorn

    if isinstance(model, (str, os.PathLike)):
        model = load_predictor(model, backend, device, limits.get("max_batch_size", Limits.max_batch_size))
    app = create_app(model, backend=getattr(model, "backend", backend), **limits)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"][__name__] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level, log_config=log_config,
                            timeout_graceful_shutdown=shutdown_timeout)
    server = _draining_server(config, app.state.batcher)
    with _signals_stop(server):
        server.run()


def _answer_within(shutdown_timeout: float) -> float:
    """Seconds after a shutdown signal at which the requests still queued get their 503: before uvicorn's graceful
    timeout cancels them, leaving time for the answers to go out (uvicorn looks for closed connections every
    0.1 s)."""
    return shutdown_timeout - min(1.0, 0.25 * shutdown_timeout)


def _draining_server(config: Any, batcher: Batcher) -> Any:
    """A `uvicorn.Server` that starts draining `batcher` when its shutdown starts. Without it, uvicorn cancels the
    requests still running at its timeout, and each one gets a plain-text 500 and a traceback in the log."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            batcher.drain(_answer_within(self.config.timeout_graceful_shutdown))
            await super().shutdown(sockets=sockets)

    return DrainingServer(config)


@contextlib.contextmanager
def _signals_stop(server: Any):
    """uvicorn catches SIGINT/SIGTERM while it serves and, once shut down, raises the signal again for the handler
    that was there before: with this one, that ends `serve` normally (exit code 0) instead of killing the process
    (exit 143). A signal in the moment before uvicorn takes over stops the server at its first tick."""
    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
