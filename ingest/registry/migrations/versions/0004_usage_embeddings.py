"""Embedding tokens in the usage rows, and the key that uploaded each document (whose
ingestion embeddings are billed to it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "usage",
        sa.Column("embedding_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )
    # documents uploaded before this revision have no uploader: their embeddings bill no one
    op.add_column("documents", sa.Column("key_id", sa.String(32), nullable=True))
    op.add_column("documents", sa.Column("key_name", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("key_name")
        batch.drop_column("key_id")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("embedding_tokens")
