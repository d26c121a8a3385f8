"""Tokens and ACL policies (the parts of Vault's token store and policy store vaultdev needs).

Tokens are service tokens kept in memory. The root token (given on the command line) has the
``root`` policy, TTL 0 and never expires. Child tokens get the ``default`` policy unless
``no_default_policy``; their TTL defaults to Vault's system default of 768h. An expired token is
removed on its next use and answers 403 ``permission denied``.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vaultdev.acl import ACL, DEFAULT_POLICY, PathRule, parse_policy
from vaultdev.errors import UserError
from vaultdev.keys import rfc3339nano

DEFAULT_TTL = 768 * 3600
MAX_TTL = 768 * 3600
_ALNUM = string.ascii_letters + string.digits


def _random_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass(slots=True)
class Token:
    id: str
    accessor: str
    policies: list[str]
    display_name: str
    creation_time: float
    ttl: int  # creation TTL in seconds; 0 = never expires
    expire_at: float | None
    renewable: bool
    explicit_max_ttl: int = 0
    period: int = 0
    num_uses: int = 0
    orphan: bool = False
    path: str = "auth/token/create"
    meta: dict[str, str] | None = None
    last_renewal: float | None = None
    acl: ACL | None = field(default=None, repr=False)

    @property
    def is_root(self) -> bool:
        return "root" in self.policies

    def remaining_ttl(self, now: float) -> int:
        if self.expire_at is None:
            return 0
        return max(0, int(self.expire_at - now))

    def lookup_data(self, now: float) -> dict[str, Any]:
        return {
            "accessor": self.accessor,
            "creation_time": int(self.creation_time),
            "creation_ttl": self.ttl,
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": None if self.expire_at is None else rfc3339nano(self.expire_at),
            "explicit_max_ttl": self.explicit_max_ttl,
            "id": self.id,
            "issue_time": rfc3339nano(self.creation_time),
            "last_renewal": None if self.last_renewal is None else rfc3339nano(self.last_renewal),
            "last_renewal_time": 0 if self.last_renewal is None else int(self.last_renewal),
            "meta": self.meta,
            "num_uses": self.num_uses,
            "orphan": self.orphan,
            "path": self.path,
            "policies": list(self.policies),
            "renewable": self.renewable,
            "ttl": self.remaining_ttl(now),
            "type": "service",
        }

    def auth_block(self, lease_duration: int) -> dict[str, Any]:
        return {
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": list(self.policies),
            "token_policies": list(self.policies),
            "metadata": self.meta,
            "lease_duration": lease_duration,
            "renewable": self.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": self.orphan,
            "mfa_requirement": None,
            "num_uses": self.num_uses,
        }


class AuthStore:
    """Tokens and named ACL policies, guarded by one lock (writes are rare)."""

    def __init__(self, root_token: str) -> None:
        self.lock = threading.RLock()
        self.tokens: dict[str, Token] = {}
        self.policy_text: dict[str, str] = {"default": DEFAULT_POLICY.strip() + "\n"}
        self.policy_rules: dict[str, list[PathRule]] = {"default": parse_policy(DEFAULT_POLICY)}
        now = time.time()
        self.root = Token(
            id=root_token,
            accessor=_random_id("", 24),
            policies=["root"],
            display_name="root",
            creation_time=now,
            ttl=0,
            expire_at=None,
            renewable=False,
            orphan=True,
            path="auth/token/root",
        )
        self.tokens[root_token] = self.root

    # ----- tokens ---------------------------------------------------------------------------

    def lookup(self, token_id: str | None) -> Token | None:
        """The live token for ``token_id``; expired tokens are removed and give ``None``."""
        if not token_id:
            return None
        tok = self.tokens.get(token_id)
        if tok is None:
            return None
        if tok.expire_at is not None and time.time() >= tok.expire_at:
            with self.lock:
                self.tokens.pop(token_id, None)
            return None
        return tok

    def acl_for(self, tok: Token) -> ACL:
        acl = tok.acl
        if acl is None:
            with self.lock:
                acl = ACL([self.policy_rules.get(p, []) for p in tok.policies])
                tok.acl = acl
        return acl

    def create_token(self, parent: Token, body: dict[str, Any], ttl: int, **opts: Any) -> Token:
        policies_raw = body.get("policies")
        if isinstance(policies_raw, str):
            policies_raw = [p.strip() for p in policies_raw.split(",") if p.strip()]
        if policies_raw is None:
            policies = [p for p in parent.policies]
        elif isinstance(policies_raw, list):
            policies = [str(p).strip().lower() for p in policies_raw if str(p).strip()]
        else:
            raise UserError("policies must be a list of strings")
        if not parent.is_root:
            extra = sorted(set(policies) - set(parent.policies) - {"default"})
            if extra:
                raise UserError(
                    "child policies must be subset of parent: " + ", ".join(f'"{p}"' for p in extra)
                )
        no_default = bool(opts.get("no_default_policy"))
        if "root" not in policies and not no_default and "default" not in policies:
            policies.append("default")
        if no_default and "default" in policies:
            policies.remove("default")
        policies = sorted(set(policies))
        now = time.time()
        explicit_max = int(opts.get("explicit_max_ttl") or 0)
        period = int(opts.get("period") or 0)
        if period:
            ttl = period
        elif ttl == 0 and "root" not in policies:
            ttl = DEFAULT_TTL
        if explicit_max and (ttl == 0 or ttl > explicit_max):
            ttl = explicit_max
        tok_id = str(body.get("id") or "") or _random_id("hvs.")
        if "." in tok_id and not tok_id.startswith("hvs."):
            raise UserError("token IDs can not contain a period")
        display = str(body.get("display_name") or "token")
        if display != "token" and not display.startswith("token-"):
            display = "token-" + display
        meta = body.get("meta")
        tok = Token(
            id=tok_id,
            accessor=_random_id("", 24),
            policies=policies,
            display_name=display,
            creation_time=now,
            ttl=ttl,
            expire_at=None if ttl == 0 else now + ttl,
            renewable=bool(opts.get("renewable", True)) and ttl != 0,
            explicit_max_ttl=explicit_max,
            period=period,
            num_uses=int(body.get("num_uses") or 0),
            orphan=bool(opts.get("no_parent")),
            meta=meta if isinstance(meta, dict) else None,
        )
        with self.lock:
            if tok_id in self.tokens:
                raise UserError("cannot create a token with a duplicate ID")
            self.tokens[tok_id] = tok
        return tok

    def renew(self, tok: Token, increment: int) -> int:
        """Extend ``tok``; return the new lease duration in seconds."""
        if not tok.renewable:
            raise UserError("lease is not renewable")
        now = time.time()
        new_ttl = tok.period or increment or tok.ttl
        max_until = tok.creation_time + (tok.explicit_max_ttl or MAX_TTL)
        new_expire = min(now + new_ttl, max_until) if not tok.period else now + new_ttl
        with self.lock:
            tok.expire_at = new_expire
            tok.last_renewal = now
        return max(0, round(new_expire - now))

    def revoke(self, tok: Token) -> None:
        with self.lock:
            self.tokens.pop(tok.id, None)

    # ----- policies -------------------------------------------------------------------------

    def put_policy(self, name: str, text: str) -> None:
        name = name.lower()
        if name == "root":
            raise UserError('cannot update "root" policy')
        rules = parse_policy(text)
        with self.lock:
            self.policy_text[name] = text
            self.policy_rules[name] = rules
            for tok in self.tokens.values():
                tok.acl = None

    def delete_policy(self, name: str) -> None:
        name = name.lower()
        if name in ("root", "default"):
            raise UserError(f'cannot delete "{name}" policy')
        with self.lock:
            self.policy_text.pop(name, None)
            self.policy_rules.pop(name, None)
            for tok in self.tokens.values():
                tok.acl = None

    def list_policies(self) -> list[str]:
        return sorted({*self.policy_text, "root"})
