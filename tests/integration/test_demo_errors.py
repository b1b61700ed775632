"""What a newcomer can meet on the way to ``bash scripts/demo.sh``: one line each, that
says what to do, never a traceback; and a failure half-way stops what was started.

The commands run as the README gives them (``bash scripts/demo.sh ...``,
``bash scripts/setup.sh``) from the repository root. Missing packages are made
missing for real in a private mount namespace (``unshare -m``: the binary is hidden
under an empty bind mount, for that process tree only), and an installer that
fails is a stand-in ``apt-get`` first on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from demo.prometheus import free_port, port_is_free
from demo.up import MARKER, PIDFILE, DemoError, prepare_workdir
from tests.conftest import require_binary
from tests.integration.conftest import clean_env, poll
from tests.readme import DEMO_PORTS, REPO

pytestmark = pytest.mark.integration


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def demo_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 300, **kw):
    return subprocess.run(
        ["bash", "scripts/demo.sh", *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def free_ports() -> list[str]:
    return [a for name in DEMO_PORTS for a in (f"--{name}-port", str(free_port()))]


def hidden(binary: str, command: str, *, fake_apt: Path | None = None) -> list[str]:
    """``command`` in a mount namespace where ``binary`` is not installed."""
    require_binary("unshare")
    path = f"{fake_apt}:" if fake_apt else ""
    return [
        "unshare",
        "-m",
        "bash",
        "-c",
        f"mount --bind /dev/null {binary} && PATH={path}$PATH exec {command}",
    ]


def run_hidden(binary: str, command: str, *, fake_apt: Path | None = None):
    return subprocess.run(
        hidden(binary, command, fake_apt=fake_apt),
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def failing_apt(tmp_path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = update ]; then exit 0; fi\n'
        "echo 'E: Unable to locate package prometheus-alertmanager' >&2\nexit 100\n"
    )
    apt.chmod(0o755)
    return bin_dir


def test_a_package_that_cannot_be_installed_is_one_line_naming_it(failing_apt):
    out = run_hidden(
        "/usr/bin/prometheus-alertmanager", "bash scripts/setup.sh", fake_apt=failing_apt
    )
    assert out.returncode == 1, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert line.startswith("setup: could not install prometheus-alertmanager"), line
    assert "Unable to locate package" in line and "sudo apt-get install" in line, line


def test_no_permission_to_install_is_one_line_saying_how():
    require_binary("setpriv")
    # a user who is not root (nobody), on a machine without sudo, and a package missing;
    # in a folder that user can read (pytest's own are root's alone)
    base = Path(tempfile.mkdtemp(prefix="aiops-nobody-"))
    try:
        base.chmod(0o755)
        no_sudo = base / "bin"
        no_sudo.mkdir()
        tools = ("bash", "id", "awk", "dirname", "mktemp", "grep", "python3", "git", "curl")
        for tool in (*tools, "apt-get"):
            found = next(
                (p for p in (f"/usr/bin/{tool}", f"/bin/{tool}") if Path(p).exists()), None
            )
            if found:
                (no_sudo / tool).symlink_to(found)
        (base / "scripts").mkdir()
        shutil.copy2(REPO / "scripts/setup.sh", base / "scripts/setup.sh")
        command = (
            f"setpriv --reuid=65534 --regid=65534 --clear-groups env PATH={no_sudo}"
            f" bash {base}/scripts/setup.sh"
        )
        out = run_hidden("/usr/bin/prometheus", command)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert out.returncode == 1, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert line.startswith("setup: missing Debian packages: prometheus"), line
    assert "run this as root" in line and "apt-get install prometheus" in line, line


def test_a_missing_prometheus_is_one_line_from_the_demo():
    # setup.sh cannot see the hole either, so take the demo itself, installed already
    aiops = REPO / ".venv/bin/aiops"
    out = run_hidden("/usr/bin/prometheus", f"env PATH=/usr/sbin:/sbin {aiops} demo up")
    assert out.returncode == 2, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert line.startswith("aiops: demo: prometheus is not installed"), line
    assert "apt-get install prometheus" in line


def test_a_port_in_use_is_one_line_naming_the_option():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = free_ports()
        args[args.index("--webhook-port") + 1] = str(port)
        out = demo_sh(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert f"--webhook-port: port {port} is already in use" in line, line
    assert "pass --webhook-port with a free port" in line


def test_a_folder_of_a_running_demo_is_refused_in_one_line(tmp_path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / MARKER).write_text("")
    (workdir / PIDFILE).write_text(f"{os.getpid()}\n")  # this process: alive
    (workdir / "keep").write_text("the running demo's data")
    out = demo_sh("--workdir", str(workdir), *free_ports())
    assert out.returncode == 2, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert f"another demo (pid {os.getpid()}) is running in {workdir}" in line, line
    assert (workdir / "keep").exists()  # nothing of the running demo was touched


def test_a_folder_that_is_not_a_demo_folder_is_never_emptied(tmp_path):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "thesis.tex").write_text("precious")
    out = demo_sh("--workdir", str(workdir), *free_ports())
    assert out.returncode == 2, out.stdout + out.stderr
    assert "is not empty and not a demo folder" in one_line(out.stderr)
    assert (workdir / "thesis.tex").read_text() == "precious"


def test_a_stale_demo_folder_of_an_earlier_run_is_emptied(tmp_path):
    workdir = tmp_path / "var" / "demo"
    (workdir / "data").mkdir(parents=True)
    (workdir / MARKER).write_text("")
    (workdir / "data" / "old-block").write_text("x")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (workdir / PIDFILE).write_text(f"{dead.pid}\n")  # a demo that died without cleaning up
    prepare_workdir(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == sorted([MARKER, PIDFILE])
    assert (workdir / PIDFILE).read_text().strip() == str(os.getpid())
    (workdir / PIDFILE).write_text("1\n")  # pid 1 is alive: a running demo
    with pytest.raises(DemoError, match="another demo"):
        prepare_workdir(workdir)


@pytest.mark.timeout(300)
def test_a_failure_half_way_stops_what_was_started_and_is_one_line(tmp_path):
    """Alertmanager cannot start: Prometheus, already running, is stopped again."""
    require_binary("/usr/bin/prometheus")
    fake = tmp_path / "alertmanager"
    fake.write_text("#!/bin/sh\necho 'fake alertmanager: refusing to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    args = free_ports()
    prom_port = int(args[args.index("--prom-port") + 1])
    workdir = tmp_path / "var" / "demo"
    command = (
        f"bash -c 'mount --bind {fake} /usr/bin/prometheus-alertmanager &&"
        f" exec bash scripts/demo.sh --hours 1 --workdir {workdir} {' '.join(args)}'"
    )
    out = subprocess.run(
        ["unshare", "-m", "bash", "-c", command],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    line = one_line(out.stderr)
    assert line.startswith("aiops: demo: alertmanager exited with 3"), line
    assert f"(logs in {workdir})" in line
    assert "stopped: alertmanager, prometheus, demo workload" in out.stdout, out.stdout
    poll(lambda: port_is_free(prom_port), timeout=30, what="Prometheus' port to be free")
    assert not (workdir / PIDFILE).exists()
