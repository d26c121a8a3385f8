"""Vault faults (issue 5, point 3) on a real OpenBao server, injected by a proxy over real HTTP.

* Latency, 429, 500, 503 and dropped connections on 5-10 % of requests (the fault proxy of
  :mod:`tests.support.fault_proxy`, seeded, so the k-th request meets the same fault on every run):
  upgrade head and downgrade base complete with correct data (urllib3's Retry, backoff with
  jitter).
* An outage longer than the retry budget (every request answered 503 by the proxy, or the
  OpenBao server itself stopped mid-run and restarted on the same port) stops the run cleanly:
  a clear message, the revision unstamped, the checkpoint kept, and a re-run after the outage
  resumes there and completes. The proxy holds the run's requests while the outage is switched
  on, so the outage lands mid-table whatever the machine's speed. These runs hand the engine a
  Vault client built exactly as ``TransitClient.from_settings`` builds it, with urllib3's Retry
  from ``build_retry`` but a shorter budget (the default one lasts about 50 s per request).
* ``cipher: message authentication failed`` is a data fault: never retried (the proxy's request
  counters show exactly one source decrypt and one trial decrypt per batch).
* Tokens come from OpenBao itself (child tokens with real TTLs, policies, renewal, revocation):
  a token that expires mid-run is renewed when renewable; otherwise the run stops cleanly,
  resumable, and says the token expired. The proxy's latency makes the run outlast the TTLs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest
from alembic.util import CommandError

from context_encryption.openbao import DevServer, free_port, start_dev_server
from context_encryption.preflight import collect_preflight
from context_encryption.settings import load_settings
from context_encryption.transit import TransitClient
from tests.support.fault_proxy import FaultProxy
from tests.support.migration_fixtures import (
    NEW_KEY,
    OLD_KEY,
    Migration,
    assert_all_in,
    seed_table,
    seed_tables,
)
from tests.support.reliability_helpers import (
    checkpoints,
    committed_batches,
    run_alembic,
    run_inprocess,
    set_values,
    small_retry_factory,
    step_until,
    table_summary,
    watching,
)
from tests.support.seeding import Vault, assert_scheme, read_table, sample_rows, seed

SIZES = {"users": 400, "invitations": 500, "guest_orders": 150}


def seed_all(m: Migration, sizes: dict[str, int] | None = None) -> dict[str, dict[Any, Any]]:
    return seed_tables(m, sizes or SIZES, default=30)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, errors


# --------------------------------------------------------------------------------------------
# random faults on a fraction of requests
# --------------------------------------------------------------------------------------------


#: The fault sequence of this seed is checked below (``expected_faults``): within the requests
#: the upgrade alone must make, it injects at least 10 errors (each of 429, 500 and 503) and 3
#: drops, so the assertions never depend on luck.
RANDOM_SEED = 5
BATCH = 10


def expected_faults(upstream: str, n: int, **cfg: Any) -> dict[str, int]:
    """What the first ``n`` matching requests meet with ``RANDOM_SEED`` and ``cfg``: the
    proxy's own decision routine on an unstarted twin."""
    twin = FaultProxy(upstream, seed=RANDOM_SEED)
    twin.set(**cfg)
    out = {"errors": 0, "drops": 0, "429": 0, "500": 0, "503": 0}
    for _ in range(n):
        action = twin.decide(f"{cfg['paths'][0]}decrypt/k")
        assert action is not None
        if action.drop:
            out["drops"] += 1
        elif action.status is not None:
            out["errors"] += 1
            out[str(action.status)] += 1
    return out


