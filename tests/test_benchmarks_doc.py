"""docs/benchmarks.md and the README's performance summary are generated from the
measurements in docs/benchmarks.json by bench/run.py, never edited by hand."""

from __future__ import annotations

import json
import re

from bench import run


def test_benchmark_document_is_generated_from_its_data():
    data = json.loads(run.DATA.read_text())
    assert run.DOC.read_text() == run.render(data)


def test_readme_summary_is_generated_from_the_same_data():
    data = json.loads(run.DATA.read_text())
    text = run.README.read_text()
    block = re.search(re.escape(run.START) + r".*?" + re.escape(run.END), text, re.S)
    assert block is not None and block.group(0) == run.readme_block(data)
    assert "docs/benchmarks.md" in block.group(0)


def test_every_part_was_measured_with_its_machine():
    data = json.loads(run.DATA.read_text())
    assert set(data) == set(run.PARTS)
    for part in data.values():
        assert {"cpu", "cores", "ram_gb", "os", "python", "numpy", "scikit-learn", "date"} <= set(
            part["machine"]
        )
