"""The README's Guarantees section: numbered promises, each naming tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIXES = {"A/": "tests/adversarial/", "R/": "tests/runbooks/"}


def _section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Guarantees\n")
    return text[start : text.index("\n## ", start + 1)]


def test_every_promise_names_tests_that_exist():
    rows = [line for line in _section().splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) >= 20
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        names = re.findall(r"`([^`]*::test_\w+)`", row)
        assert names, row
        path = None
        for name in names:
            where, test = name.split("::")
            if where != "…":
                path = where
                for short, full in PREFIXES.items():
                    path = path.replace(short, full, 1) if path.startswith(short) else path
            assert path is not None, row
            source = (REPO / path).read_text()
            assert re.search(rf"^(async )?def {test}\(", source, re.M), f"{path}::{test}"
