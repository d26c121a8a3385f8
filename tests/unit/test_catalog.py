"""The catalog: what each revision migrates, read from the revisions' own snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config

from app_models.specs import ColumnSpec
from app_models.tables import metadata
from context_encryption.catalog import (
    DEFAULT_VERSION_TABLE,
    PROJECT_INI,
    Entry,
    catalog_of,
    config_path,
    load_catalog,
)
from context_encryption.errors import ConfigurationError

#: DESIGN.md's table of revisions, written out once here to check the chain against it.
DESIGN = {
    "0001_users": ("users", "email*", "first_name", "last_name"),
    "0002_invitations": ("invitations", "email*", "token*"),
    "0003_guest_orders": (
        "guest_orders",
        "customer_name",
        "customer_phone*",
        "customer_email*",
        "ip_address",
        "user_agent",
    ),
    "0004_delivery_addresses": ("delivery_addresses", "full_address", "geocoding_result"),
    "0005_notifications": ("notifications", "recipient", "body"),
    "0006_sessions": ("sessions", "session_id*", "ip_address"),
    "0007_consent_records": ("consent_records", "ip_address"),
}


def test_the_chain_is_the_design_in_order() -> None:
    catalog = load_catalog()
    assert catalog.revisions == tuple(DESIGN)
    for revision, (table, *columns) in DESIGN.items():
        entry = catalog.entry(table)
        assert entry.revision == revision
        assert [c.name + ("*" if c.hmac else "") for c in entry.spec.columns] == columns
        assert all(c.hmac in (None, f"{c.name}_hmac") for c in entry.spec.columns)
    assert catalog.version_table == "alembic_version_encryption"


def test_every_snapshot_column_is_a_text_column_of_the_application() -> None:
    for entry in load_catalog().entries:
        app = metadata.tables[entry.table]
        for col in entry.spec.columns:
            for name in (col.name, col.hmac):
                if name is not None:
                    assert isinstance(app.c[name].type, sa.Text), (entry.table, name)
                    assert app.c[name].nullable


def test_lookups() -> None:
    catalog = load_catalog()
    assert catalog.revision_of("sessions") == "0006_sessions"
    assert catalog.table_of("0003_guest_orders") == "guest_orders"
    assert catalog.table_of("9999_other") is None
    assert catalog.applied_tables(None) == ()
    assert catalog.applied_tables("0002_invitations") == ("users", "invitations")
    with pytest.raises(KeyError):
        catalog.applied_tables("9999_other")
    with pytest.raises(KeyError):
        catalog.spec("no_such_table")


def test_the_chain_is_read_from_the_revisions_not_from_the_cache() -> None:
    """catalog_of reads the chain afresh (load_catalog caches it): same chain, base first."""
    catalog = catalog_of(Config(str(PROJECT_INI)))
    cached = load_catalog()
    assert (catalog.revisions, catalog.tables) == (cached.revisions, cached.tables)
    assert catalog.version_table == "alembic_version_encryption"
    assert catalog.tables[0] == "users"
    last = catalog.entries[-1]
    assert last == Entry("0007_consent_records", catalog.spec("consent_records"))
    assert last.spec.columns == (ColumnSpec("ip_address"),)


def _chain(tmp_path: Path, revision_body: str, ini_extra: str = "") -> Path:
    """A one-revision chain in tmp_path; returns its alembic.ini."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "0001_a.py").write_text(
        'revision = "0001_a"\ndown_revision = None\n' + revision_body
    )
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {tmp_path}\n{ini_extra}")
    return ini


SNAPSHOT_A = """
import sqlalchemy as sa
from app_models.specs import ColumnSpec, TableSpec
SNAPSHOT = TableSpec(sa.table("a", sa.column("id"), sa.column("x")), (ColumnSpec("x"),))
"""


def test_a_chain_without_version_table_uses_alembics_default(tmp_path: Path) -> None:
    catalog = catalog_of(Config(str(_chain(tmp_path, SNAPSHOT_A))))
    assert catalog.revisions == ("0001_a",)
    assert catalog.version_table == DEFAULT_VERSION_TABLE == "alembic_version"


def test_load_catalog_reads_the_path_it_is_given(tmp_path: Path) -> None:
    ini = _chain(tmp_path, SNAPSHOT_A, "version_table = other_version\n")
    catalog = load_catalog(ini)
    assert (catalog.tables, catalog.version_table) == (("a",), "other_version")
    assert load_catalog(str(ini)) is catalog  # read once per path


def test_a_missing_alembic_ini_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"alembic\.ini not found at .*nowhere\.ini"):
        load_catalog(tmp_path / "nowhere.ini")


@pytest.mark.parametrize("body", ["SNAPSHOT = 'users'\n", "TABLE = 'users'\n"])
def test_a_revision_without_snapshot_is_a_configuration_error(tmp_path: Path, body: str) -> None:
    ini = _chain(tmp_path, body)
    with pytest.raises(ConfigurationError) as excinfo:
        catalog_of(Config(str(ini)))
    assert str(excinfo.value) == (
        f"revision 0001_a ({tmp_path / 'versions' / '0001_a.py'}) has no SNAPSHOT TableSpec: "
        "every revision of this chain migrates one table and says which in SNAPSHOT"
    )


def test_config_path_alembic_config_then_cwd_then_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALEMBIC_CONFIG", raising=False)
    assert config_path() == PROJECT_INI
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    assert config_path() == Path("alembic.ini")
    monkeypatch.setenv("ALEMBIC_CONFIG", "/somewhere/else.ini")
    assert config_path() == Path("/somewhere/else.ini")
    monkeypatch.setenv("ALEMBIC_CONFIG", "")
    assert config_path() == Path("alembic.ini")


def test_unknown_names_are_key_errors_naming_them() -> None:
    catalog = load_catalog()
    with pytest.raises(KeyError) as excinfo:
        catalog.spec("no_such_table")
    assert excinfo.value.args == ("no_such_table",)
    with pytest.raises(KeyError) as excinfo:
        catalog.applied_tables("9999_other")
    assert excinfo.value.args == ("9999_other",)
    assert catalog.applied_tables("0007_consent_records") == catalog.tables
    assert catalog.applied_tables("0001_users") == ("users",)
