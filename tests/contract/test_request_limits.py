"""Requests that fit real servers: a batch split into several Transit requests, item by item.

OpenBao refuses a body with more than ``max_request_json_strings`` JSON strings (1,000 by
default); the tool splits a batch's items into requests of at most ``-x vault-batch-items``
and halves a request the server still refuses. These tests check that every item comes back
to its own row (order kept across requests sent in parallel), in both directions and in verify,
and that a refusal is never a failed row nor a retry of the same request.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import hvac
import pytest

from context_encryption.transit import (
    DecryptRequest,
    EncryptRequest,
    RequestLimits,
    TransitClient,
    split_ranges,
)
from tests.support.migration_fixtures import Migration, assert_all_in, seed_tables
from tests.support.seeding import b64
from tests.support.tools import subprocess_verify
from tests.support.vault_fixtures import TIGHT_JSON_STRINGS

#: The tight listener's limit: 23 items of 5 strings (plus 2) fit, 24 do not.
TIGHT_ITEMS = (TIGHT_JSON_STRINGS - 2) // 5


# -- splitting, no server ---------------------------------------------------------------------


def test_split_ranges_cut_at_the_item_limit_and_cover_every_item_once() -> None:
    ranges = list(split_ranges([10] * 23, max_items=7))
    assert ranges == [(0, 7), (7, 14), (14, 21), (21, 23)]


def test_split_ranges_cut_at_the_byte_limit_and_never_leave_a_range_empty() -> None:
    # each item costs its length + 64 bytes of JSON; a single oversized item is a range alone
    assert list(split_ranges([100, 100, 100], max_items=10, max_bytes=200)) == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    assert list(split_ranges([10_000], max_items=10, max_bytes=200)) == [(0, 1)]
    assert list(split_ranges([], max_items=10)) == []


def test_request_limits_only_ever_shrink() -> None:
    limits = RequestLimits(150)
    assert limits.refused(150, "too complex") == 75
    assert limits.refused(150, "too complex") == 75  # a request sent before the first refusal
    assert limits.refused(75, "too complex") == 37
    assert limits.refused(2, "too complex") == 1
    assert limits.refused(1, "too complex") == 1
    assert limits.configured == 150
    with pytest.raises(ValueError, match="max_items"):
        RequestLimits(0)


# -- the Transit client against a real server -------------------------------------------------


def _items(n: int) -> list[tuple[str, str]]:
    """``n`` distinct plaintexts over three contexts."""
    return [(f"value {i} ({'é' * (i % 4)})", f"users.col{i % 3}") for i in range(n)]


def _client(addr: str, token: str, mount: str, limits: RequestLimits, parallel: int) -> Any:
    return TransitClient(
        hvac.Client(url=addr, token=token), mount, limits=limits, parallel=parallel
    )


def _one_by_one(client: Any, mount: str, key: str, items: list[tuple[str, str]]) -> list[str]:
    """Each item encrypted alone, through raw hvac: the reference for the convergent key."""
    return [
        client.secrets.transit.encrypt_data(
            name=key, plaintext=b64(text), context=b64(ctx), mount_point=mount
        )["data"]["ciphertext"]
        for text, ctx in items
    ]


def test_split_requests_in_parallel_keep_every_result_with_its_item(
    vault_server: Any, vault_client: Any, transit_mount: str
) -> None:
    key = "conv"
    vault_client.secrets.transit.create_key(
        name=key, derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    items = _items(61)
    transit = _client(vault_server.addr, vault_server.token, transit_mount, RequestLimits(4), 5)
    try:
        encrypted = transit.encrypt_batch(
            key, [EncryptRequest(b64(t), c) for t, c in items], key_version=1
        )
        assert transit.requests == 16  # 61 items, 4 a request
        # convergent: the same plaintext and context always give the same ciphertext, so a
        # result put back in the wrong place differs from the item's own single encryption
        reference = _one_by_one(vault_client, transit_mount, key, items)
        assert [r.value for r in encrypted] == reference

        decrypted = transit.decrypt_batch(
            key, [DecryptRequest(ct, c) for ct, (_t, c) in zip(reference, items, strict=True)]
        )
        assert [base64.b64decode(r.value or "").decode() for r in decrypted] == [
            t for t, _c in items
        ]
    finally:
        transit.close()


def test_failed_items_of_a_split_batch_stay_with_their_own_items(
    vault_server: Any, vault_client: Any, transit_mount: str
) -> None:
    key = "plain"
    vault_client.secrets.transit.create_key(name=key, mount_point=transit_mount)
    good = vault_client.secrets.transit.encrypt_data(
        name=key, plaintext=b64("good"), mount_point=transit_mount
    )["data"]["ciphertext"]
    damaged = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    values = [good if i % 5 else damaged for i in range(23)]
    transit = _client(vault_server.addr, vault_server.token, transit_mount, RequestLimits(3), 4)
    try:
        results = transit.decrypt_batch(key, [DecryptRequest(v, None) for v in values])
    finally:
        transit.close()
    assert [r.ok for r in results] == [bool(i % 5) for i in range(23)]
    assert all(base64.b64decode(r.value or "") == b"good" for r in results if r.ok)


def _tight(vault_server: Any) -> str:
    if vault_server.tight_addr is None:
        pytest.skip("the suite's server has no tight listener (VAULT_ADDR points elsewhere)")
    return str(vault_server.tight_addr)


def test_a_refusal_halves_the_request_keeps_the_size_and_warns_once(
    vault_server: Any, vault_client: Any, transit_mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    tight = _tight(vault_server)
    vault_client.secrets.transit.create_key(
        name="conv", derived=True, convergent_encryption=True, mount_point=transit_mount
    )
    limits = RequestLimits(150)
    items = _items(300)
    transit = _client(tight, vault_server.token, transit_mount, limits, 4)
    caplog.set_level(logging.DEBUG, logger="context_encryption")
    try:
        encrypted = transit.encrypt_batch(
            "conv", [EncryptRequest(b64(t), c) for t, c in items], key_version=1
        )
        refusals = limits.refusals
        assert refusals > 0
        assert limits.max_items <= TIGHT_ITEMS
        # the smaller size is kept: a second call is not refused again
        transit.encrypt_batch("conv", [EncryptRequest(b64(t), c) for t, c in items], 1)
        assert limits.refusals == refusals
    finally:
        transit.close()
    assert all(r.ok for r in encrypted), "a refusal must never become a failed item"
    reference = _one_by_one(vault_client, transit_mount, "conv", items)
    assert [r.value for r in encrypted] == reference
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"-x vault-batch-items={limits.max_items}" in message
    assert "refused JSON input due to high complexity" in message


# -- the migration, both directions and verify ----------------------------------------------


def test_split_requests_migrate_every_value_to_its_own_row_both_ways(
    migration: Migration,
) -> None:
    data = seed_tables(migration, {}, default=41)
    x = {"vault_batch_items": 4, "batch_size": 17, "workers": 3}

    report = migration.upgrade("head", **x)
    assert report["outcome"] == "completed"
    assert_all_in(migration, data, "new")
    users = next(t for t in report["tables"] if t["table"] == "users")
    assert users["vault_requests"] >= 41 * 3 * 2 // 4  # really split

    verify = subprocess_verify(migration.env, "--vault-batch-items", "3", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True

    report = migration.downgrade("base", **x)
    assert report["outcome"] == "completed"
    assert_all_in(migration, data, "old")


def test_a_server_tighter_than_the_defaults_still_migrates_everything_both_ways(
    migration: Migration, vault_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every setting at its default, against a listener that refuses 24 items with context."""
    tight = _tight(vault_server)
    data = seed_tables(migration, {"users": 30, "guest_orders": 30})
    caplog.set_level(logging.WARNING, logger="context_encryption")
    report = migration.upgrade("0003_guest_orders", vault_addr=tight)
    assert report["outcome"] == "completed"
    refusals = [r for r in caplog.records if "vault-batch-items=" in r.getMessage()]
    assert len(refusals) == 1, "one warning per run, with the setting that avoids it"
    assert_all_in(migration, data, "new")
    caplog.clear()
    report = migration.downgrade("base", vault_addr=tight)
    assert report["outcome"] == "completed"
    assert_all_in(migration, data, "old")


def test_vaults_500_for_too_many_items_is_halved_never_retried_unchanged(
    migration: Migration, vault_faults: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """HashiCorp Vault 1.20.3+ answers HTTP **500** to a request over its JSON limits.

    The retry policy retries 5xx; this 500 must instead split the request, once each.
    """
    data = seed_tables(migration, {"users": 60})
    vault_faults.set(max_batch_items=40)
    caplog.set_level(logging.INFO, logger="context_encryption")

    report = migration.upgrade("0001_users")

    assert report["outcome"] == "completed"
    assert_all_in(migration, data, "new")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "retry" in m and "HTTP 500" in m], "retried unchanged"
    refusals = [m for m in messages if "vault-batch-items=37" in m]
    assert len(refusals) == 1
    assert "JSON array exceeds allowed element count" in refusals[0]
    stats = vault_faults.stats()
    # 180 values each way: one refused request of 150 per operation (decrypt, encrypt), and
    # nothing after the limit came down to 37
    assert stats["statuses"].get("500") == 2
