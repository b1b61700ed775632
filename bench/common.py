"""What the benchmark scripts share: their command line, a measurement in a fresh
process, peak RSS, medians, Markdown tables and the JSON they write.

Standard library only: ``bench/run.py`` imports the scripts for their tables without
loading the detector.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's argument parser, described by the first line of its docstring; the
    detector's own logging quietened to errors."""
    logging.basicConfig(level=logging.ERROR)
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fresh(script: str, *args: str, what: str) -> Any:
    """``python script args...`` in a fresh process (so its peak RSS is its own; hash
    seed 0): the JSON its last line prints. Exits with the child's errors if it fails."""
    proc = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if proc.returncode != 0:
        sys.exit(f"bench/{Path(script).name}: {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], *, first: Sequence[str] = ()) -> dict:
    """Each measurement's median over ``runs``; the keys in ``first`` keep the first run's."""
    return {
        key: runs[0][key] if key in first else statistics.median(r[key] for r in runs)
        for key in runs[0]
    }


def markdown_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, left: Sequence[int] = ()
) -> str:
    """A Markdown table; every column right-aligned but those numbered in ``left``."""
    align = ["---" if i in left else "---:" for i in range(len(columns))]
    lines = [columns, align, *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def write_json(path: Path | None, value: Any) -> None:
    """``value`` as indented JSON at ``path`` (its folders made); nothing without a path."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=1))
