"""users: email, first_name, last_name between no-context and context-based deterministic encryption.

Upgrade decrypts each value with the old key (``VAULT_OLD_KEY``, no context) and re-encrypts it
with the new derived + convergent key (``VAULT_NEW_KEY``) and the context ``users.<column>``,
at the new key's version pinned for the run. HMAC companions (email_hmac) are verified against each decrypted value
and left unchanged: they are computed from the plaintext, which does not change.

Why a re-run is safe: every value is classified before it is written. A value already in the
new scheme is recognised (the old key cannot decrypt it, the new key with its context can) and
counted as already migrated, never encrypted twice; NULL stays NULL; anything unreadable is an
error for its row, never passed through. Batches commit with a checkpoint, so an interrupted run
resumes where it stopped.

Downgrade restores no-context ciphertext under the old key: it decrypts with the new key and
context and re-encrypts with the old key. It needs the old key to still exist in Vault.

The snapshot below is frozen: it names the columns as they were when this revision was written.
Do not import the application's table definitions here.
"""

from __future__ import annotations

import sqlalchemy as sa

from app_models.migration import run_revision
from app_models.specs import ColumnSpec, Direction, TableSpec

revision = "0001_users"
down_revision = None
branch_labels = None
depends_on = None

SNAPSHOT = TableSpec(
    table=sa.table(
        "users",
        sa.column("id", sa.Uuid),
        sa.column("email", sa.Text),
        sa.column("email_hmac", sa.Text),
        sa.column("first_name", sa.Text),
        sa.column("last_name", sa.Text),
    ),
    columns=(
        ColumnSpec("email", hmac="email_hmac"),
        ColumnSpec("first_name"),
        ColumnSpec("last_name"),
    ),
)


def upgrade() -> None:
    run_revision(SNAPSHOT, revision, Direction.UPGRADE)


def downgrade() -> None:
    run_revision(SNAPSHOT, revision, Direction.DOWNGRADE)
