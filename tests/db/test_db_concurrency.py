"""Eight concurrent writers: no lost and no duplicate rows.

Eight processes, each with its own engine, start together on an empty
database: all of them run ``connect()`` (the migration must happen once),
then write overlapping sweep/cell/trial/result rows, every trial twice (a
retry).  Afterwards the tables hold exactly the distinct keys, with the
values every writer agreed on.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from typing import Any

from sqlalchemy import func, select

from alorectl.db import connect
from alorectl.db.models import Cell, Result, Sweep, Trial
from alorectl.db.writes import record_result, record_trial, set_cell_status, upsert_cell, upsert_sweep

WRITERS = 8
CELLS = [("vit_b", task, method) for task in ("cifar", "dtd") for method in ("alore", "lora")]
KEYS_PER_WRITER, STRIDE = 6, 2  # writer w writes trials 2w ... 2w+5: three writers share each key
ALL_KEYS = {w * STRIDE + i for w in range(WRITERS) for i in range(KEYS_PER_WRITER)}


def _val(key: int) -> float:
    return 50.0 + key / 4  # what every writer records for trial `key`


def _writer(url: str, writer: int, barrier: Any, errors: Any) -> None:
    try:
        barrier.wait(timeout=60)
        engine = connect(url)  # all eight migrate the empty database at once
        sweep_id = upsert_sweep(engine, "race", suite="vtab", status="running")
        # Writers walk the cells from different ends, so they collide both ways.
        for backbone, task, method in CELLS if writer % 2 else reversed(CELLS):
            cell_id = upsert_cell(engine, sweep_id, backbone, task, method)
            for i in range(KEYS_PER_WRITER):
                key = writer * STRIDE + i
                record_trial(
                    engine, cell_id, f"trial_{key:03d}", protocol="search", config={"k": key}, node_id=f"w{writer}"
                )
                record_trial(engine, cell_id, f"trial_{key:03d}", protocol="search", status="done", val_acc=_val(key))
            set_cell_status(engine, cell_id, "done", best_val_acc=_val(max(ALL_KEYS)))
            record_result(engine, sweep_id=sweep_id, backbone=backbone, task=task, method=method, suite="vtab",
                          test_acc_mean=60.0, seeds=[0, 1, 2], mlflow_run_id=f"w{writer}")  # fmt: skip
        engine.dispose()
    except BaseException:
        errors.put(f"writer {writer}:\n{traceback.format_exc()}")
        raise  # and exit non-zero: a failing writer fails the test even if its report were lost


def test_eight_concurrent_writers(db_url: str) -> None:
    # Separate processes like separate sweep drivers.  forkserver: children
    # fork from a clean server that imported db/ once (eight cold imports
    # cost seconds on a 2-core CI box) and share no engine with this process.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["alorectl.db"])
    barrier, errors = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, w, barrier, errors)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    failures = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    engine = connect(db_url)
    with engine.connect() as conn:
        count = lambda model: conn.execute(select(func.count()).select_from(model)).scalar_one()  # noqa: E731
        assert count(Sweep) == 1
        assert count(Cell) == len(CELLS)
        assert count(Trial) == len(CELLS) * len(ALL_KEYS)  # nothing lost
        assert count(Result) == len(CELLS)
        trials = conn.execute(select(Trial.trial_key, Trial.status, Trial.val_acc, Trial.config)).all()
        cells = conn.execute(select(Cell.status)).scalars().all()
    engine.dispose()
    # (The unique constraints make duplicates impossible; the counts above show nothing was lost.)
    for t in trials:
        key = int(t.trial_key.removeprefix("trial_"))
        assert (t.status, t.val_acc, t.config) == ("done", _val(key), {"k": key})
    assert set(cells) == {"done"}
