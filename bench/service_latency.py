"""Job API latency: POST /v1/jobs and GET /v1/jobs/{id} under C concurrent clients.

Starts the real stack on loopback only: an embedded Postgres (``infra.embedded_pg``,
durable like ``splatpack serve``), Alembic migrations, and the API as a real
``uvicorn service.app:create_app --factory`` subprocess on a free 127.0.0.1 port
with local storage in a temporary directory. No runner runs, so every job stays
queued. One small clip is uploaded once; then, for each concurrency level C,
C threads (one ``httpx.Client`` each, keep-alive) send their share of N requests,
every POST with a distinct ``Idempotency-Key``; then the same for GETs of the jobs
just made. Each level is repeated and the tables show the median over repeats.

    .venv/bin/python bench/service_latency.py
    .venv/bin/python bench/service_latency.py --levels 1,4,16 --requests 200 --repeats 3

The client threads share the machine's cores with the API and Postgres, so on a
small machine the figures include client overhead. Everything is stopped at the
end (API process, then Postgres) and the temporary directory removed.
Prints tables and writes JSON (default ``bench/results/service_latency.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from frontdoor.cli import _stop_process, _wait_for_api, api_command  # noqa: E402
from frontdoor.client import SplatpackClient  # noqa: E402
from frontdoor.demo import make_synthetic_clip  # noqa: E402
from infra.db import make_engine, make_session_factory, run_migrations  # noqa: E402
from infra.embedded_pg import EmbeddedPostgres, find_free_port  # noqa: E402
from infra.tenants import create_tenant_key  # noqa: E402

HOST = "127.0.0.1"  # loopback only
STATS = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "throughput_rps")

# one request: (client, thread index, request index) -> HTTP status
Request = Callable[[httpx.Client, int, int], int]


def summarize(
    lat_ms: list[float], n_sent: int, errors: dict[str, int], wall_s: float
) -> dict[str, Any]:
    """Percentiles of the successful requests' latencies, and throughput over the level."""
    a = np.asarray(lat_ms, dtype=np.float64)
    ok = int(a.size)

    def pct(q: float) -> float:
        return float(np.percentile(a, q)) if ok else math.nan

    return {
        "sent": n_sent,
        "ok": ok,
        "errors": errors,
        "wall_s": wall_s,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": float(a.max()) if ok else math.nan,
        "mean_ms": float(a.mean()) if ok else math.nan,
        "throughput_rps": ok / wall_s if wall_s > 0 else math.nan,
    }


