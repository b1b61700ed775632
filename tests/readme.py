"""The README as a test plan: its shell blocks, the commands in them, and the markers.

A ```` ```bash ```` block of README.md is run by ``tests/integration/test_readme.py``
unless the line before it says why not, visibly, in the form
``*Not run here: <reason>.*``. Commands are the block's lines, with backslash
continuations joined; comments stay (bash ignores them).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

NOT_RUN = re.compile(r"^\*Not run here: (?P<why>.+)\.\*$")
FENCE = re.compile(r"^\s*```(?P<lang>\S*)\s*$")
#: the demo's default ports, which a test may move through the documented options
DEMO_PORTS = {
    "prom": 9090,
    "alertmanager": 9093,
    "workload": 9101,
    "detector": 9109,
    "webhook": 8080,
}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # why the README says it is not run here, or None

    @property
    def commands(self) -> list[str]:
        out: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = raw.strip()
            if not line and not pending:
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            out.append(pending + line)
            pending = ""
        if pending:
            out.append(pending.rstrip())
        return out


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README (any language), in order."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i, m.group("lang"), []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        indent = len(lines[start]) - len(lines[start].lstrip())
        text_ = "\n".join(b[indent:] if b[:indent].isspace() else b for b in body)
        out.append(Block(start + 1, lang, text_, marker.group("why") if marker else None))
        i += 1
    return out


def shell_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang in ("bash", "sh", "shell", "console")]


def run_blocks() -> list[Block]:
    """The shell blocks the README test runs, in README order."""
    return [b for b in shell_blocks() if b.not_run is None]


def inline_commands() -> list[str]:
    """Commands quoted inline in the prose (``aiops ...``, ``bash scripts/...``)."""
    text = README.read_text()
    prose = "\n".join(
        line for line in _outside_fences(text.splitlines()) if not line.startswith("|")
    )
    spans = re.findall(r"`([^`\n]+)`", prose.replace("\n", " "))
    return [s.strip() for s in spans if re.match(r"^(\.venv/bin/)?aiops |^bash scripts/", s)]


def _outside_fences(lines: list[str]) -> list[str]:
    out, inside = [], False
    for line in lines:
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return out


def words(command: str) -> list[str]:
    """The command's words up to a comment or a pipe, optional ``[...]`` parts opened."""
    command = re.sub(r"\s#.*$", "", command)
    command = command.split(" | ")[0]
    command = command.replace("[", " ").replace("]", " ")
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def with_ports(command: str, ports: dict[str, int]) -> str:
    """``command`` with the demo's default ports replaced by ``ports`` (same keys)."""
    by_default = {str(DEMO_PORTS[k]): str(v) for k, v in ports.items()}
    return re.sub(
        r"127\.0\.0\.1:(\d+)\b",
        lambda m: f"127.0.0.1:{by_default.get(m.group(1), m.group(1))}",
        command,
    )
