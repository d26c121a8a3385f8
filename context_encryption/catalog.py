"""What the revision chain migrates, read from the revisions themselves: the one source of truth.

Each revision in ``migrations/versions`` holds a frozen :class:`~app_models.specs.TableSpec`
(``SNAPSHOT``): its table, the encrypted columns and their HMAC companions. The engine migrates
exactly that snapshot, so the preflight, verify, the rewrap, the demo, the bench and the tests
read the same snapshots through :func:`load_catalog` rather than a second list. The chain order,
the revision ids and the version table's name (``version_table`` in alembic.ini) come from here
too.

Only public Alembic API is used: :class:`alembic.config.Config`,
:meth:`alembic.script.ScriptDirectory.from_config` and ``Script.module``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alembic.config import Config
from alembic.script import ScriptDirectory

from app_models.specs import TableSpec
from context_encryption.errors import ConfigurationError

#: The project's own alembic.ini, used when neither ``ALEMBIC_CONFIG`` nor ``./alembic.ini`` is.
PROJECT_INI: Final = Path(__file__).resolve().parents[1] / "alembic.ini"
#: Alembic's default when alembic.ini names no ``version_table``.
DEFAULT_VERSION_TABLE: Final = "alembic_version"


@dataclass(frozen=True)
class Entry:
    """One data revision: its id and the frozen snapshot of the table it migrates."""

    revision: str
    spec: TableSpec

    @property
    def table(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Catalog:
    """The chain's data revisions in chain order (base first), and the version table's name."""

    entries: tuple[Entry, ...]
    version_table: str = DEFAULT_VERSION_TABLE

    @property
    def tables(self) -> tuple[str, ...]:
        """Table names in chain order."""
        return tuple(e.table for e in self.entries)

    @property
    def revisions(self) -> tuple[str, ...]:
        """Revision ids in chain order."""
        return tuple(e.revision for e in self.entries)

    def entry(self, table: str) -> Entry:
        for e in self.entries:
            if e.table == table:
                return e
        raise KeyError(table)

    def spec(self, table: str) -> TableSpec:
        return self.entry(table).spec

    def revision_of(self, table: str) -> str:
        return self.entry(table).revision

    def table_of(self, revision: str) -> str | None:
        """The table a revision migrates, or None for a revision this chain does not have."""
        return next((e.table for e in self.entries if e.revision == revision), None)

    def applied_tables(self, revision: str | None) -> tuple[str, ...]:
        """Tables whose revision is at or below ``revision`` (a stamp), in chain order."""
        if revision is None:
            return ()
        ids = self.revisions
        if revision not in ids:
            raise KeyError(revision)
        return self.tables[: ids.index(revision) + 1]


def config_path() -> Path:
    """alembic.ini: ``ALEMBIC_CONFIG`` (as Alembic reads it), else ``./alembic.ini``, else ours."""
    env = os.environ.get("ALEMBIC_CONFIG")
    if env:
        return Path(env)
    here = Path("alembic.ini")
    return here if here.is_file() else PROJECT_INI


def catalog_of(config: Config) -> Catalog:
    """The catalog of the chain ``config`` points at (uncached; see :func:`load_catalog`)."""
    script = ScriptDirectory.from_config(config)
    entries: list[Entry] = []
    for rev in script.walk_revisions():  # head first
        spec = getattr(rev.module, "SNAPSHOT", None)
        if not isinstance(spec, TableSpec):
            raise ConfigurationError(
                f"revision {rev.revision} ({rev.path}) has no SNAPSHOT TableSpec: every revision "
                "of this chain migrates one table and says which in SNAPSHOT"
            )
        entries.append(Entry(rev.revision, spec))
    entries.reverse()
    version_table = config.get_main_option("version_table") or DEFAULT_VERSION_TABLE
    return Catalog(tuple(entries), version_table)


@functools.cache
def _cached(path: str) -> Catalog:
    if not Path(path).is_file():
        raise ConfigurationError(
            f"alembic.ini not found at {path}: run from the project directory or set ALEMBIC_CONFIG"
        )
    return catalog_of(Config(path))


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """The catalog of the chain in ``path`` (default :func:`config_path`); read once per path."""
    return _cached(str(Path(path) if path is not None else config_path()).strip())
