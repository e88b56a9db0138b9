"""Owning child processes: what ``splatpack serve`` needs to survive its own crash.

- :func:`child_popen_kwargs`: a child started with these dies with its parent whatever
  kills the parent (``kill -9`` included): Linux's ``PR_SET_PDEATHSIG`` sends it SIGKILL
  when the parent goes; it runs in its own process group (so a Ctrl-C at the terminal
  reaches the parent only, and the parent stops it in order), and if the parent died
  before the child got to ask, the child exits at once.
- :func:`port_problem`: whether ``host:port`` can be bound now, and if not, who holds it
  (from ``/proc``), so a busy port is reported before anything is announced.
- :func:`process_start_ticks` / :func:`cmdline`: what identifies a live process across
  pid reuse (``infra.serve_state`` keeps them in the serve state file).
- :func:`stop_process_group`: SIGTERM, a grace period, then SIGKILL, to a whole group.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child between fork and exec: nothing that allocates
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the prctl: follow it now
            os._exit(1)

    return preexec


def child_popen_kwargs() -> dict[str, Any]:
    """``subprocess.Popen`` arguments for a child that dies with this process (call
    Popen from the thread that lives as long as the process: the main thread)."""
    return {"preexec_fn": _die_with_parent(os.getpid()), "start_new_session": True}


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None when it is gone: with the pid,
    it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is gone in every way that matters here
        return None
    return int(fields[19])  # field 22 of proc(5), counted after "pid (comm)"


def is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``start_ticks``, is the same process as then)."""
    ticks = process_start_ticks(pid)
    return ticks is not None and (start_ticks is None or ticks == start_ticks)


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(inode)
    return inodes


def port_holder(port: int) -> tuple[int, str] | None:
    """(pid, command line) of a process of ours listening on ``port``, when /proc tells."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    pid = int(proc.name)
                    return pid, " ".join(cmdline(pid))[:200]
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served on now (in use, not an address here), else None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                return f"cannot listen on {host}:{port} ({err.strerror})"
            holder = port_holder(port)
            who = f" by pid {holder[0]} ({holder[1]})" if holder else ""
            return f"port {port} on {host} is already in use{who}"
    return None


def stop_process_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL what is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not is_alive(pid):
                return
            time.sleep(0.1)
