"""Initial schema: sweep, cell, trial, result.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "sweep",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("preset", sa.String(length=500), nullable=True),
        sa.Column("suite", sa.String(length=50), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'failed', 'interrupted')", name=op.f("ck_sweep_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep")),
        sa.UniqueConstraint("name", name=op.f("uq_sweep_name")),
    )
    op.create_table(
        "cell",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("backbone", sa.String(length=100), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("method", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("best_config", sa.JSON(), nullable=True),
        sa.Column("best_val_acc", sa.Float(), nullable=True),
        sa.Column("seeds", sa.JSON(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=True),
        *_timestamps(),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name=op.f("ck_cell_status")),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweep.id"], name=op.f("fk_cell_sweep_id_sweep"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cell")),
        sa.UniqueConstraint(
            "sweep_id", "backbone", "task", "method", name=op.f("uq_cell_sweep_id_backbone_task_method")
        ),
    )
    op.create_table(
        "result",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backbone", sa.String(length=100), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("method", sa.String(length=100), nullable=False),
        sa.Column("suite", sa.String(length=50), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("test_acc_mean", sa.Float(), nullable=False),
        sa.Column("test_acc_std", sa.Float(), nullable=True),
        sa.Column("n_seeds", sa.Integer(), nullable=False),
        sa.Column("val_acc", sa.Float(), nullable=True),
        sa.Column("trainable_params", sa.BigInteger(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("artifact_uri", sa.Text(), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweep.id"], name=op.f("fk_result_sweep_id_sweep"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result")),
        sa.UniqueConstraint(
            "backbone", "task", "method", "sweep_id", name=op.f("uq_result_backbone_task_method_sweep_id")
        ),
    )
    op.create_index(op.f("ix_result_backbone_suite"), "result", ["backbone", "suite"])
    op.create_index(op.f("ix_result_sweep_id"), "result", ["sweep_id"])
    op.create_table(
        "trial",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=False),
        sa.Column("trial_key", sa.String(length=200), nullable=False),
        sa.Column("protocol", sa.String(length=10), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("val_acc", sa.Float(), nullable=True),
        sa.Column("test_acc", sa.Float(), nullable=True),
        sa.Column("epochs_done", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=200), nullable=True),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("protocol IN ('search', 'final')", name=op.f("ck_trial_protocol")),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'pruned', 'failed')", name=op.f("ck_trial_status")
        ),
        sa.ForeignKeyConstraint(["cell_id"], ["cell.id"], name=op.f("fk_trial_cell_id_cell"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trial")),
        sa.UniqueConstraint("cell_id", "trial_key", name=op.f("uq_trial_cell_id_trial_key")),
    )


def downgrade() -> None:
    op.drop_table("trial")
    op.drop_index(op.f("ix_result_sweep_id"), table_name="result")
    op.drop_index(op.f("ix_result_backbone_suite"), table_name="result")
    op.drop_table("result")
    op.drop_table("cell")
    op.drop_table("sweep")
