"""The results database: sweeps, their cells, the cells' trials, and results.

    sweep 1──n cell 1──n trial          (what was run, and how it went)
      │
      └───n result                      (what the leaderboard shows)

* A **sweep** is one ``alorectl sweep`` invocation, identified by its name; a
  resumed sweep is the same row.
* A **cell** is one (backbone, task, method) of a sweep: its search status,
  and once searched, the chosen configuration, seeds and epochs.
* A **trial** is one Ray Tune trial of a cell, keyed by Tune's trial id:
  ``protocol='search'`` (train800 → val200) or ``'final'`` (train800val200 →
  test, one per seed).  A retried trial is the same row.
* A **result** is a cell's final score: test accuracy mean/std over seeds,
  with everything needed to reproduce it (config, seeds, epochs, MLflow run).

Units: accuracies are percentages in [0, 100], as in the paper's tables;
``trainable_params`` is a plain count (the leaderboard shows millions).
Timestamps are UTC.

Every row is keyed by a unique constraint over its natural key, which is what
the upserts in :mod:`db.writes` conflict on.  Schema changes go through a new
Alembic revision in ``db/migrations/versions``; ``tests/db`` fails when these
models and the migrations disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names: Alembic can only alter or drop what it can
# name, and SQLite batch migrations need names to recreate tables.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SWEEP_STATUSES = ("pending", "running", "done", "failed", "interrupted")
CELL_STATUSES = ("pending", "running", "done", "failed")
TRIAL_STATUSES = ("pending", "running", "done", "pruned", "failed")
TRIAL_PROTOCOLS = ("search", "final")


def utcnow() -> datetime:
    """Now, in UTC (SQLite stores datetimes without a zone, so always write UTC)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive values (SQLite hands those back) are UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # none_as_null: Python None is SQL NULL, not the JSON text 'null'.
    type_annotation_map = {
        dict[str, Any]: JSON(none_as_null=True),
        list[int]: JSON(none_as_null=True),
        datetime: DateTime(timezone=True),
    }


class _Timestamps:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Sweep(_Timestamps, Base):
    __tablename__ = "sweep"
    __table_args__ = (CheckConstraint(_in("status", SWEEP_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    preset: Mapped[str | None] = mapped_column(String(500))
    suite: Mapped[str | None] = mapped_column(String(50))
    # The resolved plan (preset + CLI flags), credentials masked.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    # A sweep of ``alorectl bench scale``: real machinery, simulated trial bodies. Its results never reach the
    # leaderboard of real results, an export, or the MLflow leaderboard of real results.
    simulated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    cells: Mapped[list[Cell]] = relationship(back_populates="sweep", passive_deletes=True)
    results: Mapped[list[Result]] = relationship(back_populates="sweep", passive_deletes=True)


class Cell(_Timestamps, Base):
    __tablename__ = "cell"
    __table_args__ = (
        UniqueConstraint("sweep_id", "backbone", "task", "method"),
        CheckConstraint(_in("status", CELL_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"))
    backbone: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    # Filled when the search ends: the configuration the final runs use.
    best_config: Mapped[dict[str, Any] | None]
    best_val_acc: Mapped[float | None] = mapped_column(Float)
    seeds: Mapped[list[int] | None]
    epochs: Mapped[int | None]

    sweep: Mapped[Sweep] = relationship(back_populates="cells")
    trials: Mapped[list[Trial]] = relationship(back_populates="cell", passive_deletes=True)


class Trial(Base):
    __tablename__ = "trial"
    __table_args__ = (
        UniqueConstraint("cell_id", "trial_key"),
        CheckConstraint(_in("protocol", TRIAL_PROTOCOLS), name="protocol"),
        CheckConstraint(_in("status", TRIAL_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cell.id", ondelete="CASCADE"))
    trial_key: Mapped[str] = mapped_column(String(200))  # Tune's trial id
    protocol: Mapped[str] = mapped_column(String(10))
    seed: Mapped[int | None]
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="running")
    val_acc: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    epochs_done: Mapped[int] = mapped_column(default=0)
    node_id: Mapped[str | None] = mapped_column(String(200))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    cell: Mapped[Cell] = relationship(back_populates="trials")


class Result(_Timestamps, Base):
    __tablename__ = "result"
    __table_args__ = (
        UniqueConstraint("backbone", "task", "method", "sweep_id"),
        # The leaderboard reads one backbone (and suite) at a time.
        Index(None, "backbone", "suite"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    backbone: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(100))
    suite: Mapped[str] = mapped_column(String(50))
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"), index=True)
    test_acc_mean: Mapped[float] = mapped_column(Float)
    test_acc_std: Mapped[float | None] = mapped_column(Float)
    n_seeds: Mapped[int]
    val_acc: Mapped[float | None] = mapped_column(Float)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)  # ViT-H: 6e8
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    epochs: Mapped[int | None]
    seeds: Mapped[list[int]] = mapped_column(default=list)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    artifact_uri: Mapped[str | None] = mapped_column(Text)

    sweep: Mapped[Sweep] = relationship(back_populates="results")
