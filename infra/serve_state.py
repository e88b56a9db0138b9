"""The state file of ``splatpack serve``, stale-run recovery, and where ``keys`` finds the
database.

``serve`` writes ``<data_dir>/serve.json`` (pid and start time of serve and of its API
child, host, port, the runner's lease owner name) once it runs, and removes it when it
stops. A later ``serve`` on the same data directory reads it
(:func:`take_over`):

- the serve it names still runs: refuse (:class:`ServeAlreadyRunning`), saying where;
- it is gone (killed, crashed): its API child, if still alive (a ``serve`` older than
  the parent-death signal, or one stopped in a debugger), is stopped; the file is
  removed; the caller gets the dead runner's lease owner name so it can hand its jobs
  back to the queue at once (``infra.jobs.requeue_leases_of``) instead of waiting for
  the leases to run out; and the embedded Postgres it left running is adopted (this
  serve stops it on exit).

Processes are recognised by pid *and* start time (``infra.supervise``), so a reused
pid is never mistaken for the old serve or killed.

``keys create`` (:func:`keys_database_url`) uses ``SPLATPACK_DATABASE_URL`` when set,
else the embedded database under ``data_dir`` when one exists there; without either it
refuses and says how to point it at the server's database (it used to create a new,
empty database whose keys the running server did not know). A serve also registers
itself in the user's state directory (``$XDG_STATE_HOME/splatpack/serves``, default
``~/.local/state``), so ``keys create`` run from another directory finds the one
running server and uses its data directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.settings import Settings
from infra.supervise import (
    child_popen_kwargs,
    cmdline,
    is_alive,
    port_problem,
    process_start_ticks,
    stop_process_group,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

_log = logging.getLogger(__name__)

STATE_FILE = "serve.json"


class ServeAlreadyRunning(ValueError):
    """Another ``serve`` runs on this data directory."""


class KeysDatabaseNotFound(ValueError):
    """``keys create`` found no server database to add the key to."""


@dataclass
class ServeState:
    pid: int
    start_ticks: int | None
    host: str
    port: int
    data_dir: str
    worker_id: str
    api_pid: int | None = None
    api_start_ticks: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class TakeOver:
    """What :func:`take_over` found of an earlier serve on this data directory."""

    previous: ServeState | None = None  # a serve that died without cleaning up
    stopped_api_pid: int | None = None  # its API child, stopped here


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATE_FILE


def registry_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "splatpack" / "serves"


def _registry_entry(data_dir: Path) -> Path:
    return registry_dir() / f"{uuid.uuid5(uuid.NAMESPACE_URL, str(data_dir.absolute())).hex}.json"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_state(path: Path) -> ServeState | None:
    try:
        payload = json.loads(path.read_text())
        return ServeState(**payload)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        _log.warning("ignoring unreadable serve state %s (%s)", path, err)
        return None


def _is_serve(state: ServeState) -> bool:
    return is_alive(state.pid, state.start_ticks) and "serve" in cmdline(state.pid)


def _is_our_api(state: ServeState) -> bool:
    if state.api_pid is None or not is_alive(state.api_pid, state.api_start_ticks):
        return False
    return any("service.app" in part for part in cmdline(state.api_pid))


def take_over(data_dir: Path) -> TakeOver:
    """Make ``data_dir`` free for a new serve (see the module doc)."""
    path = state_path(data_dir)
    state = read_state(path)
    if state is None:
        return TakeOver()
    if _is_serve(state):
        raise ServeAlreadyRunning(
            f"splatpack serve (pid {state.pid}) already runs on {Path(data_dir).absolute()} "
            f"at {state.url}; use it, stop it (Ctrl-C or kill {state.pid}), or give this one "
            "another SPLATPACK_DATA_DIR"
        )
    result = TakeOver(previous=state)
    if _is_our_api(state):
        assert state.api_pid is not None
        _log.warning("stopping the API (pid %d) a dead serve left behind", state.api_pid)
        stop_process_group(state.api_pid)
        result.stopped_api_pid = state.api_pid
    path.unlink(missing_ok=True)
    _registry_entry(Path(state.data_dir)).unlink(missing_ok=True)
    return result


def new_worker_id() -> str:
    return f"serve:{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _register(state: ServeState) -> None:
    data_dir = Path(state.data_dir)
    payload = asdict(state)
    _write_json(state_path(data_dir), payload)
    with contextlib.suppress(OSError):  # a read-only home only loses the lookup from elsewhere
        _write_json(_registry_entry(data_dir), payload)


def _unregister(data_dir: Path) -> None:
    for path in (state_path(data_dir), _registry_entry(data_dir)):
        current = read_state(path)
        if current is not None and current.pid == os.getpid():
            path.unlink(missing_ok=True)


class ServeSupervisor:
    """What ``serve`` calls, in order: :meth:`start` (before printing anything: a live serve
    on the data directory or a busy port is a ``ValueError`` with the reason), then
    :meth:`recover` once the database is up, ``Popen(..., **child_popen_kwargs())`` for the
    API, :meth:`register` with its pid, and :meth:`close` in ``finally``."""

    def __init__(self, data_dir: Path, host: str, port: int, taken: TakeOver) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port
        self.taken = taken
        self.worker_id = new_worker_id()  # the runner's lease owner name, kept in the file

    @classmethod
    def start(cls, data_dir: Path, host: str, port: int) -> ServeSupervisor:
        taken = take_over(Path(data_dir))
        problem = port_problem(host, port)
        if problem:
            raise PortBusy(
                f"{problem}; stop what holds it or pick another port (--port N or "
                "SPLATPACK_API_PORT)"
            )
        return cls(Path(data_dir), host, port, taken)

    def recover(self, settings: Settings, session_factory: sessionmaker[Session]) -> list[Any]:
        """After a crashed serve: adopt its embedded Postgres and re-queue its jobs now."""
        previous = self.taken.previous
        if previous is None:
            return []
        from infra.db import adopt_embedded
        from infra.jobs import requeue_leases_of

        adopt_embedded(settings)  # a no-op unless this process attached to an embedded server
        with session_factory.begin() as session:
            requeued = requeue_leases_of(session, previous.worker_id)
        print(
            f"recovered from a serve that stopped without cleaning up (pid {previous.pid}): "
            f"{len(requeued)} running job(s) back in the queue"
            + (
                f", its API (pid {self.taken.stopped_api_pid}) stopped"
                if self.taken.stopped_api_pid
                else ""
            ),
            flush=True,
        )
        return requeued

    @staticmethod
    def child_popen_kwargs() -> dict[str, Any]:
        return child_popen_kwargs()

    def register(self, api_pid: int) -> ServeState:
        state = this_process_state(self.host, self.port, self.data_dir, self.worker_id)
        state.api_pid = api_pid
        state.api_start_ticks = process_start_ticks(api_pid)
        _register(state)
        return state

    def close(self) -> None:
        _unregister(self.data_dir)


class PortBusy(ValueError):
    """The API's port cannot be bound."""


