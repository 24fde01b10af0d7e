"""The layering of docs/ARCHITECTURE.md §2 is enforced by import-linter contracts (.importlinter).

``make test`` runs ``lint-imports`` first; this test runs it as well and checks that a wrong-way
import is really caught, on a copy of the package with one such import added.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (make setup installs it)")
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(exe), "--no-cache", "--config", str(cwd / ".importlinter")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_contracts_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_wrong_way_import_breaks_a_contract(tmp_path):
    pkg = tmp_path / "fhgs_ros"
    shutil.copytree(ROOT / "fhgs_ros", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    geo = pkg / "core" / "geometry.py"
    geo.write_text(geo.read_text() + "\nfrom fhgs_ros.online import engine as _wrong_way  # noqa: E402,F401\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert "BROKEN" in r.stdout and "fhgs_ros.core.geometry -> fhgs_ros.online.engine" in r.stdout, r.stdout
