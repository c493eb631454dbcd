"""Finding results: which row ``alorectl export`` (and ``analyze``) reads, what the leaderboard can show.

The rule for "which result" is the leaderboard's (:mod:`db.leaderboard`):
the **newest** row of a (backbone, task, method), across sweeps unless one
sweep is named.  ``method="best"`` picks among the methods' newest rows by
**val accuracy only**: every number on the test split was measured after
model selection, and choosing by it would be selecting on the test set.

An unknown combination raises :class:`UnknownResultError`, whose one line
names the combinations that do have a result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from alorectl.db.errors import SweepNotFoundError, UnknownResultError
from alorectl.db.models import Result, Sweep
from alorectl.db.session import Bind, read_scope

#: The ``method`` that asks for the method with the best val accuracy.
BEST = "best"


def find_result(engine: Bind, backbone: str, task: str, method: str, sweep: str | None = None, *,
                simulated: bool = False) -> Result:
    """The newest :class:`Result` of (backbone, task, method), detached (unless ``engine`` is a Session).

    ``method="best"``: of each method's newest row, the one with the highest
    val accuracy (ties: the newer row); rows without a val accuracy cannot
    be chosen.  ``sweep``: only that sweep's rows (:class:`SweepNotFoundError`
    for an unknown name).  Raises :class:`UnknownResultError` naming the valid
    backbone/task/method combinations when nothing matches.  Results of simulated sweeps (``alorectl bench
    scale``) are found only with ``simulated=True``, and then only those.
    """
    query = _kind(select(Result).where(Result.backbone == backbone, Result.task == task), simulated)
    if method != BEST:
        query = query.where(Result.method == method)
    if sweep is not None:
        query = query.where(Sweep.name == sweep)
    query = query.order_by(Result.updated_at.desc(), Result.id.desc())
    with _session(engine) as session:
        if sweep is not None and session.scalar(select(Sweep.id).where(Sweep.name == sweep)) is None:
            raise SweepNotFoundError(sweep, session.scalars(select(Sweep.name)))
        rows = list(session.scalars(query))
        if not rows:
            raise UnknownResultError(f"{backbone}/{task}/{method}", _combinations(session, sweep, simulated))
        if method == BEST:
            newest: dict[str, Result] = {}
            for row in rows:  # newest first
                newest.setdefault(row.method, row)
            rated = [r for r in newest.values() if r.val_acc is not None]
            if not rated:
                raise UnknownResultError(
                    f"{backbone}/{task}/{method}", [f"{backbone}/{task}/{m}" for m in newest],
                    reason=f"no result of {backbone}/{task} has a val accuracy to choose the best method by; "
                           "name the method",
                )
            # max() keeps the first of equals, and the rows are newest first.
            chosen = max(rated, key=lambda r: r.val_acc)  # type: ignore[arg-type, return-value]
        else:
            chosen = rows[0]
        if session is not engine:  # ours: hand the row out detached; a caller's Session keeps its own
            session.expunge(chosen)
    return chosen


def simulated_only(engine: Bind, backbone: str, task: str, method: str) -> str | None:
    """The name of a simulated sweep holding a result of (backbone, task, method) when no real sweep does:
    what an export is told when it asks for a result that only a simulation produced."""
    try:
        find_result(engine, backbone, task, method)
        return None
    except UnknownResultError:
        pass
    try:
        row = find_result(engine, backbone, task, method, simulated=True)
    except UnknownResultError:
        return None
    with read_scope(engine) as conn:
        return conn.execute(select(Sweep.name).where(Sweep.id == row.sweep_id)).scalar_one()


def result_backbones(engine: Bind, suite: str | None = None, *, simulated: bool = False) -> list[str]:
    """The backbones with at least one result (in ``suite``), sorted."""
    query = _kind(select(Result.backbone).distinct(), simulated)
    if suite is not None:
        query = query.where(Result.suite == suite)
    with read_scope(engine) as conn:
        return sorted(conn.execute(query).scalars())


def result_tasks(engine: Bind, backbone: str, suite: str | None = None, *, simulated: bool = False) -> list[str]:
    """The tasks ``backbone`` has a result for (in ``suite``), sorted."""
    query = _kind(select(Result.task).distinct().where(Result.backbone == backbone), simulated)
    if suite is not None:
        query = query.where(Result.suite == suite)
    with read_scope(engine) as conn:
        return sorted(conn.execute(query).scalars())


def result_suites(engine: Bind, backbone: str, *, simulated: bool = False) -> list[str]:
    """The suites ``backbone`` has a result in, sorted."""
    query = _kind(select(Result.suite).distinct().where(Result.backbone == backbone), simulated)
    with read_scope(engine) as conn:
        return sorted(conn.execute(query).scalars())


def _kind(query: Select, simulated: bool) -> Select:
    """Only the results of real sweeps, or (``simulated``) only those of simulated ones: never both."""
    return query.join(Sweep, Sweep.id == Result.sweep_id).where(Sweep.simulated.is_(simulated))


def _combinations(session: Session, sweep: str | None, simulated: bool = False) -> list[str]:
    query = _kind(select(Result.backbone, Result.task, Result.method).distinct(), simulated)
    if sweep is not None:
        query = query.where(Sweep.name == sweep)
    return [f"{b}/{t}/{m}" for b, t, m in session.execute(query)]


@contextmanager
def _session(bind: Bind) -> Iterator[Session]:
    """An ORM session for reading: the caller's own Session, or one on a read-only connection."""
    if isinstance(bind, Session):
        yield bind
        return
    with read_scope(bind) as conn, Session(bind=conn) as session:
        yield session