def running_serves() -> list[ServeState]:
    """Serves registered for this user that still run."""
    found = []
    with contextlib.suppress(OSError):
        for entry in sorted(registry_dir().glob("*.json")):
            state = read_state(entry)
            if state is not None and _is_serve(state):
                found.append(state)
    return found


def this_process_state(host: str, port: int, data_dir: Path, worker_id: str) -> ServeState:
    return ServeState(
        pid=os.getpid(),
        start_ticks=process_start_ticks(os.getpid()),
        host=host,
        port=port,
        data_dir=str(Path(data_dir).absolute()),
        worker_id=worker_id,
    )


def keys_database_url(settings: Settings) -> str:
    """The database ``keys create`` should write to (see the module doc)."""
    from infra.db import resolve_database_url

    if settings.database_url:
        return resolve_database_url(settings)
    if (Path(settings.data_dir) / "pg" / "PG_VERSION").exists():
        return resolve_database_url(settings)
    serves = running_serves()
    if len(serves) == 1:
        print(
            f"using the database of the splatpack serve running at {serves[0].url} "
            f"(data directory {serves[0].data_dir})",
            file=sys.stderr,
        )
        found = settings.model_copy(update={"data_dir": Path(serves[0].data_dir)})
        return resolve_database_url(found)
    running = "".join(f"\n  {s.url}: SPLATPACK_DATA_DIR={s.data_dir}" for s in serves)
    raise KeysDatabaseNotFound(
        f"no splatpack database found: SPLATPACK_DATABASE_URL is not set and there is no "
        f"embedded database under {Path(settings.data_dir).absolute() / 'pg'}. Run "
        "'splatpack keys create' in the directory where 'splatpack serve' runs (it keeps its "
        "data in ./var), or set SPLATPACK_DATA_DIR to the server's data directory, or "
        "SPLATPACK_DATABASE_URL to the server's database"
        + (f". Running servers:{running}" if running else "")
    )
