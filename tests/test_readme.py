"""The README's commands exist: every ``aiops`` subcommand and flag it shows, every
script and benchmark it names, and every shell block is either run by
``tests/integration/test_readme.py`` or says visibly why not.

No demo is started here: these fail in seconds when a command or a flag is renamed
or removed, or when a README block gains a command that no test runs.
"""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
from typer.main import get_command

from aiops.cli import app
from tests.integration.test_readme import check_for
from tests.readme import README, REPO, inline_commands, run_blocks, shell_blocks, words

CLI = get_command(app)


def documented_commands() -> list[str]:
    """Every command the README shows, in blocks and in the prose."""
    out = [c for b in shell_blocks() for c in b.commands]
    return out + inline_commands()


def _resolve(tokens: list[str]) -> tuple[click.Command, list[str]]:
    """The click command that ``aiops TOKENS`` runs, and the tokens after its name."""
    cmd: click.Command = CLI
    rest = list(tokens)
    while _is_group(cmd) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        if sub is None:
            break
        cmd, rest = sub, rest[1:]
    return cmd, rest


def _is_group(cmd: object) -> bool:
    return hasattr(cmd, "list_commands")  # typer's groups need not be click's own class


def _options(cmd: click.Command) -> set[str]:
    names = {"--help"}
    for param in cmd.params:
        names.update(getattr(param, "opts", []))
        names.update(getattr(param, "secondary_opts", []))
    return names


def _flags(rest: list[str]) -> list[str]:
    return [t.split("=")[0] for t in rest if t.startswith("--")]


def aiops_invocations() -> list[list[str]]:
    out = []
    for command in documented_commands():
        w = words(command)
        while w and re.match(r"^[A-Z_]+=", w[0]):  # VAR=value aiops ...
            w = w[1:]
        if w and w[0] in ("aiops", ".venv/bin/aiops"):
            out.append(w[1:])
        elif w[:2] == ["bash", "scripts/demo.sh"]:
            out.append(["demo", "up", *w[2:]])  # scripts/demo.sh is `aiops demo up`
    return out


def test_the_readme_shows_aiops_commands_at_all():
    assert len(aiops_invocations()) > 20  # the parser below must not go blind


@pytest.mark.parametrize("tokens", aiops_invocations(), ids=lambda t: " ".join(t)[:60])
def test_every_documented_aiops_command_and_flag_exists(tokens):
    cmd, rest = _resolve(tokens)
    assert cmd is not CLI, f"aiops {' '.join(tokens)}: no such subcommand"
    if _is_group(cmd):  # e.g. `aiops killswitch` named alone in the prose
        assert not rest or rest[0].startswith("-"), f"aiops {' '.join(tokens)}"
        return
    unknown = set(_flags(rest)) - _options(cmd)
    assert not unknown, f"aiops {' '.join(tokens)}: unknown options {sorted(unknown)}"


def test_every_documented_script_exists():
    for command in documented_commands():
        for path in re.findall(r"\b((?:scripts|bench)/[\w./-]+\.(?:sh|py))\b", command):
            assert (REPO / path).is_file(), f"{command!r}: {path} does not exist"


def test_every_benchmark_command_and_flag_the_readme_names_exists():
    text = README.read_text()
    commands = re.findall(r"`python (bench/\w+\.py)([^`]*)`", text)
    assert commands, "the README names its benchmarks"
    for path, args in commands:
        assert (REPO / path).is_file(), path
        flags = {a.split("=")[0] for a in args.split() if a.startswith("--")}
        if not flags:
            continue
        out = subprocess.run(
            [sys.executable, path, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-1000:]
        for flag in flags:
            assert flag in out.stdout, f"python {path}: no option {flag}"


def test_every_shell_block_is_run_or_says_why_not():
    ran = run_blocks()
    assert ran, "the README walkthrough has no block to run"
    for block in shell_blocks():
        if block.not_run is not None:
            assert len(block.not_run) > 10, f"README line {block.line}: say why it is not run"
            continue
        for command in block.commands:
            assert check_for(command) is not None, (
                f"README line {block.line}: {command!r} is neither run by"
                " tests/integration/test_readme.py nor marked '*Not run here: <why>.*'"
            )


def test_the_walkthrough_starts_with_the_demo_and_reads_the_audit_with_the_token():
    commands = [c for b in run_blocks() for c in b.commands]
    assert commands[0].startswith("bash scripts/demo.sh")
    audit = [c for c in commands if "/audit" in c]
    assert audit and all("$(cat var/demo/read-token)" in c for c in audit), audit


def test_every_benchmark_figure_carries_its_date_and_command():
    """A paragraph (or table caption) that quotes a benchmark names the command that
    printed it and the day it ran."""
    paragraphs = re.split(r"\n\s*\n", README.read_text())
    # a table row is a paragraph of its own: its figures need their own date
    units = [u for p in paragraphs for u in (p.splitlines() if p.startswith("|") else [p])]
    quoting = [u for u in units if re.search(r"`python bench/\w+\.py", u)]
    assert len(quoting) >= 5, "the README quotes its benchmarks"
    for u in quoting:
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", u), f"no date beside: {u[:200]!r}"
