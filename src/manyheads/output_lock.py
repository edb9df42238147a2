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

from .errors import ConfigError

LOCK_FILE = ".manyheads.lock"


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


def check_not_locked(output_dir: str) -> None:
    """Raise `ConfigError` when a live run holds the folder's lock; writes nothing (for checks before a run).

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
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy_error(output_dir, _holder(path)) from None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class OutputLock:
    """Exclusive lock on an output folder (created if needed) while the `with` block runs.

    Raises:
        ConfigError: another live process holds it (one line naming its pid and host).
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self._handle: Any = None

    def acquire(self) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        path = lock_path(self.output_dir)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open for the life of the lock
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise _busy_error(self.output_dir, _holder(path)) from None
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
