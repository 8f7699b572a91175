"""Rows store storage keys (relative to the storage root), not absolute paths.

Before this revision datasets, model versions, artifacts and checkpoints held absolute paths
into the storage folder, so moving the folder (or a second machine) broke every row. A key is
the part of the old path from the storage layout's first folder on ("datasets/<id>",
"models/<id>.pt", "artifacts/<job>/<id>", "jobs/<job>/checkpoints/<file>"): that is found
in the path itself, so it works even if the folder was moved before upgrading.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 06:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

TABLES = ("datasets", "model_versions", "artifacts", "checkpoints")
LAYOUT = ("datasets", "models", "artifacts", "jobs", "uploads")


def path_to_key(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 2, -1, -1):  # the last layout folder in the path
        if parts[i] in LAYOUT:
            return "/".join(parts[i:])
    return path.lstrip("/")


def upgrade() -> None:
    conn = op.get_bind()
    for table in TABLES:
        # Plain RENAME COLUMN (SQLite >= 3.25, Postgres): a batch copy of the table would drop
        # 0003's expression indexes, which SQLite cannot reflect.
        op.execute(f'ALTER TABLE {table} RENAME COLUMN path TO "key"')
        for row_id, path in conn.execute(sa.text(f'SELECT id, "key" FROM {table}')).all():
            key = path_to_key(path)
            if key != path:
                conn.execute(sa.text(f'UPDATE {table} SET "key" = :k WHERE id = :id'), {"k": key, "id": row_id})


def downgrade() -> None:
    # Keys become paths under the configured storage folder again.
    from app.settings import Settings

    root = str(Settings().resolved_storage_dir)
    conn = op.get_bind()
    for table in TABLES:
        for row_id, key in conn.execute(sa.text(f'SELECT id, "key" FROM {table}')).all():
            conn.execute(sa.text(f'UPDATE {table} SET "key" = :p WHERE id = :id'), {"p": f"{root}/{key}", "id": row_id})
        op.execute(f'ALTER TABLE {table} RENAME COLUMN "key" TO path')
