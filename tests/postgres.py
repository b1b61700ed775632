"""A throwaway real PostgreSQL server for tests.

:class:`PostgresProcess` runs Debian's ``/usr/lib/postgresql/<N>/bin`` binaries (the
highest ``N`` installed): ``initdb`` into a fresh temporary directory (trust auth, UTF8,
no sync), then ``postgres`` listening only on 127.0.0.1 on a free port, with its unix
socket inside that directory and fsync off. initdb and postgres refuse to run as root,
so when the tests run as root (CI) the binaries run as the ``postgres`` system user.

If ``AIOPS_TEST_POSTGRES_URL`` is set, that server is used instead and nothing is
started; databases are created on it (and the per-test ones dropped again on stop).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from demo.prometheus import free_port

#: Use this server (a SQLAlchemy or libpq URL) instead of starting one.
URL_ENV = "AIOPS_TEST_POSTGRES_URL"
#: The database every session gets; ``PostgresProcess.url`` points at it.
DEFAULT_DATABASE = "aiops_test"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
DRIVER = "postgresql+psycopg"
_BINARIES = ("initdb", "pg_ctl", "postgres")


class PostgresError(RuntimeError):
    pass


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.name)) or (0,)


def find_bin_dir() -> Path | None:
    """Debian's newest ``/usr/lib/postgresql/<N>/bin`` with initdb, pg_ctl and postgres."""
    candidates = sorted(
        (p for p in DEBIAN_ROOT.glob("*") if p.is_dir()), key=_version_key, reverse=True
    )
    for version_dir in candidates:
        bin_dir = version_dir / "bin"
        if all(os.access(bin_dir / name, os.X_OK) for name in _BINARIES):
            return bin_dir
    initdb = shutil.which("initdb")  # a non-Debian install on PATH
    if initdb and all(shutil.which(name) for name in _BINARIES):
        return Path(initdb).parent
    return None


