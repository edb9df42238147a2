"""Dynamic batching for `manyheads.serving.server`: the rows of concurrent requests share predict calls.

Requests are queued in pieces of at most `max_batch_size` rows; one asyncio worker takes the oldest piece, waits
until `max_wait_ms` after it arrived (or until the batch is full), adds every queued piece with the same task
set up to `max_batch_size` rows, and runs the batch on ONE thread that owns the predictor (torch is not
re-entrant here), so the event loop keeps answering (`/health` during a long batch). Each request's future gets
exactly its own rows back, in order.

Shutting down: `drain(seconds)` runs what is queued without waiting for batches to fill and, `seconds` later,
answers every request still queued or running with a 503, so that the ASGI server's own shutdown timeout never
cuts a request off without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import shown

if TYPE_CHECKING:
    from .predictor import MultiTaskPredictor

logger = logging.getLogger(__name__)
SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"


@dataclass(frozen=True)
class Limits:
    """Batching and request limits (the CLI's `--max_batch_size` ... options)."""

    max_batch_size: int = 32  # rows per predict call: the worker's batch
    max_wait_ms: float = 5.0  # how long the oldest queued piece waits for others to fill its batch
    max_request_rows: int = 256  # records per request; more is a 413
    max_body_bytes: int = 1 << 20  # request body size; more is a 413

    def problems(self, prefix: str = "") -> list[str]:
        """Every bad value as a message naming `prefix + name` (`--` for the CLI)."""
        minimum = {"max_batch_size": 1, "max_wait_ms": 0, "max_request_rows": 1, "max_body_bytes": 2}
        return [f"{prefix}{name}: got {shown(value)}; give a number >= {minimum[name]}, e.g. "
                f"{getattr(Limits, name)}." for name, value in asdict(self).items()
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum[name]]


class RequestError(Exception):
    """A request that gets an error response: its HTTP status and one-line message."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


# ----- dynamic batching -----
@dataclass(eq=False)  # compared by identity: a piece is one queue entry
class _Piece:
    """Up to `max_batch_size` consecutive records of one request, all running `tasks`."""

    request: int
    tasks: tuple[str, ...]
    records: list[dict[str, Any]]
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    """What the worker has done; `sizes` and `requests` hold the rows and requests of the recent batches."""

    batches: int = 0
    rows: int = 0
    sizes: deque = field(default_factory=lambda: deque(maxlen=1000))
    requests: deque = field(default_factory=lambda: deque(maxlen=1000))


class Batcher:
    """Queues the rows of concurrent requests and predicts them in shared batches on one worker thread.

    Started and stopped on the event loop that serves the requests (the app's lifespan).
    """

    def __init__(self, predictor: MultiTaskPredictor, limits: Limits):
        self.predictor = predictor
        self.limits = limits
        self.stats = BatchStats()
        self._pending: list[_Piece] = []
        self._running: list[_Piece] = []
        self._ids = itertools.count()
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._arrived: asyncio.Event | None = None
        self._draining = False  # drain() was called: batches no longer wait to fill
        self._closed = False  # the drain time is over (or stop()): requests get a 503
        self._turn_away_later: asyncio.TimerHandle | None = None

    @property
    def ready(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def draining(self) -> bool:
        """Shutdown has begun (`drain` was called)."""
        return self._draining

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch or being predicted."""
        return sum(len(p.records) for p in self._pending + self._running)

    async def start(self) -> None:
        # Made here, not in __init__: they belong to the loop that serves (a test client may start the app twice).
        self._arrived = asyncio.Event()
        self._draining = self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manyheads-predict")
        self._worker = asyncio.create_task(self._work(), name="manyheads-batcher")

    def drain(self, seconds: float) -> None:
        """Shutdown has begun: predict what is queued without waiting for batches to fill, and after `seconds`
        answer every request still queued or being predicted (and any new one) with a 503. Call it on the event
        loop, with `seconds` short enough for those answers to go out before the server stops waiting."""
        if self._draining:
            return
        self._draining = True
        if self._arrived is not None:
            self._arrived.set()  # a batch waiting to fill goes now
        self._turn_away_later = asyncio.get_running_loop().call_later(max(0.0, seconds), self._turn_away)

    def _turn_away(self) -> None:
        self._closed = True
        if self._worker is not None:
            # A batch on the thread runs to its end, but its requests are answered now; nothing new starts.
            self._worker.cancel()
        self._fail(self._pending + self._running, RequestError(503, SHUTTING_DOWN))
        self._pending, self._running = [], []

    async def stop(self) -> None:
        """Fail what is still queued (uvicorn has already let in-flight requests finish) and free the thread."""
        if self._turn_away_later is not None:
            self._turn_away_later.cancel()
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._fail(self._pending + self._running, RequestError(503, SHUTTING_DOWN))
        self._pending, self._running = [], []
        if self._executor is not None:
            # A batch already on the thread cannot be interrupted; do not wait for it here.
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, tasks: tuple[str, ...], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The predictions of `records` (each running `tasks`), in order, once the worker has run them."""
        if self._closed:
            raise RequestError(503, SHUTTING_DOWN)
        if not self.ready or self._arrived is None:
            raise RequestError(503, "the server is not running: serve the app with its lifespan on "
                                    "(starlette's TestClient: use it as `with TestClient(app) as client`)")
        loop = asyncio.get_running_loop()
        request, size = next(self._ids), self.limits.max_batch_size
        pieces = [_Piece(request, tasks, records[i:i + size], loop.create_future(), loop.time())
                  for i in range(0, len(records), size)]
        self._pending.extend(pieces)
        self._arrived.set()
        parts = await asyncio.gather(*(piece.future for piece in pieces))
        return [prediction for part in parts for prediction in part]

    async def _work(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                if batch:
                    await self._run(batch)
            except Exception:  # a bug here must not leave the queued requests waiting forever
                logger.exception("the batch worker failed; failing the queued requests")
                self._fail(self._pending + self._running, RequestError(500, "the server failed while batching; "
                                                                            "the server log has the details"))
                self._pending, self._running = [], []

    async def _next_batch(self) -> list[_Piece]:
        """Wait for a piece, then until its batch is full or it has waited `max_wait_ms`; take that batch."""
        assert self._arrived is not None  # set by start()
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        first = self._pending[0]
        deadline = first.arrived + self.limits.max_wait_ms / 1000
        # The deadline counts from the piece's arrival: a piece that queued while a batch ran does not wait again.
        while sum(len(p.records) for p in self._pending if p.tasks == first.tasks) < self.limits.max_batch_size \
                and loop.time() < deadline and not self._draining:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError itself from 3.11
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
        batch, rows = [], 0
        for piece in self._pending:
            if piece.tasks == first.tasks and not piece.future.done() and rows + len(piece.records) <= \
                    self.limits.max_batch_size:
                batch.append(piece)
                rows += len(piece.records)
        # Pieces whose request is gone (cancelled) are dropped with the batch's pieces.
        self._pending = [p for p in self._pending if not (p in batch or p.future.done())]
        return batch

    async def _run(self, batch: list[_Piece]) -> None:
        records = [record for piece in batch for record in piece.records]
        row_tasks = [list(batch[0].tasks)] * len(records)
        self._running = batch  # stop() fails these if the worker is cancelled while they run
        loop = asyncio.get_running_loop()
        try:
            predictions = await loop.run_in_executor(self._executor, self.predictor.predict_rows, records, row_tasks)
        except Exception as err:
            # The traceback is for the server's log; the client gets one line without internals.
            logger.exception("prediction failed on a batch of %d rows (tasks %s)", len(records), list(batch[0].tasks))
            self._fail(batch, RequestError(500, f"prediction failed on the server ({type(err).__name__}); the "
                                                "server log has the details"))
            self._running = []
            return
        self._running = []
        start = 0
        for piece in batch:
            if not piece.future.done():
                piece.future.set_result(predictions[start:start + len(piece.records)])
            start += len(piece.records)
        self.stats.batches += 1
        self.stats.rows += len(records)
        self.stats.sizes.append(len(records))
        self.stats.requests.append(len({piece.request for piece in batch}))

    @staticmethod
    def _fail(pieces: list[_Piece], error: RequestError) -> None:
        for piece in pieces:
            if not piece.future.done():
                piece.future.set_exception(error)


