"""serve's process ownership with real processes: children die with a SIGKILLed parent, a
busy port is named with its holder, stale state is cleared (its orphan stopped), a live
serve is not taken over, and ``keys create`` refuses when it finds no server database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.serve_state import (
    KeysDatabaseNotFound,
    PortBusy,
    ServeAlreadyRunning,
    ServeState,
    ServeSupervisor,
    keys_database_url,
    state_path,
    take_over,
)
from infra.settings import Settings
from infra.supervise import is_alive, port_problem, process_start_ticks

SLEEPER = "import time; time.sleep(120)"


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_child_dies_with_its_sigkilled_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import subprocess, sys, time\n"
        "from infra.supervise import child_popen_kwargs\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], **child_popen_kwargs())\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        assert is_alive(child_pid)
        assert os.getpgid(child_pid) == child_pid  # its own group: a terminal ^C skips it
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone(child_pid), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_busy_port_is_named_with_its_holder() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        problem = port_problem("127.0.0.1", port)
        assert problem is not None and f"port {port}" in problem and "in use" in problem
        assert f"pid {os.getpid()}" in problem
        with pytest.raises(PortBusy, match="--port"):
            ServeSupervisor.start(Path("/nonexistent-data-dir"), "127.0.0.1", port)
    assert port_problem("127.0.0.1", port) is None


def _state(tmp_path: Path, pid: int, api_pid: int | None = None) -> ServeState:
    return ServeState(
        pid=pid,
        start_ticks=process_start_ticks(pid),
        host="127.0.0.1",
        port=1,
        data_dir=str(tmp_path),
        worker_id="serve:old",
        api_pid=api_pid,
        api_start_ticks=process_start_ticks(api_pid) if api_pid else None,
    )


def test_stale_state_is_cleared_and_its_orphan_api_stopped(tmp_path: Path) -> None:
    # an "API" left by a dead serve (the cmdline names the app, as uvicorn's does)
    orphan = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, "uvicorn", "service.app:create_app"],
        start_new_session=True,
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = _state(tmp_path, dead.pid, orphan.pid)
    state.start_ticks = 1  # whatever ran under that pid then is gone
    state_path(tmp_path).write_text(json.dumps(state.__dict__))
    try:
        taken = take_over(tmp_path)
        assert taken.previous is not None and taken.previous.worker_id == "serve:old"
        assert taken.stopped_api_pid == orphan.pid
        assert orphan.wait(timeout=15) is not None
        assert not state_path(tmp_path).exists()
        assert take_over(tmp_path).previous is None
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_an_unrelated_process_under_a_recorded_pid_is_left_alone(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        state = _state(tmp_path, 999_999_999, bystander.pid)
        state.api_start_ticks = 1  # the pid was reused: not the API we started
        state_path(tmp_path).write_text(json.dumps(state.__dict__))
        assert take_over(tmp_path).stopped_api_pid is None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_live_serve_is_not_taken_over(tmp_path: Path) -> None:
    serve = subprocess.Popen([sys.executable, "-c", SLEEPER, "serve"])
    try:
        state_path(tmp_path).write_text(json.dumps(_state(tmp_path, serve.pid).__dict__))
        with pytest.raises(ServeAlreadyRunning, match=f"pid {serve.pid}"):
            take_over(tmp_path)
        assert state_path(tmp_path).exists()
    finally:
        serve.kill()
        serve.wait()


def test_keys_refuse_without_a_server_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    settings = Settings(data_dir=tmp_path / "elsewhere", database_url="")
    with pytest.raises(KeysDatabaseNotFound) as info:
        keys_database_url(settings)
    message = str(info.value)
    assert "SPLATPACK_DATA_DIR" in message and "SPLATPACK_DATABASE_URL" in message
    assert not (tmp_path / "elsewhere").exists()  # no new, empty database was made


def test_keys_create_without_a_server_database_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from frontdoor.cli import main

    for name in list(os.environ):
        if name.startswith("SPLATPACK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "create", "--tenant", "acme"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no splatpack database found") and "serve" in err
    assert not (tmp_path / "var").exists()
