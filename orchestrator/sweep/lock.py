"""One driver per sweep name and work folder: an ``fcntl.flock`` on ``<workdir>/locks/<sweep>.lock``.

The kernel drops a flock when its holder exits, however it exits (a crash, SIGKILL, a power cut of the node
for a local file system), so a dead driver never leaves the name stuck; the file itself stays and is reused.
The holder writes its pid into the file for the refusal's message only: the lock is the flock, never the
file's content. (flock on NFS is emulated with POSIX locks by Linux; the work folder is the driver's.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from alore.errors import AloreError

from alorectl.security import inside, make_private

LOCKS = "locks"


class SweepRunning(AloreError):
    """Another driver holds the sweep's lock."""


def path(workdir: Path, sweep: str) -> Path:
    return inside(workdir / LOCKS, f"{sweep}.lock")


@contextlib.contextmanager
def hold(workdir: Path, sweep: str) -> Iterator[None]:
    """Hold the sweep's lock for the block; refuse at once (no waiting) when another driver holds it."""
    make_private(workdir / LOCKS)
    file = path(workdir, sweep)
    fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SweepRunning(f"sweep {sweep!r} is already running, pid {holder} (in {workdir}); wait for it to "
                               f"end or stop it, then run: alorectl sweep resume {sweep}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
