"""One writer per data dir: an exclusive ``flock`` on ``<data>/.funnelflow.lock``.

The holder (pid, host, command, since) is written inside the locked file, so a second process can say
who is in its way. The kernel drops the lock when its holder dies, so a crash never leaves the data dir
locked. The lock is re-entrant within a process: ``funnelflow run`` takes it, and the Prefect flow it
calls (which takes it too, for deployments) goes on under it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".funnelflow.lock"
_POLL_S = 0.2
_held: dict[Path, int] = {}  # lock file -> depth, for this process
_guard = threading.Lock()


class DataDirLocked(RuntimeError):
    """Another process works in the data dir."""


@contextmanager
def data_dir_lock(root: Path, holder: str, wait_s: float = 0) -> Iterator[None]:
    """Hold the data dir's lock for the block; wait up to ``wait_s`` seconds for another holder.

    Raises:
        DataDirLocked: still held by another process after ``wait_s`` (one line naming it).
    """
    path = (Path(root) / LOCK_FILE).resolve()
    with _guard:
        if path in _held:
            _held[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, wait_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": holder,
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
        with _guard:
            _held[path] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DataDirLocked(_in_use(path)) from None
            time.sleep(_POLL_S)


def _in_use(path: Path) -> str:
    """The one line a second holder gets: who holds the data dir, and what to do."""
    try:
        h = json.loads(path.read_text())
        who = f"pid {h['pid']} (`{h['command']}`, host {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is writing its record right now
        who = "another process"
    return f"data dir {path.parent} is in use by {who}: wait for it to finish or pass --wait SECONDS"
