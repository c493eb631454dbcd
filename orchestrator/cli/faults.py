"""Faults of the machine, not of the code, as one line each: a full disk, a read-only or corrupt database file,
an allocation that cannot be made, Ctrl-C. A traceback of hundreds of lines tells a user nothing they can act
on; the line names the problem, where it is, and the fix.

:func:`describe` recognises such a fault (or returns None: anything else is a bug and keeps its traceback);
:func:`resume_hint` adds "then run: alorectl sweep resume NAME" to the faults that stop a sweep's driver.
"""

from __future__ import annotations

import contextlib
import errno
import traceback
from collections.abc import Iterator

from alore.errors import AloreError

#: Exit code for an interrupted command (128 + SIGINT, as shells report it).
INTERRUPTED = 130


class Fault(AloreError):
    """A fault of the machine or its files that the user can fix; ``str(err)`` is the one line."""


class Interrupted(Exception):
    """Ctrl-C (or SIGINT) stopped the command; ``str(err)`` says how to continue."""


_SQLITE = {  # what SQLite says -> the problem, in words
    "database or disk is full": "disk full",
    "disk is full": "disk full",
    "readonly database": "read-only",
    "read-only": "read-only",
    "file is not a database": "corrupt",
    "database disk image is malformed": "corrupt",
    "unable to open database file": "cannot open",
}


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _store(err: BaseException) -> str:
    """Which database: MLflow's store when MLflow's code raised it, else the leaderboard."""
    frames = traceback.extract_tb(err.__traceback__)
    return "the MLflow store" if any("/mlflow/" in f.filename for f in frames) else "the leaderboard database"


def describe(err: BaseException) -> str | None:
    """One line for a fault of the machine or its files, or None."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" at {e.filename}" if e.filename else ""
            return f"disk full{where}; free space"
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            return f"{e.filename or 'a file'} is on a read-only file system; use a writable --workdir"
        if isinstance(e, MemoryError):
            return ("out of memory: the request needs more memory than this machine can allocate (e.g. a "
                    "--option rank or a batch size too large); lower it")
        text = " ".join(str(e).split()).lower()
        if type(e).__name__ == "OutOfMemoryError" or ("alloc" in text and any(
                p in text for p in ("not enough memory", "can't allocate memory", "cannot allocate memory"))):
            return ("out of memory: the request needs more memory than this machine can allocate (e.g. a "
                    "--option rank or a batch size too large); lower it")
        if type(e).__module__.split(".")[0] in ("sqlite3", "sqlalchemy", "mlflow", "alembic"):
            for phrase, problem in _SQLITE.items():
                if phrase in text:
                    return _database(problem, _store(err))
    return None


def _database(problem: str, store: str) -> str:
    if problem == "disk full":
        return f"disk full while writing {store}; free space"
    if problem == "read-only":
        return f"{store} is read-only; make its file (and its folder) writable by you"
    if problem == "corrupt":
        return (f"{store} is corrupt (not a readable SQLite database); move the file aside (or restore a "
                "backup), or point --db / --tracking-uri elsewhere")
    return f"cannot open {store}; check that its folder exists and is writable"


@contextlib.contextmanager
def resume_hint(name: str) -> Iterator[None]:
    """Around a sweep's driver: Ctrl-C and the machine's faults end with how to resume the sweep."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the trials that finished are recorded: alorectl sweep resume {name}") \
            from None
    except AloreError:
        raise
    except Exception as err:
        line = describe(err)
        if line is None:
            raise
        raise Fault(f"{line}, then run: alorectl sweep resume {name}") from None
