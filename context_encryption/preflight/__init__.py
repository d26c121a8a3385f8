"""Preflight: everything a run needs, checked before the first row is touched.

One module per concern; :mod:`.run` gives their order. A migration's preflight
(:func:`run_preflight`, :func:`collect_preflight`) checks, in this order, and collects every
failure into one :class:`~context_encryption.errors.PreflightError` whose message says what is
wrong and how to fix it, naming options the way the operator typed them (``-x db=...`` for
``alembic``, ``--db=...`` for ``context-encryption``):

1. :mod:`.database`: the database answers ``SELECT 1`` (its URL is shown with the password
   hidden);
2. :mod:`.vault`: Vault answers ``sys/health`` (one request, no retries) and is unsealed;
3. the token is valid (``auth/token/lookup-self``) and has at least ``min_token_ttl`` seconds
   left, or is renewable (the report says which), and has no use limit;
4. ``sys/capabilities-self`` grants what the direction needs (upgrade: decrypt with the old key,
   encrypt and decrypt with the new key, read both keys; downgrade: the reverse). On a missing
   capability the message carries the HCL policy the token needs, with the real names;
5. :mod:`.keys`: the old key exists, is not derived and can decrypt (and encrypt, for a
   downgrade: otherwise it must be restored from its backup); the new key exists with
   ``derived=true`` and ``convergent_encryption=true`` (otherwise the exact ``vault write``
   command that creates it);
6. (PostgreSQL, :mod:`.database`) every table in scope shows all its rows to the current role
   (:mod:`context_encryption.row_security`). Such a table is left out of the data checks (7, 9),
   which could not see all of it either;
7. :mod:`.versions`: the ciphertext versions found in the tables in scope are ones the source
   key still decrypts (``min_decryption_version`` .. ``latest_version``); versions outside that
   range are trial-decrypted (a small sample) with the target scheme, so values a previous run
   already migrated do not count; a table in scope that does not exist is reported here;
8. :mod:`.hmac_secret`: the HMAC secret is set when a column in scope has a companion;
9. and it matches a sample of the companions already stored.

The rewrap's preflight is :func:`context_encryption.preflight.rewrap.rewrap_preflight` (imported
from there: it needs :mod:`context_encryption.rewrap`, which imports this package).

Nothing here reads or logs a value or a secret: only ciphertext *prefixes* are looked at, sampled
plaintexts are compared and dropped, and rows are counted or named by primary key, never shown.
Tables and columns come from the revisions' snapshots
(:func:`context_encryption.catalog.load_catalog`).
"""

from context_encryption.preflight.database import Bind, check_database, check_row_security
from context_encryption.preflight.keys import check_keys, check_new_key
from context_encryption.preflight.report import (
    DEFAULT_MIN_TOKEN_TTL,
    Check,
    DirectionName,
    PreflightReport,
)
from context_encryption.preflight.run import collect_preflight, require_database, run_preflight
from context_encryption.preflight.vault import (
    TOKEN_SELF_PATHS,
    check_capabilities,
    check_token,
    check_vault,
    policy_hcl,
    required_capabilities,
    rewrap_capabilities,
)
from context_encryption.preflight.versions import scan_table_versions, scan_versions

__all__ = [
    "DEFAULT_MIN_TOKEN_TTL",
    "TOKEN_SELF_PATHS",
    "Bind",
    "Check",
    "DirectionName",
    "PreflightReport",
    "check_capabilities",
    "check_database",
    "check_keys",
    "check_new_key",
    "check_row_security",
    "check_token",
    "check_vault",
    "collect_preflight",
    "policy_hcl",
    "require_database",
    "required_capabilities",
    "rewrap_capabilities",
    "run_preflight",
    "scan_table_versions",
    "scan_versions",
]
