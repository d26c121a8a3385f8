"""The Vault checks: Vault answers and is unsealed, the token lasts the run, and its policy allows
every path the direction needs (with the HCL policy it needs, real names, when it does not).

- ``sys/health`` once, no retries (:meth:`~context_encryption.transit.TransitClient.health`);
- ``auth/token/lookup-self``: at least ``min_token_ttl`` seconds left, or renewable (within its
  ``explicit_max_ttl``), and no use limit (:func:`token_verdict`, pure);
- ``sys/capabilities-self`` on :func:`required_capabilities` of the direction.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from app_models.specs import Direction
from context_encryption.errors import (
    ContextEncryptionError,
    VaultRequestError,
    VaultUnavailableError,
)
from context_encryption.preflight.report import DirectionName, PreflightReport
from context_encryption.schemes import schemes
from context_encryption.settings import Settings
from context_encryption.transit import TransitClient
from context_encryption.vault_texts import PERMISSION_DENIED

# --------------------------------------------------------------------------------------------
# what a direction needs
# --------------------------------------------------------------------------------------------


def required_capabilities(settings: Settings, direction: DirectionName) -> list[tuple[str, str]]:
    """(path, capability) pairs the run needs on the Transit mount."""
    if direction == "rewrap":
        return rewrap_capabilities(settings)
    m, old, new = settings.transit_mount, settings.old_key, settings.new_key
    source, target = (s.key for s in schemes(settings, Direction(direction)))
    return [
        (f"{m}/decrypt/{source}", "update"),
        (f"{m}/encrypt/{target}", "update"),
        # the engine trial-decrypts with the target key to recognise already-migrated values
        (f"{m}/decrypt/{target}", "update"),
        (f"{m}/keys/{old}", "read"),
        (f"{m}/keys/{new}", "read"),
    ]


def rewrap_capabilities(settings: Settings) -> list[tuple[str, str]]:
    """(path, capability) pairs a rewrap needs on the Transit mount."""
    m, old, new = settings.transit_mount, settings.old_key, settings.new_key
    return [
        (f"{m}/rewrap/{new}", "update"),
        (f"{m}/keys/{new}", "read"),
        # the pinned version's fingerprint probe: encrypted at pin time, decrypted before writes
        (f"{m}/encrypt/{new}", "update"),
        (f"{m}/decrypt/{new}", "update"),
        # a value the new key cannot read is trial-decrypted with the old key to classify it
        (f"{m}/decrypt/{old}", "update"),
    ]


#: What the tool asks about its own token: a token made without the ``default`` policy (as
#: many production tokens are) needs these in its own policy.
TOKEN_SELF_PATHS: Final = (
    ("auth/token/lookup-self", "read", "  # the preflight and the run check the token"),
    ("auth/token/renew-self", "update", "  # a renewable token is renewed as the run goes"),
    ("sys/capabilities-self", "update", "  # the preflight checks these capabilities"),
)


def policy_hcl(settings: Settings) -> str:
    """The HCL policy a token needs for upgrade *and* downgrade (rollback), real names."""
    m, old, new = settings.transit_mount, settings.old_key, settings.new_key
    rows = [
        (f"{m}/keys/{old}", "read", ""),
        (f"{m}/keys/{new}", "read", ""),
        (f"{m}/decrypt/{old}", "update", ""),
        (f"{m}/encrypt/{old}", "update", "  # downgrade (rollback) only"),
        (f"{m}/decrypt/{new}", "update", ""),
        (f"{m}/encrypt/{new}", "update", ""),
        *TOKEN_SELF_PATHS,
    ]
    width = max(len(p) for p, _c, _n in rows) + 2
    lines = []
    for p, c, note in rows:
        quoted = f'"{p}"'
        lines.append(f'path {quoted:<{width}} {{ capabilities = ["{c}"] }}{note}')
    return "\n".join(lines)


def capabilities_fix(settings: Settings, direction: DirectionName) -> str:
    """The fix for a missing capability: the policy the token needs, and how to give it."""
    if direction == "rewrap":
        hcl = "\n".join(
            f'path "{p}" {{ capabilities = ["{c}"] }}' for p, c in rewrap_capabilities(settings)
        )
        return f"give the token a policy with:\n{hcl}"
    return (
        "give the token a policy with (upgrade and rollback):\n"
        f"{policy_hcl(settings)}\n"
        "e.g. save it as context-encryption.hcl, then: vault policy write context-encryption "
        "context-encryption.hcl && vault token create -policy=context-encryption -ttl=4h"
    )


def has_capability(caps: Sequence[str], needed: str) -> bool:
    """Whether ``sys/capabilities-self``'s answer for a path grants ``needed``."""
    if "deny" in caps:
        return False
    if "root" in caps:
        return True
    # an existing key's encrypt path is an update; "create" alone is not enough for it
    return needed in caps