@pytest.mark.slow
def test_random_faults_upgrade_and_downgrade_complete(
    migration: Migration, vault_faults: FaultProxy
) -> None:
    m = migration
    data = seed_all(m)
    cfg: dict[str, Any] = {
        "latency_ms": 1,
        "latency_jitter_ms": 4,
        "error_rate": 0.06,
        "error_statuses": [429, 500, 503],
        "drop_rate": 0.03,
        "paths": [f"{m.vault.mount}/"],
    }
    # every batch of the upgrade sends at least one decrypt and one encrypt request
    floor = 2 * sum(-(-len(rows) // BATCH) for rows in data.values())
    expected = expected_faults(vault_faults.upstream, floor, **cfg)
    assert expected["errors"] >= 10 and expected["drops"] >= 3, expected
    assert all(expected[s] >= 1 for s in ("429", "500", "503")), expected

    vault_faults.reset_stats()
    vault_faults.seed(RANDOM_SEED)
    vault_faults.set(**cfg)
    up = run_alembic(m, "-x", f"batch-size={BATCH}", "upgrade", "head")
    assert up.proc.returncode == 0, up.stderr
    mid = vault_faults.stats()
    down = run_alembic(m, "-x", f"batch-size={BATCH}", "downgrade", "base")
    assert down.proc.returncode == 0, down.stderr
    stats = vault_faults.stats()
    vault_faults.clear()

    assert m.current() is None
    assert_all_in(m, data, "old")
    m.upgrade("head")
    assert_all_in(m, data, "new")

    injected = stats["faults_injected"]
    statuses = stats["statuses"]
    print(
        f"\nVault requests {stats['total_requests']} (upgrade {mid['total_requests']}); "
        f"injected errors {injected['errors']} (statuses {statuses}), drops {injected['drops']}, "
        f"delayed {injected['delayed']}: all survived"
    )
    # the first `floor` matching requests met exactly the expected faults; more came after
    assert mid["requests"]["decrypt"] + mid["requests"]["encrypt"] >= floor, mid
    assert injected["errors"] >= expected["errors"] >= 10
    assert injected["drops"] >= expected["drops"] >= 3
    for s in ("429", "500", "503"):
        assert statuses.get(s, 0) >= expected[s] >= 1, f"no {s} was injected"
    assert "Vault request failed" in up.stderr + down.stderr, "retries were not logged"


# --------------------------------------------------------------------------------------------
# outages longer than the retry budget
# --------------------------------------------------------------------------------------------


def test_outage_longer_than_retry_budget_stops_cleanly_and_resumes(
    migration: Migration, vault_faults: FaultProxy
) -> None:
    m = migration
    data = seed_all(m, {"users": 20, "invitations": 600})
    m.upgrade("0001_users")
    factory = small_retry_factory(total=3)
    mount = f"{m.vault.mount}/"

    vault_faults.hold(mount)
    t, errors = in_thread(
        lambda: run_inprocess(m, "upgrade", "head", factory=factory, batch_size=20, workers=2)
    )
    with watching(m.engine) as watch:
        step_until(
            vault_faults, lambda: committed_batches(watch, "0002_invitations") >= 3, t.is_alive
        )
    # the run is frozen at the proxy mid-table: Vault goes away for longer than the budget
    vault_faults.reset_stats()
    vault_faults.set(next=[{"status": 503, "count": 5000}], paths=[mount])
    vault_faults.release()
    t.join(120)
    assert not t.is_alive()
    outage = vault_faults.stats()
    vault_faults.clear()

    assert len(errors) == 1 and isinstance(errors[0], CommandError), errors
    message = str(errors[0])
    print(f"\noutage message: {message}\nproxy during the outage: {outage}")
    assert "Vault is unavailable" in message or "cannot reach Vault" in message
    assert "after retries" in message
    assert "re-run" in message and "checkpoint" in message
    # the budget was spent: a request was tried 1 + 3 times, every answer an injected 503
    assert outage["faults_injected"]["errors"] >= 4, outage
    assert outage["forwarded"] == 0 and set(outage["statuses"]) == {"503"}, outage
    assert m.reports[-1]["outcome"] == "failed"
    assert m.current() == "0001_users", "a revision was stamped after an outage"
    cps = [c for c in checkpoints(m.engine) if c["revision"] == "0002_invitations"]
    assert len(cps) == 1 and cps[0]["last_pk"] is not None
    resume_at = cps[0]["last_pk"]
    assert int(resume_at) < max(data["invitations"]), "the outage did not land mid-table"

    report = m.upgrade("head", batch_size=20)
    summary = table_summary(report, "invitations")
    assert summary["resumed_after"] == resume_at
    assert summary["rows_scanned"] == sum(1 for pk in data["invitations"] if pk > int(resume_at))
    assert m.current() == "0007_consent_records"
    assert_all_in(m, data, "new")


class PrivateVault:
    """An OpenBao dev server of this test's own on a fixed port, which it may stop and start
    again at the same address (vault_server is shared by the session)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.token = f"root-{secrets.token_hex(12)}"
        self.server: DevServer | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> hvac.Client:
        self.server = start_dev_server(token=self.token, port=self.port)
        self.server.enable_transit("transit")
        return hvac.Client(url=self.addr, token=self.token)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def private_vault() -> Iterator[PrivateVault]:
    vault = PrivateVault()
    try:
        yield vault
    finally:
        vault.stop()


def keys_with_backups(client: Any) -> dict[str, str]:
    """Both keys in ``client``'s ``transit`` mount, and the operator's backups of them (the dev
    server keeps keys in memory only)."""
    transit = client.secrets.transit
    transit.create_key(name=OLD_KEY, exportable=True, allow_plaintext_backup=True)
    transit.create_key(
        name=NEW_KEY,
        derived=True,
        convergent_encryption=True,
        exportable=True,
        allow_plaintext_backup=True,
    )
    return {k: transit.backup_key(name=k)["data"]["backup"] for k in (OLD_KEY, NEW_KEY)}


def test_vault_stopped_mid_run_stops_cleanly_and_resumes_on_a_restarted_vault(
    migration: Migration, private_vault: PrivateVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = migration
    client = private_vault.start()
    backups = keys_with_backups(client)
    vault = Vault(client, "transit", OLD_KEY, NEW_KEY)
    data = seed(m.engine, vault, "users", sample_rows("users", 800), m.hmac_secret)

    with FaultProxy(private_vault.addr) as proxy:
        monkeypatch.setenv("VAULT_ADDR", proxy.addr)
        monkeypatch.setenv("VAULT_TOKEN", private_vault.token)
        monkeypatch.setenv("VAULT_TRANSIT_MOUNT", "transit")
        factory = small_retry_factory(total=3)
        proxy.hold("transit/")
        t, errors = in_thread(
            lambda: run_inprocess(m, "upgrade", "0001_users", factory=factory, batch_size=20)
        )
        with watching(m.engine) as watch:
            step_until(proxy, lambda: committed_batches(watch, "0001_users") >= 3, t.is_alive)
        private_vault.stop()  # while the run waits at the proxy: Vault is gone
        proxy.reset_stats()
        proxy.release()
        t.join(120)
        assert not t.is_alive()
        stopped = proxy.stats()
        assert len(errors) == 1 and isinstance(errors[0], CommandError), errors
        message = str(errors[0])
        print(f"\nVault stopped: {message}\nproxy meanwhile: {stopped}")
        assert "cannot reach Vault" in message and "re-run" in message
        # every try of the failing request found no server behind the proxy
        assert stopped["upstream_failures"] >= 4 and stopped["forwarded"] == 0, stopped
        assert m.current() is None
        cps = [c for c in checkpoints(m.engine) if c["revision"] == "0001_users"]
        assert len(cps) == 1 and cps[0]["last_pk"] is not None

        # Vault is back at the same address, its keys restored from the backups; the
        # operator re-runs the same command
        client2 = private_vault.start()
        for name, blob in backups.items():
            client2.secrets.transit.restore_key(backup=blob, name=name)
        report = m.upgrade("0001_users", batch_size=20)
    summary = table_summary(report, "users")
    assert summary["resumed_after"] == cps[0]["last_pk"]
    assert summary["rows_scanned"] < len(data)
    assert m.current() == "0001_users"
    restored = Vault(client2, "transit", OLD_KEY, NEW_KEY)
    assert_scheme(m.engine, restored, "users", data, "new", m.hmac_secret)


# --------------------------------------------------------------------------------------------
# a data fault is never retried
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["skip", "abort"])
def test_authentication_failure_is_never_retried(
    migration: Migration, vault_faults: FaultProxy, on_error: str
) -> None:
    m = migration
    data = seed_table(m, "invitations", 30)
    # a row with a non-empty email, in the middle of the batch
    with_email = [pk for pk in sorted(data) if data[pk]["email"]]
    assert len(with_email) >= 10, "the seeded rows lack emails"
    pk = with_email[len(with_email) // 2]
    ct = read_table(m.engine, "invitations")[pk]["email"]
    assert isinstance(ct, str) and ct.startswith("vault:v1:")
    tampered = ct[:-8] + ("A" if ct[-8] != "A" else "B") + ct[-7:]
    set_values(m, "invitations", pk, email=tampered)
    m.upgrade("0001_users")
    # the run's preflight samples companions through Vault too: measure its share first
    vault_faults.reset_stats()
    settings = load_settings({"on-error": on_error}, m.env)
    transit = TransitClient.from_settings(settings)
    try:
        collect_preflight(
            settings,
            direction="upgrade",
            tables=["invitations"],
            transit=transit,
            engine=m.engine,
        )
    finally:
        transit.close()
    preflight = vault_faults.stats()
    vault_faults.reset_stats()

    if on_error == "skip":
        report = m.upgrade("0002_invitations", on_error="skip", workers=1, batch_size=100)
        summary = table_summary(report, "invitations")
        assert summary["rows_failed"] == 1
        assert "message authentication failed" in summary["failures"][0]["reason"]
    else:
        with pytest.raises(CommandError) as err:
            m.upgrade("0002_invitations", workers=1, batch_size=100)
        assert f"invitations.email id={pk}" in str(err.value)
        assert "message authentication failed" in str(err.value)

    stats = vault_faults.stats()
    # one batch: decrypt with the old key (one item fails: 400), one trial decrypt of that item
    # with the new key and context (fails: 400), one encrypt; nothing was sent twice. Besides,
    # the key-identity probe: one encrypt when the run pins the key, and one one-item decrypt
    # before the batch's write (skip writes the other rows; abort writes nothing)
    probe_checks = 1 if on_error == "skip" else 0
    assert stats["requests"]["decrypt"] - preflight["requests"]["decrypt"] == 2 + probe_checks
    assert stats["statuses"].get("400", 0) - preflight["statuses"].get("400", 0) == 2, stats
    assert stats["requests"]["encrypt"] <= 2, stats


# --------------------------------------------------------------------------------------------
# tokens that expire mid-run
# --------------------------------------------------------------------------------------------


def _use_child_token(
    m: Migration, monkeypatch: pytest.MonkeyPatch, *, renewable: bool, ttl: str
) -> str:
    """A new child token, now the run's VAULT_TOKEN."""
    resp = m.vault.client.auth.token.create(policies=["root"], ttl=ttl, renewable=renewable)
    token = str(resp["auth"]["client_token"])
    monkeypatch.setenv("VAULT_TOKEN", token)
    return token


def _slow_users(m: Migration, vault_faults: FaultProxy, n: int = 900) -> dict[Any, Any]:
    data = seed_table(m, "users", n)
    vault_faults.set(latency_ms=40, paths=[f"{m.vault.mount}/"])
    return data


def test_renewable_token_expiring_mid_run_is_renewed(
    migration: Migration, vault_faults: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = migration
    data = _slow_users(m, vault_faults)
    token = _use_child_token(m, monkeypatch, renewable=True, ttl="2s")
    started = time.monotonic()
    report = m.upgrade("0001_users", batch_size=20, workers=1)
    # the same token carried the whole run: it was renewed (looked up at once: the run renewed
    # it last with a second or less left, and it expires while the checks below run)
    info = hvac.Client(url=m.env["VAULT_ADDR"], token=token).auth.token.lookup_self()
    vault_faults.clear()
    assert time.monotonic() - started > 3, "the run did not outlive the token's first TTL"
    assert table_summary(report, "users")["rows_failed"] == 0
    assert m.current() == "0001_users"
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)
    assert info["data"]["last_renewal_time"] > 0


def _stops_cleanly_and_resumes(m: Migration, data: dict[Any, Any], message: str) -> None:
    print(f"\n{message}")
    assert m.current() is None
    cps = [c for c in checkpoints(m.engine) if c["revision"] == "0001_users"]
    assert len(cps) == 1 and cps[0]["last_pk"] is not None, "no batch committed before the stop"
    assert m.reports[-1]["outcome"] == "failed"
    # the operator re-runs with a good token: the run resumes where it stopped
    report = m.upgrade("0001_users", batch_size=20, vault_token=m.env["VAULT_TOKEN"])
    assert table_summary(report, "users")["resumed_after"] == cps[0]["last_pk"]
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)


def _short_token_stops_cleanly(m: Migration, data: dict[Any, Any], before: Any) -> str:
    """A token that cannot last the run: refused by the preflight (nothing changed), or
    stopped mid-run before it expires (resumable). Either way the message says why."""
    with pytest.raises(CommandError) as err:
        m.upgrade("0001_users", batch_size=20, workers=1)
    message = str(err.value)
    assert "token" in message
    cps = [c for c in checkpoints(m.engine) if c["revision"] == "0001_users"]
    if cps and cps[0]["last_pk"] is not None:
        assert "resumes" in message
        _stops_cleanly_and_resumes(m, data, message)
        return "stopped mid-run"
    print(f"\n{message}")
    assert "nothing was changed" in message
    assert read_table(m.engine, "users") == before
    assert m.current() is None
    m.upgrade("0001_users", vault_token=m.env["VAULT_TOKEN"])
    assert_scheme(m.engine, m.vault, "users", data, "new", m.hmac_secret)
    return "refused by the preflight"


def test_non_renewable_short_token_stops_cleanly_and_says_so(
    migration: Migration, vault_faults: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = migration
    data = _slow_users(m, vault_faults)
    before = read_table(m.engine, "users")
    _use_child_token(m, monkeypatch, renewable=False, ttl="3s")
    how = _short_token_stops_cleanly(m, data, before)
    vault_faults.clear()
    assert how
    assert "not renewable" in m.reports[-2]["error"]


def test_token_at_its_max_ttl_stops_cleanly_and_says_so(
    migration: Migration, vault_faults: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = migration
    data = _slow_users(m, vault_faults)
    before = read_table(m.engine, "users")
    resp = m.vault.client.auth.token.create(
        policies=["root"], ttl="2s", explicit_max_ttl="3s", renewable=True
    )
    monkeypatch.setenv("VAULT_TOKEN", resp["auth"]["client_token"])
    _short_token_stops_cleanly(m, data, before)
    vault_faults.clear()
    error = m.reports[-2]["error"]
    assert "explicit_max_ttl" in error or "not renewable" in error or "max" in error


def test_token_whose_renewal_is_refused_stops_cleanly_mid_run(
    migration: Migration, vault_faults: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewable token whose policy does not allow renew-self: it passes the preflight, the
    renewal mid-run is refused, and the run stops cleanly before the token expires, saying so."""
    m = migration
    data = _slow_users(m, vault_faults)
    policy = f"""
path "{m.vault.mount}/*" {{ capabilities = ["create", "read", "update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
path "sys/capabilities-self" {{ capabilities = ["update"] }}
"""
    m.vault.client.sys.create_or_update_policy(name="no-renew", policy=policy)
    resp = m.vault.client.auth.token.create(
        policies=["no-renew"], no_default_policy=True, ttl="3s", renewable=True
    )
    monkeypatch.setenv("VAULT_TOKEN", resp["auth"]["client_token"])
    with pytest.raises(CommandError) as err:
        m.upgrade("0001_users", batch_size=20, workers=1)
    vault_faults.clear()
    message = str(err.value)
    assert "token" in message and "renew" in message and "resumes" in message, message
    _stops_cleanly_and_resumes(m, data, message)


def test_token_revoked_mid_run_stops_cleanly_and_says_so(
    migration: Migration, vault_faults: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token that stops working before its TTL says (revoked, or expired on Vault's clock)."""
    m = migration
    data = _slow_users(m, vault_faults)
    token = _use_child_token(m, monkeypatch, renewable=True, ttl="1h")
    factory = small_retry_factory(total=2)
    vault_faults.hold(f"{m.vault.mount}/")
    t, errors = in_thread(
        lambda: run_inprocess(m, "upgrade", "0001_users", factory=factory, batch_size=20)
    )
    with watching(m.engine) as watch:
        step_until(vault_faults, lambda: committed_batches(watch, "0001_users") >= 2, t.is_alive)
    m.vault.client.auth.token.revoke(token)  # by OpenBao itself, while the run waits
    vault_faults.release()
    t.join(120)
    assert not t.is_alive()
    vault_faults.clear()
    assert len(errors) == 1 and isinstance(errors[0], CommandError), errors
    message = str(errors[0])
    lowered = message.lower()
    assert "token" in lowered
    assert "expired" in lowered or "revoked" in lowered or "not valid" in lowered, message
    _stops_cleanly_and_resumes(m, data, message)
