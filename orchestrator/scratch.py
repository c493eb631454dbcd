"""Scratch folders in the system's temporary directory, and the removal of those a killed process left.

A trial (real or simulated) and the driver's search pictures each work in a temporary folder, removed when the
work ends. A SIGKILL — a driver or a node killed, a scheduler's time limit — ends the process before that
cleanup runs, and over a sweep of thousands of trials a node's ``/tmp`` fills up with them. So the process that
makes a folder holds a lock on a file in it (``flock``) for as long as it uses the folder; the kernel releases
the lock when the process ends, however it ends. The next folder of the same kind removes the folders whose lock
it can take. No process id or host name is trusted: a lock is held or it is not, also across containers that
share ``/tmp``. A folder appears under its final name with its lock already held (it is renamed into place), so
one being made is never taken for an orphan. Folders without a lock file, of other users, and symbolic links are
left alone; removing orphans never fails the work that asked for a folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK = ".alore-lock"
WORK = "work"
_HELD: dict[Path, int] = {}  # folders made by make() -> their lock's file descriptor, until remove()


def _new(kind: str) -> tuple[Path, int]:
    """The work folder (``WORK`` inside the locked one, so that the lock never travels with the work, e.g.
    into MLflow's artifacts) and the lock's file descriptor."""
    remove_orphans(kind)
    making = Path(tempfile.mkdtemp(prefix=f"alore-making-{kind}-"))
    fd = os.open(making / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (making / WORK).mkdir(mode=0o700)
    path = making.with_name(f"alore-{kind}-" + making.name.removeprefix(f"alore-making-{kind}-"))
    os.rename(making, path)
    return path / WORK, fd


@contextlib.contextmanager
def folder(kind: str) -> Iterator[str]:
    """A temporary folder for ``kind`` of work, removed when the block ends (as
    :class:`tempfile.TemporaryDirectory`); the ``kind`` folders of processes that have ended are removed first."""
    path = make(kind)
    try:
        yield str(path)
    finally:
        remove(path)


def make(kind: str) -> Path:
    """A temporary folder for ``kind`` of work that the caller removes with :func:`remove`."""
    path, fd = _new(kind)
    _HELD[path] = fd
    return path


def remove(path: Path) -> None:
    """Remove a folder made by :func:`make`, and release its lock."""
    fd = _HELD.pop(Path(path), None)
    if fd is None:  # not made here: only the folder itself
        shutil.rmtree(path, ignore_errors=True)
        return
    shutil.rmtree(Path(path).parent, ignore_errors=True)
    os.close(fd)


def remove_orphans(kind: str) -> list[Path]:
    """Remove the ``kind`` folders whose maker has ended (their lock is free); the folders removed."""
    removed = []
    try:
        found = list(Path(tempfile.gettempdir()).glob(f"alore-{kind}-*"))
    except OSError:
        return removed
    for path in found:
        with contextlib.suppress(Exception):  # anything odd about one entry leaves it alone
            if _orphan_removed(path):
                removed.append(path)
    return removed


def _orphan_removed(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir() or path.lstat().st_uid != os.getuid():
        return False
    fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its maker is still working in it
        shutil.rmtree(path)
        return True
    finally:
        os.close(fd)