def duration(seconds: int) -> str:
    """``1h05m``, ``4m05s``, ``42s``."""
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------


def no_vault(report: PreflightReport) -> None:
    """The failure when no Vault address or token is set at all."""
    report.add(
        "vault",
        False,
        "no Vault address or token",
        f"set VAULT_ADDR and VAULT_TOKEN (or {report.option('vault-addr')})",
    )


def check_vault(report: PreflightReport, transit: TransitClient, addr: str) -> bool:
    """Vault answers ``sys/health`` at ``addr`` (once, no retries), initialised and unsealed."""
    try:
        status, body = transit.health()
    except VaultUnavailableError as exc:
        report.add(
            "vault",
            False,
            f"{exc}: nothing answers there",
            f"check VAULT_ADDR (or {report.option('vault-addr')}): scheme (http/https), host "
            "and port, and that Vault is running and reachable from this host (firewall, proxy, "
            "VPN)",
        )
        return False
    problem = _health_problem(addr, status, body)
    if problem is not None:
        report.add("vault", False, *problem)
        return False
    version = body.get("version")
    report.add(
        "vault", True, f"Vault at {addr} is up" + (f" (version {version})" if version else "")
    )
    return True


def _health_problem(addr: str, status: int, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(detail, fix) of a ``sys/health`` answer that is not a usable Vault, or None."""
    if status == 503 or body.get("sealed") is True:
        return (
            f"Vault at {addr} is sealed (sys/health answered {status})",
            "unseal it (vault operator unseal) or point VAULT_ADDR at an unsealed node",
        )
    if status == 501 or body.get("initialized") is False:
        return (
            f"Vault at {addr} is not initialised (sys/health answered {status})",
            "point VAULT_ADDR at the Vault that holds the Transit keys",
        )
    if status >= 400 and status not in (429, 472, 473):
        return (
            f"Vault at {addr} answered sys/health with HTTP {status}",
            "check VAULT_ADDR: it should be the Vault API address (e.g. https://vault:8200)",
        )
    return None


@dataclass(frozen=True)
class TokenVerdict:
    """Whether a token lasts the run, what was found, and a warning for a short renewable one."""

    ok: bool
    detail: str
    warning: str | None = None


def token_verdict(info: Mapping[str, Any], min_ttl: int, now: float) -> TokenVerdict:
    """The verdict on ``auth/token/lookup-self``'s data at time ``now`` (pure)."""
    ttl = int(info.get("ttl") or 0)
    renewable = bool(info.get("renewable"))
    uses = int(info.get("num_uses") or 0)
    policies = ", ".join(str(p) for p in info.get("policies") or [])
    # a renewable token still cannot outlive its explicit_max_ttl
    max_ttl = int(info.get("explicit_max_ttl") or 0)
    created = int(info.get("creation_time") or 0)
    cap = created + max_ttl - int(now) if max_ttl and created else None
    if ttl == 0 and info.get("expire_time") in (None, ""):
        verdict = TokenVerdict(True, f"valid, never expires (policies: {policies})")
    elif ttl >= min_ttl:
        verdict = TokenVerdict(True, f"valid, {duration(ttl)} left (policies: {policies})")
    elif renewable and (cap is None or cap >= min_ttl):
        verdict = TokenVerdict(
            True,
            f"valid, only {duration(ttl)} left but renewable: the run renews it as it goes "
            f"(policies: {policies})",
            f"the Vault token has only {duration(ttl)} left; it is renewable and the run "
            "renews it, but a token with a longer TTL is safer for a long run",
        )
    elif renewable:
        verdict = TokenVerdict(
            False,
            f"the token is renewable but its explicit_max_ttl ends in {duration(max(cap or 0, 0))}"
            "; a run that outlives it stops half-way",
        )
    else:
        verdict = TokenVerdict(
            False,
            f"the token expires in {duration(ttl)} and is not renewable; a run that outlives it "
            "stops half-way",
        )
    if verdict.ok and uses > 0:
        return TokenVerdict(
            False,
            f"the token is limited to {uses} more use(s); a run makes several per batch",
            verdict.warning,
        )
    return verdict


def check_token(report: PreflightReport, transit: TransitClient, min_ttl: int) -> bool:
    """The token is valid and lasts the run. False only when it does not work at all."""
    try:
        info = transit.lookup_self()
    except (VaultRequestError, VaultUnavailableError) as exc:
        denied = PERMISSION_DENIED in str(exc)
        report.add(
            "token",
            False,
            "Vault refused the token lookup (auth/token/lookup-self: permission denied): the "
            "token is invalid, expired or revoked, or its policy lacks read on "
            "auth/token/lookup-self (a token made without the default policy needs it)"
            if denied
            else f"the token lookup failed: {exc}",
            "set VAULT_TOKEN to a valid token, e.g. one from "
            "'vault login' or 'vault token create -policy=<policy> -ttl=2h'; if `vault token "
            'lookup` works with it, add to its policy:\n  path "auth/token/lookup-self" '
            '{ capabilities = ["read"] }',
        )
        return False
    verdict = token_verdict(info, min_ttl, time.time())
    if verdict.warning is not None:
        report.warnings.append(verdict.warning)
    if verdict.ok:
        report.add("token", True, verdict.detail)
    else:
        report.add(
            "token",
            False,
            verdict.detail,
            f"use a token with at least {duration(min_ttl)} left, no use limit, or renewable, "
            "e.g. vault token create -policy=<policy> -ttl=4h",
        )
    return True  # the token works now: later checks can still run


def check_capabilities(
    report: PreflightReport, settings: Settings, transit: TransitClient, direction: DirectionName
) -> bool:
    """The token's policy grants every path of :func:`required_capabilities`."""
    needed = required_capabilities(settings, direction)
    try:
        caps = transit.capabilities_self([p for p, _c in needed])
    except ContextEncryptionError as exc:
        report.add(
            "capabilities",
            False,
            f"cannot check the token's capabilities (sys/capabilities-self: {exc}); the token "
            "was made without the default policy and its own policy lacks "
            "sys/capabilities-self",
            'add to its policy:\n  path "sys/capabilities-self" { capabilities = ["update"] }\n'
            "(the complete policy is in README, 'Vault policy')",
        )
        return False
    missing = [(p, c) for p, c in needed if not has_capability(caps.get(p, []), c)]
    if missing:
        report.add(
            "capabilities",
            False,
            "the token lacks "
            + ", ".join(
                f"{c} on {p} (has: {', '.join(caps.get(p, [])) or 'none'})" for p, c in missing
            )
            + f"; Vault would answer 'permission denied' during the {direction}",
            capabilities_fix(settings, direction),
        )
        return False
    report.add("capabilities", True, f"the token may {direction} ({len(needed)} paths checked)")
    return True
