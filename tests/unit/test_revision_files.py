"""Guards over every revision file (as Airflow checks its migrations) and the Alembic seam."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from context_encryption.catalog import load_catalog

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
FILES = sorted(VERSIONS.glob("*.py"))


def test_one_file_per_revision_of_the_chain() -> None:
    """File names are the revision ids (DESIGN's list: tests/unit/test_catalog.py)."""
    assert [f.stem for f in FILES] == list(load_catalog().revisions)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_revision_is_frozen_and_thin(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert "app_models.tables" not in imported, "a revision must not import live table models"
    assert ast.get_docstring(tree), "a revision explains itself in a module docstring"
    doc = ast.get_docstring(tree) or ""
    assert re.search(r"re-run is safe", doc)
    assert "Downgrade" in doc
    source = path.read_text()
    assert "sa.table(" in source, "a revision keeps its own frozen snapshot"
    assert f'revision = "{path.stem}"' in source


#: What only context_encryption/alembic_runtime.py may use: Alembic's private step machinery.
ALEMBIC_INTERNALS = frozenset({"opts", "RevisionStep", "MigrationStep", "HeadMaintainer"})
ROOT = VERSIONS.parents[1]
SOURCES = sorted(
    p
    for d in ("app_models", "context_encryption", "migrations", "bench")
    for p in (ROOT / d).rglob("*.py")
    if p.name != "alembic_runtime.py"
)


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_alembic_internals_only_in_alembic_runtime(path: Path) -> None:
    """One module is the seam with Alembic's internals, and says which version it checked."""
    tree = ast.parse(path.read_text())
    if not any(
        (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("alembic"))
        or (isinstance(n, ast.Import) and any(a.name.startswith("alembic") for a in n.names))
        for n in ast.walk(tree)
    ):
        return
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and (n.attr in ALEMBIC_INTERNALS or (n.attr.startswith("_") and not n.attr.endswith("__")))
        and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
    } | {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("alembic")
        for a in n.names
        if a.name in ALEMBIC_INTERNALS or a.name.startswith("_")
    }
    assert not used, f"{sorted(used)}: use context_encryption.alembic_runtime instead"


def test_alembic_runtime_names_the_version_its_internals_were_checked_against() -> None:
    source = (ROOT / "context_encryption" / "alembic_runtime.py").read_text()
    version = re.search(r'"alembic>=[\d.]+,<([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert version, "pyproject.toml pins an upper bound on alembic"
    checked = set(re.findall(r"Alembic (\d+\.\d+)\.\d+", source))
    assert checked, "each use of an Alembic internal names the version it was checked against"
    upper = tuple(int(x) for x in version.group(1).split("."))
    assert all(tuple(int(x) for x in v.split(".")) < upper for v in checked)
