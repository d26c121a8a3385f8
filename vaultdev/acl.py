"""ACL policies: the HCL subset Vault policies use, the JSON form, and capability checks.

Accepted syntax::

    # comment            // comment          /* block comment */
    path "transit/encrypt/my-key" {
      capabilities = ["update", "create"]
    }
    path "transit/+/my-key" { capabilities = ["read"] }    # + : exactly one path segment
    path "transit/keys/*"   { capabilities = ["list"] }    # * : glob, only at the end

or JSON: ``{"path": {"transit/encrypt/k": {"capabilities": ["update"]}}}``. Other attributes
inside a path block (``allowed_parameters``, ``min_wrapping_ttl``, ...) are parsed and ignored.

All policies of a token are merged per path pattern (capabilities unioned, ``deny`` wins and
clears the set). A request path is matched like Vault's ACL: an exact pattern wins; otherwise the
highest-priority matching glob/``+`` pattern (Vault's documented priority rules) decides alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from vaultdev.errors import UserError

CAPABILITIES = ("create", "read", "update", "delete", "list", "sudo", "deny", "patch", "subscribe")

DEFAULT_POLICY = """
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}
# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}
# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}
# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}
# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}
path "sys/leases/lookup" {
    capabilities = ["update"]
}
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}
path "sys/control-group/request" {
    capabilities = ["update"]
}
"""

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
    | (?P<heredoc><<-?(?P<tag>[A-Za-z_]+)\n(?P<body>.*?)\n\s*(?P=tag))
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_\-.]*)
    | (?P<punct>[{}\[\]=,:])
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise UserError(f"failed to parse policy: At {line}: illegal char")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        if kind == "string":
            tokens.append(("value", json.loads(m.group("string"))))
        elif kind == "heredoc":
            tokens.append(("value", m.group("body")))
        elif kind == "number":
            tokens.append(("value", float(m.group("number"))))
        elif kind == "ident":
            word = m.group("ident")
            if word in ("true", "false"):
                tokens.append(("value", word == "true"))
            else:
                tokens.append(("ident", word))
        else:
            tokens.append(("punct", m.group("punct")))
    return tokens


class _Parser:
    """Recursive-descent parser for the HCL1 subset: blocks, assignments, lists, objects."""

    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.i = 0

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self) -> tuple[str, Any]:
        tok = self._peek()
        if tok is None:
            raise UserError("failed to parse policy: unexpected end of input")
        self.i += 1
        return tok

    def body(self, closing: str | None) -> list[tuple[str, list[Any], Any]]:
        """Entries ``(key, labels, value)`` until ``closing`` (or end of input)."""
        out: list[tuple[str, list[Any], Any]] = []
        while True:
            tok = self._peek()
            if tok is None:
                if closing is not None:
                    raise UserError("failed to parse policy: unexpected end of input")
                return out
            if tok == ("punct", closing):
                self.i += 1
                return out
            if tok == ("punct", ","):
                self.i += 1
                continue
            kind, key = self._next()
            if kind not in ("ident", "value") or not isinstance(key, str):
                raise UserError(f"failed to parse policy: unexpected token {key!r}")
            labels: list[Any] = []
            while (nxt := self._peek()) is not None and nxt[0] == "value":
                labels.append(self._next()[1])
            nxt = self._next()
            if nxt in (("punct", "="), ("punct", ":")):
                out.append((key, labels, self.value()))
            elif nxt == ("punct", "{"):
                out.append((key, labels, self.body("}")))
            else:
                raise UserError(f"failed to parse policy: unexpected token {nxt[1]!r}")

    def value(self) -> Any:
        kind, tok = self._next()
        if kind == "value":
            return tok
        if (kind, tok) == ("punct", "["):
            items: list[Any] = []
            while True:
                nxt = self._peek()
                if nxt == ("punct", "]"):
                    self.i += 1
                    return items
                if nxt == ("punct", ","):
                    self.i += 1
                    continue
                items.append(self.value())
        if (kind, tok) == ("punct", "{"):
            return self.body("}")
        if kind == "ident":
            return tok
        raise UserError(f"failed to parse policy: unexpected token {tok!r}")


@dataclass(slots=True)
class PathRule:
    pattern: str
    capabilities: set[str] = field(default_factory=set)

    @property
    def is_glob(self) -> bool:
        return self.pattern.endswith("*")

    @property
    def has_plus(self) -> bool:
        return "+" in self.pattern.split("/")

    def matches(self, path: str) -> bool:
        pat = self.pattern
        glob = pat.endswith("*")
        if glob:
            pat = pat[:-1]
        if not self.has_plus:
            return path.startswith(pat) if glob else path == pat
        pat_segs = pat.split("/")
        path_segs = path.split("/")
        if glob:
            if len(path_segs) < len(pat_segs):
                return False
            for i, seg in enumerate(pat_segs[:-1]):
                if seg != "+" and seg != path_segs[i]:
                    return False
            last = pat_segs[-1]
            rest = "/".join(path_segs[len(pat_segs) - 1 :])
            if last == "+":
                return True
            return rest.startswith(last)
        if len(path_segs) != len(pat_segs):
            return False
        return all(seg in ("+", path_segs[i]) for i, seg in enumerate(pat_segs))


def _priority_key(pattern: str) -> tuple[int, int, int, int, str]:
    """Higher tuple = higher priority (Vault's ACL rules for glob/segment-wildcard paths)."""
    first_wild = min((i for i, c in enumerate(pattern) if c in "+*"), default=len(pattern))
    return (
        first_wild,
        0 if pattern.endswith("*") else 1,
        -pattern.split("/").count("+"),
        len(pattern),
        pattern,
    )


def parse_policy(text: str) -> list[PathRule]:
    """Parse HCL or JSON policy text into path rules (unknown capabilities are an error)."""
    stripped = text.strip()
    entries: list[tuple[str, dict[str, Any]]] = []
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError as exc:
            raise UserError(f"failed to parse policy: {exc}") from exc
        paths = doc.get("path", {}) if isinstance(doc, dict) else {}
        if isinstance(paths, dict):
            for pat, spec in paths.items():
                entries.append((pat, spec if isinstance(spec, dict) else {}))
        elif isinstance(paths, list):
            for block in paths:
                if isinstance(block, dict):
                    for pat, spec in block.items():
                        entries.append((pat, spec if isinstance(spec, dict) else {}))
    else:
        for key, labels, value in _Parser(_tokenize(text)).body(None):
            if key != "path":
                continue
            if len(labels) != 1 or not isinstance(labels[0], str) or not isinstance(value, list):
                raise UserError("failed to parse policy: path blocks need one quoted path")
            spec = {k: v for k, _labels, v in value}
            entries.append((labels[0], spec))
    rules: list[PathRule] = []
    for pattern, spec in entries:
        caps_raw = spec.get("capabilities", [])
        policy_word = spec.get("policy")
        caps: set[str] = set()
        if isinstance(policy_word, str):
            caps |= {
                "deny": {"deny"},
                "read": {"read", "list"},
                "write": {"create", "read", "update", "delete", "list"},
                "sudo": {"create", "read", "update", "delete", "list", "sudo"},
            }.get(policy_word, set())
        if not isinstance(caps_raw, list):
            raise UserError("failed to parse policy: capabilities must be a list")
        for cap in caps_raw:
            if cap not in CAPABILITIES:
                raise UserError(f'failed to parse policy: invalid capability "{cap}"')
            caps.add(str(cap))
        rules.append(PathRule(pattern.lstrip("/"), caps))
    return rules


class ACL:
    """The merged rules of a token's policies."""

    def __init__(self, rule_sets: list[list[PathRule]]) -> None:
        merged: dict[str, set[str]] = {}
        for rules in rule_sets:
            for rule in rules:
                merged.setdefault(rule.pattern, set()).update(rule.capabilities)
        self.exact: dict[str, set[str]] = {}
        self.wild: list[PathRule] = []
        for pattern, granted in merged.items():
            caps = {"deny"} if "deny" in granted else granted
            rule = PathRule(pattern, caps)
            if rule.is_glob or rule.has_plus:
                self.wild.append(rule)
            else:
                self.exact[pattern] = caps
        self.wild.sort(key=lambda r: _priority_key(r.pattern), reverse=True)

    def capabilities(self, path: str) -> set[str]:
        """Capabilities granted on ``path`` (``{"deny"}`` means explicitly denied)."""
        caps = self.exact.get(path)
        if caps is not None:
            return caps
        for rule in self.wild:
            if rule.matches(path):
                return rule.capabilities
        return set()

    def allows(self, path: str, capability: str) -> bool:
        caps = self.capabilities(path)
        return "deny" not in caps and capability in caps