def _as_system_user() -> list[str]:
    """The command prefix that drops root to the ``postgres`` user (empty if not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"running as root but there is no {SYSTEM_USER!r} user to run PostgreSQL as "
            "(install the Debian package postgresql)"
        ) from None
    if shutil.which("setpriv"):  # execs in place: the Popen pid is the postmaster itself
        return [
            "setpriv",
            f"--reuid={SYSTEM_USER}",
            f"--regid={SYSTEM_USER}",
            "--init-groups",
            "--",
        ]
    if shutil.which("runuser"):
        return ["runuser", "-u", SYSTEM_USER, "--"]
    raise PostgresError("running as root and neither setpriv nor runuser is installed")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _sqlalchemy_url(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql") or parsed.drivername.startswith(
        "postgresql+"
    ):
        return parsed.set(drivername=DRIVER)
    raise PostgresError(f"{URL_ENV} is not a PostgreSQL URL: {parsed.drivername}")


def _connect_kwargs(url: URL, database: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dbname": database, "connect_timeout": 5}
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
    ):
        if value is not None:
            kwargs[key] = value
    kwargs.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    return kwargs


class PostgresProcess:
    """A PostgreSQL server for tests: a throwaway local cluster, or ``AIOPS_TEST_POSTGRES_URL``.

    ``start()`` brings it up and creates :data:`DEFAULT_DATABASE` (``.url``);
    ``create_database()`` makes a fresh empty database and returns its URL; ``stop()``
    shuts the server down and removes its directory. Also a context manager.
    """

    def __init__(
        self,
        base_dir: str | Path | None = None,
        *,
        external_url: str | None = None,
        bin_dir: str | Path | None = None,
        port: int | None = None,
    ) -> None:
        self.external = _sqlalchemy_url(external_url) if external_url else None
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.port = port or 0
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._created: list[str] = []

    # -- where things are ------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            found = find_bin_dir()
            if found is None:
                raise PostgresError(
                    f"PostgreSQL is not installed (no {DEBIAN_ROOT}/<N>/bin/initdb); "
                    "run ./scripts/setup.sh or set " + URL_ENV
                )
            self._bin_dir = found
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "postgres.log"

    @property
    def server_url(self) -> URL:
        """The server's URL without a database."""
        if self.external is not None:
            return self.external.set(database=None)
        return URL.create(DRIVER, username=SUPERUSER, host="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :data:`DEFAULT_DATABASE`.

        E.g. ``postgresql+psycopg://postgres@127.0.0.1:PORT/aiops_test``.
        """
        return self.url_for(DEFAULT_DATABASE)

    def url_for(self, database: str) -> str:
        return self.server_url.set(database=database).render_as_string(hide_password=False)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PostgresProcess:
        if self.external is None:
            self._start_local(timeout)
        else:
            self._wait_ready(timeout)
        self.create_database(DEFAULT_DATABASE, if_missing=True, track=False)
        return self

    def _start_local(self, timeout: float) -> None:
        prefix = _as_system_user()
        self.root = Path(tempfile.mkdtemp(prefix="aiops-pg-", dir=self.base_dir))
        atexit.register(self.stop)
        try:
            if prefix:
                self._check_reachable(self.root)
                shutil.chown(self.root, SYSTEM_USER, SYSTEM_USER)
            self._run(
                [
                    *prefix,
                    str(self.bin_dir / "initdb"),
                    f"--pgdata={self.data_dir}",
                    f"--username={SUPERUSER}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                what="initdb",
            )
            for attempt in range(3):  # another process may grab the free port first
                if attempt or not self.port:
                    self.port = free_port()
                self._launch(prefix)
                try:
                    self._wait_ready(timeout)
                    return
                except PostgresError:
                    if attempt < 2 and "already in use" in self.log_tail(20):
                        self._stop_server()
                        continue
                    raise
        except BaseException:
            self.stop()
            raise

    def _launch(self, prefix: list[str]) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_child_env(),
                start_new_session=True,  # ^C in pytest is not also sent to the server
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PostgresError(
                    f"postgres exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with self._admin(connect_timeout=2) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError as exc:  # not accepting connections yet
                last = exc
            time.sleep(0.1)
        where = self.log_tail() if self.external is None else str(last)
        raise PostgresError(f"postgres not ready after {timeout:g}s: {where}")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down and remove its directory (drop test databases if external)."""
        atexit.unregister(self.stop)
        if self.external is not None:
            self._drop_created()
            return
        self._stop_server(timeout)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def restart(self, timeout: float = 60.0, *, down: Callable[[], None] | None = None) -> None:
        """Stop the local server (fast shutdown: clients are cut off) and start it again on
        the same port and data; ``down`` runs while it is stopped."""
        if self.external is not None:
            raise PostgresError(f"cannot restart the server of {URL_ENV}")
        self._stop_server(timeout)
        if down is not None:
            down()
        self._launch(_as_system_user())
        self._wait_ready(timeout)

    def _stop_server(self, timeout: float = 30.0) -> None:
        if self.root is None or not (self.data_dir / "postmaster.pid").exists():
            self._reap(timeout)
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [
                    *_as_system_user(),
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=_child_env(),
                cwd=self.root,
                timeout=timeout + 5,
            )
        pid_file = self.data_dir / "postmaster.pid"
        if self.proc is not None and self.proc.poll() is None and pid_file.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):  # pg_ctl did not do it
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
        self._reap(timeout)

    def _reap(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None

    def __enter__(self) -> PostgresProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------

    def create_database(
        self, name: str | None = None, *, if_missing: bool = False, track: bool = True
    ) -> str:
        """Create an empty database (a unique name if none is given); its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if len(name.encode()) > 63:
            raise ValueError(f"database name longer than 63 bytes: {name!r}")
        with self._admin() as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (name,)
            ).fetchone()
            if not (exists and if_missing):
                conn.execute(
                    sql.SQL("create database {} template template0 encoding 'UTF8'").format(
                        sql.Identifier(name)
                    )
                )
                if track:
                    self._created.append(name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    def _drop_created(self) -> None:
        for name in list(self._created):
            with contextlib.suppress(psycopg.Error):
                self.drop_database(name)

    def _admin(self, **overrides: Any) -> psycopg.Connection[Any]:
        """An autocommit connection to the maintenance database."""
        database = (self.external.database if self.external is not None else None) or "postgres"
        kwargs = _connect_kwargs(self.server_url, database)
        kwargs.update(overrides)
        return psycopg.connect(autocommit=True, **kwargs)

    # -- helpers ---------------------------------------------------------------------

    def log_tail(self, lines: int = 10, log_file: Path | None = None) -> str:
        """The last ``lines`` non-blank lines of the server log (or of ``log_file``)."""
        try:
            text = (log_file or self.log_file).read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no log)"
        kept = [line for line in text.splitlines() if line.strip()]
        return " | ".join(kept[-lines:]) or "(empty log)"

    def _run(self, cmd: list[str], *, what: str) -> None:
        assert self.root is not None
        log_file = self.root / f"{what}.log"
        with log_file.open("ab") as log:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=_child_env(),
                timeout=120,
            )
        if done.returncode != 0:
            raise PostgresError(
                f"{what} exited with {done.returncode}: {self.log_tail(log_file=log_file)}"
            )

    @staticmethod
    def _check_reachable(path: Path) -> None:
        """As root, the ``postgres`` user must be able to reach ``path`` through its parents."""
        for parent in path.resolve().parents:
            if not os.stat(parent).st_mode & 0o001:
                raise PostgresError(
                    f"{parent} is not searchable by the {SYSTEM_USER} user; "
                    f"put the PostgreSQL directory elsewhere (e.g. {tempfile.gettempdir()})"
                )


def postgres_url_or_start(tmp_dir: str | Path | None = None) -> PostgresProcess:
    """The server named by ``AIOPS_TEST_POSTGRES_URL``, or a new local one under ``tmp_dir``.

    Either way the result is started (``.url`` works) and must be stopped by the caller.
    """
    external = os.environ.get(URL_ENV, "").strip()
    if external:
        return PostgresProcess(external_url=external).start()
    return PostgresProcess(tmp_dir).start()
