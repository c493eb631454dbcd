"""Scratch folders in the system's temporary directory, and the removal of those a killed process left.

A trial (real or simulated) and the driver's search pictures each work in a temporary folder, removed when the
work ends. A SIGKILL — a driver or a node killed, a scheduler's time limit — ends the process before that
cleanup runs, and over a sweep of thousands of trials a node's ``/tmp`` fills up with them. So each folder's
name carries the host and process id of its creator (``alore-trial-4242@node7-k3j2x9``), and the next folder of
the same kind removes those whose creator no longer runs on this host. Folders of other hosts (a ``/tmp``
shared between containers), of other users, of live processes and symbolic links are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def _host() -> str:
    return _UNSAFE.sub("_", socket.gethostname())[:60] or "host"


def _prefix(kind: str, pid: int | None = None) -> str:
    return f"alore-{kind}-{os.getpid() if pid is None else pid}@{_host()}-"


def folder(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder for ``kind`` of work (a context manager, as :class:`tempfile.TemporaryDirectory`),
    after removing the ``kind`` folders that dead processes of this host left behind."""
    remove_orphans(kind)
    return tempfile.TemporaryDirectory(prefix=_prefix(kind))


def make(kind: str) -> Path:
    """A temporary folder for ``kind`` of work that the caller removes (as :func:`tempfile.mkdtemp`)."""
    remove_orphans(kind)
    return Path(tempfile.mkdtemp(prefix=_prefix(kind)))


def remove_orphans(kind: str) -> list[Path]:
    """Remove the ``kind`` folders of this host's processes that have ended; the folders removed."""
    removed = []
    start, host = f"alore-{kind}-", _host()
    for path in Path(tempfile.gettempdir()).glob(f"{start}*@*-*"):
        owner, _, _ = path.name[len(start):].rpartition("-")
        pid, _, on = owner.partition("@")
        if on != host or not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            info = path.lstat()
            if path.is_dir() and not path.is_symlink() and info.st_uid == os.getuid():
                shutil.rmtree(path)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
