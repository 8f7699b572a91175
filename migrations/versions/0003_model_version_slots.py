"""Model versions: unique version per (kind, label) slot, at most one promoted per slot.

Rows written before this revision may break both rules (two jobs finishing at once could get
the same version and both be promoted): versions are renumbered per slot in creation order
and only the newest promoted row of a slot stays promoted, before the indexes are created.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:00:00
"""
from collections import defaultdict

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# label is NULL for classifiers; NULLs never collide in a unique index, so index coalesce(label, -1).
SLOT = [sa.text("kind"), sa.text("coalesce(label, -1)")]


def _repair(conn) -> None:  # noqa: ANN001
    rows = conn.execute(sa.text(
        "SELECT id, kind, label, version, promoted FROM model_versions ORDER BY created_at, id")).all()
    by_slot = defaultdict(list)
    for row in rows:
        by_slot[(row.kind, row.label)].append(row)
    for slot_rows in by_slot.values():
        versions = [r.version for r in slot_rows]
        if len(set(versions)) != len(versions):
            for number, row in enumerate(slot_rows, start=1):
                conn.execute(sa.text("UPDATE model_versions SET version = :v WHERE id = :id"),
                             {"v": number, "id": row.id})
        promoted = [r for r in slot_rows if r.promoted]
        for row in promoted[:-1]:
            conn.execute(sa.text("UPDATE model_versions SET promoted = :f WHERE id = :id"),
                         {"f": False, "id": row.id})


def upgrade() -> None:
    _repair(op.get_bind())
    op.create_index('uq_model_versions_slot_version', 'model_versions', [*SLOT, sa.text("version")], unique=True)
    op.create_index('uq_model_versions_slot_promoted', 'model_versions', SLOT, unique=True,
                    postgresql_where=sa.text("promoted"), sqlite_where=sa.text("promoted"))


def downgrade() -> None:
    op.drop_index('uq_model_versions_slot_promoted', table_name='model_versions')
    op.drop_index('uq_model_versions_slot_version', table_name='model_versions')
