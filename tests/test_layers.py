"""The layering contract (issue 19): ``lint-imports``, as ``scripts/test.sh`` runs it, keeps
the import-linter contracts of ``pyproject.toml``, and breaks on an import that points up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("aiops", "demo", "runbooks", "training", "detector", "feature_store", "sql")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_contracts_are_kept():
    r = lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "The shared kernel (aiops.core) imports nothing of the project KEPT" in r.stdout
    assert "Domains import the kernel and lower domains only KEPT" in r.stdout
    assert "Contracts: 2 kept, 0 broken." in r.stdout


def test_an_import_that_points_up_breaks_the_build(tmp_path):
    """A copy of the code where the kernel imports the detector: both contracts break."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    errors = tmp_path / "aiops" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport detector.cycle  # noqa: E402\n")
    r = lint(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Contracts: 0 kept, 2 broken." in r.stdout
    assert "aiops.core.errors -> detector.cycle" in r.stdout