def run_level(
    url: str,
    api_key: str,
    concurrency: int,
    total: int,
    cap_s: float,
    request: Request,
    expect: int,
    warmup: int,
) -> dict[str, Any]:
    """``total`` requests split over ``concurrency`` threads, all released at once."""
    per_thread = math.ceil(total / concurrency)
    barrier = threading.Barrier(concurrency + 1, timeout=180)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = [0]
    deadline = [math.inf]
    ends: list[float] = []

    def worker(t: int) -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60.0) as client:
            for w in range(warmup):  # opens the keep-alive connection, not counted
                request(client, t, -1 - w)
            barrier.wait()
            mine: list[float] = []
            bad: dict[str, int] = {}
            n = 0
            for i in range(per_thread):
                if t * per_thread + i >= total or time.monotonic() > deadline[0]:
                    break
                start = time.perf_counter()
                try:
                    code = request(client, t, i)
                except httpx.HTTPError as exc:
                    code, name = -1, type(exc).__name__
                    bad[name] = bad.get(name, 0) + 1
                elapsed_ms = (time.perf_counter() - start) * 1000.0
                n += 1
                if code == expect:
                    mine.append(elapsed_ms)
                elif code != -1:
                    bad[str(code)] = bad.get(str(code), 0) + 1
            end = time.perf_counter()
        with lock:
            latencies.extend(mine)
            sent[0] += n
            ends.append(end)
            for k, v in bad.items():
                errors[k] = errors.get(k, 0) + v

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    deadline[0] = time.monotonic() + cap_s
    for th in threads:
        th.join()
    wall = (max(ends) if ends else time.perf_counter()) - t0
    result = summarize(latencies, sent[0], errors, wall)
    result["capped"] = sent[0] < total
    return result


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each statistic over the repeats of one level."""
    row: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in STATS}
    row["sent"] = sum(r["sent"] for r in runs)
    row["ok"] = sum(r["ok"] for r in runs)
    row["errors"] = sum(sum(r["errors"].values()) for r in runs)
    row["capped_runs"] = sum(bool(r["capped"]) for r in runs)
    return row


def print_table(title: str, rows: dict[int, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"{'C':>3}  {'ok/sent':>9}  {'err':>4}  {'p50 ms':>8}  {'p95 ms':>8}  {'p99 ms':>8}  "
        f"{'max ms':>8}  {'req/s':>7}"
    )
    for c, r in rows.items():
        print(
            f"{c:>3}  {str(r['ok']) + '/' + str(r['sent']):>9}  {r['errors']:>4}  "
            f"{r['p50_ms']:8.1f}  {r['p95_ms']:8.1f}  {r['p99_ms']:8.1f}  {r['max_ms']:8.1f}  "
            f"{r['throughput_rps']:7.1f}"
        )


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def api_env(tmp: Path, db_url: str, url: str) -> dict[str, str]:
    """The API's environment: our Postgres, local storage under ``tmp``, no scheduler."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLATPACK_")}
    env.update(
        {
            "SPLATPACK_DATABASE_URL": db_url,
            "SPLATPACK_DATA_DIR": str(tmp / "api-var"),
            "SPLATPACK_STORAGE_BACKEND": "local",
            "SPLATPACK_STORAGE_ROOT": str(tmp / "storage"),
            "SPLATPACK_PUBLIC_BASE_URL": url,
            "SPLATPACK_SCHEDULER_INTERVAL_SECONDS": "0",
            "SPLATPACK_AUTO_MIGRATE": "false",
        }
    )
    return env


