"""Guards over every revision file, in the spirit of Airflow's migration checks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
FILES = sorted(VERSIONS.glob("*.py"))


def test_seven_revisions() -> None:
    assert [f.stem for f in FILES] == [
        "0001_users",
        "0002_invitations",
        "0003_guest_orders",
        "0004_delivery_addresses",
        "0005_notifications",
        "0006_sessions",
        "0007_consent_records",
    ]


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
