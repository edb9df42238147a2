"""One run per output folder: an exclusive lock held for the life of a training run.

Two runs writing into one `output_dir` overwrite each other's checkpoints (a checkpoint marked complete could
hold the model of one run and the optimizer of the other). `OutputLock` takes an exclusive `flock` on
`<output_dir>/.manyheads.lock` and writes the holder's pid and host into it. The kernel releases a `flock`
when its process dies, however it dies (SIGKILL included), so a lock left by a dead run is simply taken
over: there is no stale-lock guessing. (`flock` is advisory and local to one machine; on a network file system
that does not support it, the lock is best effort.)

```python
with OutputLock(args.output_dir):
    trainer.train()
```
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any

from ..errors import ConfigError

LOCK_FILE = ".manyheads.lock"
LOCK_POLL_SECONDS = 0.1


def lock_path(output_dir: str) -> str:
    return os.path.join(output_dir, LOCK_FILE)


def _holder(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        return {}


def _busy_error(output_dir: str, holder: dict[str, Any]) -> ConfigError:
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    since = holder.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return ConfigError(f"output_dir: {output_dir} is in use by another manyheads run ({who}{when}). Wait for it to "
                       "finish, stop it, or set --output_dir to another folder.")


def _flock(handle: Any, wait: float) -> bool:
    """Take the exclusive lock on `handle`, trying for up to `wait` seconds; whether it was taken."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        # Polled rather than a blocking flock: a blocking call could not give up after `wait` seconds.
        time.sleep(min(LOCK_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def check_not_locked(output_dir: str, wait: float = 0.0) -> None:
    """Raise `ConfigError` when a live run holds the folder's lock; writes nothing (for checks before a run).

    `wait`: seconds to give a holder that is going away (e.g. a run killed a moment ago) to release it.

    Raises:
        ConfigError: naming the holder's pid and host.
    """
    path = lock_path(output_dir)
    if not os.path.isfile(path):
        return
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - held only for the probe below
    except OSError:
        return
    with handle:
        if not _flock(handle, wait):
            raise _busy_error(output_dir, _holder(path))
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class OutputLock:
    """Exclusive lock on an output folder (created if needed) while the `with` block runs.

    `wait`: seconds to keep trying while another process holds it (default: refuse at once).

    Raises:
        ConfigError: another live process holds it (one line naming its pid and host).
    """

    def __init__(self, output_dir: str, wait: float = 0.0):
        self.output_dir = output_dir
        self.wait = wait
        self._handle: Any = None

    def acquire(self) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        path = lock_path(self.output_dir)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open for the life of the lock
        if not _flock(handle, self.wait):
            handle.close()
            raise _busy_error(self.output_dir, _holder(path))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
