"""Slot occupancy, makespan and ETA from the recorded start and end of every trial.

occupancy = Σ trial wall time / (slots × span), span = first start → last end (or now, while running).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

#: The sweep config's key while the sweep prepares (data, weights, Ray); ``sweep status`` shows its value.
PREPARING = "preparing"


@dataclasses.dataclass(frozen=True)
class Timing:
    slots: int
    running: int
    ended: int
    left: int                 # planned trials not ended yet (running ones included)
    busy_s: float             # Σ wall time of ended trials
    span_s: float
    occupancy: float | None   # None before any trial ended
    eta_s: float | None       # None when nothing is known yet

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def timing(rows: Sequence[Any], slots: int, planned: int, now: datetime | None = None) -> Timing:
    """``rows``: trial records with ``status``, ``started_at`` and ``finished_at``."""
    now = now or datetime.now(UTC)
    ended = [r for r in rows if r.status != "running" and r.started_at and r.finished_at]
    running = [r for r in rows if r.status == "running" and r.started_at]
    durations = [(r.finished_at - r.started_at).total_seconds() for r in ended]
    starts = [r.started_at for r in (*ended, *running)]
    ends = [r.finished_at for r in ended] + ([now] if running else [])
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    busy = sum(durations) + sum((now - r.started_at).total_seconds() for r in running)
    occupancy = busy / (slots * span) if span > 0 and slots > 0 else None
    left = max(planned - len(ended), 0)
    eta = left * (sum(durations) / len(durations)) / max(slots, 1) if durations else None
    return Timing(slots, len(running), len(ended), left, sum(durations), span, occupancy, eta)
