"""Build and load the fused CPU renderer (``csrc/splat_cpu.cpp``) with PyTorch's C++ extension tools.

The extension is compiled once per machine and source version by ``make setup`` (``python -m
codec.render.cpu_ext``), or on first use, into ``$SPLATPACK_EXT_DIR`` (default
``~/.cache/splatpack/ext``), keyed by a hash of the source, the flags, torch's version and the
CPU's instruction-set flags, the torch installation's path and the source's path, so a build is never reused on a
machine or in an environment it was not made for (two venvs or checkouts sharing one build
directory would rebuild it in turn).
:func:`load` returns None (and :func:`load_error` says why) when no compiler is available; the
callers then fall back to the pure-PyTorch backends.

Why C++ and not numba: on one kernel (the no-gradient forward of a 720x528 frame) the C++/OpenMP
version measured faster and needs no extra runtime dependency; see ``bench/kernel_choice.py`` and
BENCHMARKS.md ("Fused CPU renderer").
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["SOURCE", "load", "load_error", "build_dir"]

SOURCE = Path(__file__).with_name("csrc") / "splat_cpu.cpp"
_CFLAGS = [
    "-O3",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-DNDEBUG",
]
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False


def _isa_flags() -> list[str]:
    """-m flags for the vector units this CPU has (AVX2 and F16C at most; never -march=native)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return ["-mavx2"] if "avx2" in flags and platform.machine() in ("x86_64", "AMD64") else []


def build_dir() -> Path:
    """Where this machine's build of the current source lives."""
    flags = _CFLAGS + _isa_flags()
    key = hashlib.sha256(
        SOURCE.read_bytes()
        + " ".join(flags).encode()
        + torch.__version__.encode()
        + torch.__file__.encode()  # one build per environment and checkout: torch's build
        + str(SOURCE.resolve()).encode()  # file names them, and another name means a rebuild
        + sys.version.encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("SPLATPACK_EXT_DIR", Path.home() / ".cache" / "splatpack" / "ext"))
    return root / f"splat_cpu_{key}"


def load(verbose: bool = False) -> ModuleType | None:
    """The compiled extension, building it if needed; None when it cannot be built here."""
    global _module, _error, _tried
    with _lock:
        if _tried:
            return _module
        _tried = True
        if os.environ.get("SPLATPACK_NO_CPU_EXT"):
            _error = "disabled by SPLATPACK_NO_CPU_EXT"
            return None
        try:
            from torch.utils.cpp_extension import load as cpp_load

            where = build_dir()
            where.mkdir(parents=True, exist_ok=True)
            # torch's own build lock is a plain file that a killed build leaves behind, after
            # which every later process waits on it forever. Builds are serialised by an flock
            # instead (the kernel drops it when its holder dies); whoever holds it may remove
            # torch's lock file, since no other splatpack process can be building there.
            with open(where / "splatpack.flock", "w") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                (where / "lock").unlink(missing_ok=True)
                _module = cpp_load(
                    name="splat_cpu",
                    sources=[str(SOURCE)],
                    extra_cflags=_CFLAGS + _isa_flags(),
                    extra_ldflags=_LDFLAGS,
                    build_directory=str(where),
                    verbose=verbose,
                )
        except Exception as exc:  # no compiler, no ninja, a read-only cache: fall back
            _error = f"{type(exc).__name__}: {exc}".strip()[:2000]
            _module = None
        return _module


def load_error() -> str | None:
    """Why :func:`load` returned None (after it was called), else None."""
    return _error


def main() -> int:
    """``python -m codec.render.cpu_ext``: build now (``make setup`` runs this)."""
    mod = load(verbose=False)
    if mod is None:
        print(f"fused CPU renderer NOT built ({load_error()}); the PyTorch backends will be used")
        return 1 if shutil.which("c++") or shutil.which("g++") else 0  # no compiler: fine
    print(f"fused CPU renderer built in {build_dir()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