def count_jobs(db_url: str) -> dict[str, int]:
    """Jobs by status (all should be queued: no runner runs)."""
    from sqlalchemy import func, select

    from infra.models import Job

    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as s:
            rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {str(status.value): int(n) for status, n in rows}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,4,16", help="client concurrency levels")
    parser.add_argument("--requests", type=int, default=200, help="requests per level and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every level (median)")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted requests per thread")
    parser.add_argument("--cap-s", type=float, default=60.0, help="time cap per level and repeat")
    parser.add_argument(
        "--clip", type=Path, default=None, help="clip to upload (default synthetic)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/service_latency.json")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]

    # as root, postgres runs as another user: the temp dir must be world-searchable
    tmp = Path(tempfile.mkdtemp(prefix="splatpack-latency-"))
    tmp.chmod(0o711)
    pg = EmbeddedPostgres(tmp / "pg")
    api: subprocess.Popen[bytes] | None = None
    api_log = tmp / "api.log"
    load: dict[str, list[float]] = {"start": loadavg()}
    try:
        t = time.perf_counter()
        db_url = pg.start()
        run_migrations(db_url)
        engine = make_engine(db_url)
        with make_session_factory(engine).begin() as s:
            api_key = create_tenant_key(s, "bench")
        engine.dispose()
        port = find_free_port(HOST)
        url = f"http://{HOST}:{port}"
        with open(api_log, "wb") as log_fh:
            api = subprocess.Popen(
                api_command(HOST, port),
                cwd=ROOT,
                env=api_env(tmp, db_url, url),
                stdout=log_fh,
                stderr=subprocess.STDOUT,
            )
        _wait_for_api(url, api, timeout_s=90)
        startup_s = time.perf_counter() - t
        clip = args.clip or make_synthetic_clip(tmp / "clip.mp4", n_frames=10, width=64, height=48)
        with SplatpackClient(url, api_key) as client:
            t = time.perf_counter()
            upload = client.upload(clip)
            upload_ms = (time.perf_counter() - t) * 1000.0
        input_key = str(upload["key"])
        body = {"input": input_key, "preset": "fast", "quality": 1, "gop": 6, "max_frames": 12}
        print(
            f"stack up in {startup_s:.1f}s at {url} (embedded Postgres, local storage, no runner); "
            f"uploaded {clip.name} ({clip.stat().st_size} B) in {upload_ms:.0f} ms"
        )
        print(
            f"machine: {os.cpu_count()} CPU cores shared with other work and with these client "
            f"threads; load average {load['start']}"
        )

        run_tag = uuid.uuid4().hex[:8]
        job_ids: list[str] = []
        ids_lock = threading.Lock()

        def post(client: httpx.Client, t: int, i: int) -> int:
            key = f"bench-{run_tag}-{uuid.uuid4().hex}-{t}-{i}"
            resp = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if resp.status_code == 201:
                with ids_lock:
                    job_ids.append(str(resp.json()["id"]))
            return resp.status_code

        def get(client: httpx.Client, t: int, i: int) -> int:
            with ids_lock:
                job_id = job_ids[(t * 7919 + i) % len(job_ids)]
            return client.get(f"/v1/jobs/{job_id}").status_code

        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            "post_jobs": {c: [] for c in levels},
            "get_job": {c: [] for c in levels},
        }
        for rep in range(args.repeats):
            for c in levels:
                for name, fn, expect in (("post_jobs", post, 201), ("get_job", get, 200)):
                    r = run_level(
                        url, api_key, c, args.requests, args.cap_s, fn, expect, args.warmup
                    )
                    r["repeat"], r["loadavg"] = rep, loadavg()
                    runs[name][c].append(r)
                    print(
                        f"  repeat {rep} C={c:<2} {name:9}: p50 {r['p50_ms']:7.1f} ms, "
                        f"p99 {r['p99_ms']:7.1f} ms, {r['throughput_rps']:6.1f} req/s, "
                        f"{r['ok']}/{r['sent']} ok, load {r['loadavg'][0]}",
                        flush=True,
                    )
        load["end"] = loadavg()
        tables = {name: {c: median_row(rs) for c, rs in per.items()} for name, per in runs.items()}
        print_table(
            f"POST /v1/jobs (median over {args.repeats} repeats; ok/sent summed)",
            tables["post_jobs"],
        )
        print_table(
            f"GET /v1/jobs/{{id}} (median over {args.repeats} repeats; ok/sent summed)",
            tables["get_job"],
        )
        jobs_by_status = count_jobs(db_url)
        print(f"\njobs in the database by status: {jobs_by_status} (no runner: all queued)")
        print(f"load average: start {load['start']}, end {load['end']}")
        print(
            "note: 2-core machine shared with other engineers' work; client threads, uvicorn "
            "and Postgres all compete for those cores"
        )
        result = {
            "benchmark": "service_latency",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "note": "CPU cores shared with other work and with the client threads",
            },
            "loadavg": load,
            "setup": {
                "levels": levels,
                "requests_per_level": args.requests,
                "repeats": args.repeats,
                "warmup_per_thread": args.warmup,
                "cap_s": args.cap_s,
                "api": "uvicorn service.app:create_app --factory (1 process)",
                "database": "embedded Postgres (durable, fsync on), loopback",
                "storage": "local",
                "job_body": body,
                "startup_s": startup_s,
                "upload_ms": upload_ms,
                "upload_bytes": clip.stat().st_size,
            },
            "jobs_by_status": jobs_by_status,
            "median": {name: {str(c): row for c, row in t.items()} for name, t in tables.items()},
            "runs": {name: {str(c): rs for c, rs in per.items()} for name, per in runs.items()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    except BaseException:
        if api_log.exists():
            print("API log tail:\n" + api_log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        if api is not None:
            _stop_process(api)
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
