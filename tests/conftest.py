"""Shared test helpers: real components are found or, in CI, required."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(path: str) -> str:
    """The binary's path; a missing binary fails in CI and skips elsewhere."""
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if found:
        return found
    message = f"{path} is not installed (run ./scripts/test.sh, which installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
