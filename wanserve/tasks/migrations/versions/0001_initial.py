"""Initial schema: tasks and worker groups.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wanserve_tasks",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("task_type", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("adjustments", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("progress_step", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("progress_stage", sa.String(16), nullable=True),
        sa.Column("progress_at", sa.Double(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Double(), nullable=True),
        sa.Column("group_id", sa.String(200), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_field", sa.String(64), nullable=True),
        sa.Column("expired_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_wanserve_tasks"),
        sa.UniqueConstraint("id", name="uq_wanserve_tasks_id"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_wanserve_tasks_owner_idempotency_key"),
    )
    op.create_index("ix_wanserve_tasks_status_priority_seq", "wanserve_tasks", ["status", "priority", "seq"])
    op.create_index("ix_wanserve_tasks_owner_seq", "wanserve_tasks", ["owner", "seq"])
    op.create_index("ix_wanserve_tasks_lease_owner", "wanserve_tasks", ["lease_owner"])
    op.create_index("ix_wanserve_tasks_status_finished_at", "wanserve_tasks", ["status", "finished_at"])

    op.create_table(
        "wanserve_worker_groups",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("supervisor", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("supervisor_pid", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pids", sa.JSON(), nullable=False),
        sa.Column("devices", sa.JSON(), nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("current_task_id", sa.String(64), nullable=True),
        sa.Column("model_label", sa.String(300), nullable=True),
        sa.Column("variant", sa.String(64), nullable=True),
        sa.Column("task_types", sa.JSON(), nullable=False),
        sa.Column("tasks_served", sa.Integer(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("heartbeat_at", sa.Double(), nullable=True),
        sa.Column("last_step_at", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_wanserve_worker_groups"),
    )


def downgrade() -> None:
    op.drop_table("wanserve_worker_groups")
    op.drop_table("wanserve_tasks")
