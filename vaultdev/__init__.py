"""vaultdev: a HashiCorp-Vault-Transit-compatible development HTTP server.

Run it with ``python -m vaultdev --port PORT --root-token TOKEN``. It serves Vault's HTTP API on
127.0.0.1 for what this project and hvac use: the Transit engine (key create/read/config/rotate/
trim/delete/export/backup/restore, encrypt/decrypt/rewrap single and batch, derived keys and
convergent encryption byte-compatible with Vault, HMAC, random, hash, datakey), tokens, ACL
policies and ``sys/mounts``. Everything is kept in memory. It is a development and test tool,
never meant for production.

vaultdev extras that real Vault does not have (see ``vaultdev/README.md``):

* fault injection switchable at runtime: ``GET/PUT/DELETE /_vaultdev/faults`` (latency,
  random error statuses, dropped connections, "the next N requests" faults);
* request statistics: ``GET /_vaultdev/stats`` and ``POST /_vaultdev/stats/reset``.

Helpers: :mod:`vaultdev.process` (start a vaultdev subprocess) and :mod:`vaultdev.control`
(set faults, read statistics).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
