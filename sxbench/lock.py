"""One writer per run folder.

``sxbench run``, ``sxbench import`` and ``sxbench prune`` hold ``RUN/.lock`` (an exclusive ``flock``) while they
write. A second writer on a folder in use refuses at once with one line naming the holder (PID, host, start
time) rather than waiting: two runs of one folder are almost always a mistake, and a refusal costs nothing.
The kernel drops the lock when its process dies, however it dies, so a lock left by a killed run is simply
taken by the next one (and that run marks the dead run's row ``killed``: ``Store.close_stale_runs``). Reading
(``sxbench report``, ``export``) needs no lock: SQLite's WAL keeps readers consistent.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; ``RunFolderBusy`` if another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise RunFolderBusy(f"{run_dir} is in use by {_describe(fh.read())}: wait for it to finish, or write "
                                "to another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        fh.flush()
        yield
    finally:
        fh.close()  # closing drops the flock


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"sxbench PID {h['pid']} on {h['host']} since {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "another sxbench process (starting)"


__all__ = ["LOCK_NAME", "RunFolderBusy", "run_lock"]
