"""API keys, who created each job/dataset/model/upload, read-only sharing, and the audit log.

Rows that exist before this revision have no creator (`created_by` NULL): only admins see
them once keys are required, which is the safe reading of "nobody knows whose this is".

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

OWNED = ("jobs", "datasets", "model_versions")
SHAREABLE = ("datasets", "model_versions")


def upgrade() -> None:
    op.create_table(
        'api_keys',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('prefix', sa.String(length=16), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
        sa.UniqueConstraint('secret_sha256', name=op.f('uq_api_keys_secret_sha256')),
    )
    op.create_table(
        'audit_events',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('key_id', sa.String(length=32), nullable=True),
        sa.Column('action', sa.String(length=100), nullable=False),
        sa.Column('object_type', sa.String(length=32), nullable=True),
        sa.Column('object_id', sa.String(length=64), nullable=True),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    )
    op.create_table(
        'uploads',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('created_by', sa.String(length=32), nullable=True),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('n_entries', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_uploads')),
    )
    op.create_index(op.f('ix_uploads_created_by'), 'uploads', ['created_by'])
    op.create_index(op.f('ix_audit_events_at'), 'audit_events', ['at'])
    op.create_index(op.f('ix_audit_events_key_id'), 'audit_events', ['key_id'])
    # Plain ADD COLUMN (SQLite has it): a batch (copy-and-move) on SQLite would drop the
    # expression indexes of migration 0003, which it cannot reflect.
    for table in OWNED:
        op.add_column(table, sa.Column('created_by', sa.String(length=32), nullable=True))
        op.create_index(op.f(f'ix_{table}_created_by'), table, ['created_by'], unique=False)
    for table in SHAREABLE:
        op.add_column(table, sa.Column('shared', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for table in SHAREABLE:
        op.drop_column(table, 'shared')
    for table in OWNED:
        op.drop_index(op.f(f'ix_{table}_created_by'), table_name=table)
        op.drop_column(table, 'created_by')
    op.drop_index(op.f('ix_audit_events_key_id'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_at'), table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_index(op.f('ix_uploads_created_by'), table_name='uploads')
    op.drop_table('uploads')
    op.drop_table('api_keys')
