"""README's first command: the demo runs end to end (here without the install step)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app_models.demo", "--out", str(tmp_path / "demo")],
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
