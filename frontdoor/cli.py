"""The ``splatpack`` command: codec tools plus the service (serve, api, worker, submit, jobs, keys).

``encode``, ``decode``, ``info`` and ``bench`` are the codec's own commands
(``codec.cli.main``). The rest run or talk to the service:

- ``serve``: everything on this machine with no configuration: embedded
  Postgres, migrations, local storage, a local Ray, the API on 127.0.0.1:8000
  (a ``uvicorn`` subprocess) and a runner in this process; prints an API key.
  Job callbacks to this machine (127.0.0.1) need ``--allow-private-callbacks``
  (the SSRF guard of ``infra.callback_urls`` refuses them by default).
- ``api`` / ``worker``: the API alone / a runner alone, configured by
  ``SPLATPACK_*`` environment variables (production).
- ``submit``, ``jobs``: REST clients (``--api`` / ``SPLATPACK_API_URL``,
  ``--key`` / ``SPLATPACK_API_KEY``).
- ``keys create --tenant NAME``: a new API key, straight in the database.

Global options (``-v``, and for the codec commands ``-y``/``-n``) go before or after the
subcommand, as in ffmpeg; ``--version`` prints the version and the bitstream formats.
User mistakes print one ``error:`` line and return 2; Ctrl-C returns 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import Settings

CODEC_COMMANDS = ("encode", "decode", "info", "bench")
API_APP = "service.app:create_app"  # uvicorn imports it in the API's own process


def _settings() -> Settings:
    from infra.settings import Settings

    return Settings()


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("splatpack").setLevel(logging.INFO)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM (previous handlers restored afterwards)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def api_command(host: str, port: int) -> list[str]:
    """The command line that runs the API server."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        API_APP,
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def _wait_for_api(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API process exited with code {proc.returncode}")
        try:
            httpx.get(f"{url}/docs", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the API did not answer at {url} within {timeout_s:.0f}s")


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# serve / api / worker -----------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from infra.db import make_engine, make_session_factory, resolve_database_url, run_migrations
    from infra.ray_conn import connect_ray
    from infra.serve_state import ServeSupervisor
    from infra.storage import make_storage
    from infra.tenants import create_tenant_key
    from workers.runner import Runner

    settings = _settings()
    if args.allow_private_callbacks:
        settings = settings.model_copy(update={"callback_allow_private": True})
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    supervisor = ServeSupervisor.start(settings.data_dir, host, port)  # live serve, busy port
    print("starting Postgres ...", flush=True)
    db_url = resolve_database_url(settings)
    run_migrations(db_url)
    settings = settings.model_copy(update={"database_url": db_url})
    storage = make_storage(settings, create_bucket=True)
    engine = make_engine(db_url, settings)
    session_factory = make_session_factory(engine)
    supervisor.recover(settings, session_factory)  # after a crashed serve: its jobs re-queued
    with session_factory.begin() as session:
        api_key = create_tenant_key(session, "default")
    env = dict(os.environ, SPLATPACK_DATABASE_URL=db_url)
    env.setdefault("SPLATPACK_DATA_DIR", str(settings.data_dir))
    if settings.callback_allow_private:
        env["SPLATPACK_CALLBACK_ALLOW_PRIVATE"] = "true"
    api = subprocess.Popen(api_command(host, port), env=env, **supervisor.child_popen_kwargs())
    supervisor.register(api.pid)
    api_url = f"http://{host}:{port}"
    try:
        with _stop_on_signals() as stop:
            _wait_for_api(api_url, api)
            print("starting Ray ...", flush=True)
            connect_ray(settings)
            print(f"splatpack is serving at {api_url} (OpenAPI at {api_url}/docs)")
            print(f"player: {api_url}/player/?job=<job id> (or ?src=<.gsv URL>)")
            print(f"API key for tenant 'default': {api_key}")
            print(f"  export SPLATPACK_API_URL={api_url} SPLATPACK_API_KEY={api_key}")
            print("Ctrl-C stops everything.", flush=True)
            runner = Runner(settings, session_factory, storage, worker_id=supervisor.worker_id)
            watcher = threading.Thread(target=_stop_when_exits, args=(api, stop), daemon=True)
            watcher.start()
            runner.run_forever(stop)
            if api.poll() is not None:
                return _error(f"the API process exited with code {api.returncode}")
    finally:
        _stop_process(api)
        supervisor.close()
        _shutdown_ray()
        engine.dispose()
    return 0


def _stop_when_exits(proc: subprocess.Popen[bytes], stop: threading.Event) -> None:
    while not stop.is_set():
        if proc.poll() is not None:
            stop.set()
            return
        time.sleep(0.5)


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()
    cmd = api_command(args.host or settings.api_host, args.port or settings.api_port)
    os.execv(cmd[0], cmd)
    return 0  # not reached


def cmd_worker(args: argparse.Namespace) -> int:
    from infra.db import make_engine, make_session_factory, resolve_database_url, run_migrations
    from infra.storage import make_storage
    from workers.runner import Runner

    settings = _settings()
    db_url = resolve_database_url(settings)
    if args.migrate:
        run_migrations(db_url)
    settings = settings.model_copy(update={"database_url": db_url})
    engine = make_engine(db_url, settings)
    runner = Runner(
        settings,
        make_session_factory(engine),
        make_storage(settings, create_bucket=True),
        worker_id=args.worker_id,
    )
    try:
        with _stop_on_signals() as stop:
            if args.once:
                runner.run_once()
                runner.dispatcher.run_once()  # one try at due callbacks; the rest stay queued
            else:
                print(f"runner {runner.worker_id} waiting for jobs", flush=True)
                runner.run_forever(stop)
    finally:
        _shutdown_ray()
        engine.dispose()
    return 0


# clients ----------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Any:
    from frontdoor.client import SplatpackClient

    return SplatpackClient(args.api, args.key)


def cmd_submit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from codec.metrics import ssim_label

    path = Path(args.input)
    if not path.is_file():
        return _error(f"{path} does not exist or is not a file")
    with _client(args) as client:
        upload = client.upload(path)
        job = client.create_job(
            str(upload["key"]),
            preset=args.preset,
            quality=args.quality,
            gop=args.gop,
            max_frames=args.frames,
            priority=args.priority,
            callback_url=args.callback_url,
            target_psnr=args.target_psnr,
            target_msssim=args.target_msssim,
        )
        job_id = str(job["id"])
        print(f"job {job_id} {job.get('status')}", flush=True)
        if not args.wait:
            return 0
        # redraw often on a terminal; in logs (make demo, CI) print a line at most every 10 s
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=None,
            unit="GOP",
            desc="queued",
            dynamic_ncols=True,
            mininterval=0.1 if interactive else 10.0,
        )

        def update(state: dict[str, Any]) -> None:
            # frames once the service has probed the clip (they move within a GOP), else GOPs
            if state.get("frames_total"):
                bar.unit, total, done = "frame", state["frames_total"], state.get("frames_done")
            else:
                bar.unit, total, done = "GOP", state.get("gops_total"), state.get("gops_done")
            if total and bar.total != total:
                bar.total = total
            bar.set_description(str(state.get("phase") or state.get("status")))
            bar.n = int(done or 0)
            bar.update(0)  # redraws only when mininterval has passed

        try:
            final = client.wait(job_id, poll_s=args.poll, on_update=update)
        finally:
            bar.close()
        if final.get("status") != "succeeded":
            error = final.get("error") or {}
            return _error(
                f"job {job_id} {final.get('status')}: "
                f"{error.get('code') or final.get('status')}: {error.get('message') or 'no details'}"
            )
        out_dir = Path(args.out or job_id)
        files = client.download_outputs(final, out_dir)
        report = final.get("report") or {}
        if report:
            print(
                f"{report.get('n_frames')} frames, {report.get('bytes')} bytes, "
                f"{report.get('bits_per_pixel', 0):.4f} bpp, PSNR {report.get('psnr_db', 0):.2f} dB, "
                f"{ssim_label(bool(report.get('ms_ssim_used_ssim_fallback')))} "
                f"{report.get('ms_ssim', 0):.4f}"
            )
        if report.get("target"):
            from codec.target import describe

            for line in describe(report["target"]):
                print(line)
        for f in files:
            print(f"  {f}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list_jobs(limit=args.limit)
    print(f"{'id':36}  {'status':9}  {'phase':10}  {'gops':>9}  created")
    for j in jobs:
        gops = f"{j.get('gops_done') or 0}/{j.get('gops_total') or '?'}"
        print(
            f"{j['id']:36}  {j.get('status', ''):9}  {j.get('phase') or '':10}  {gops:>9}  "
            f"{j.get('created_at', '')}"
        )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from infra.db import make_engine, make_session_factory, run_migrations
    from infra.serve_state import keys_database_url
    from infra.tenants import create_tenant_key

    settings = _settings()
    db_url = keys_database_url(settings)  # the server's database, or refuse saying how
    run_migrations(db_url)
    engine = make_engine(db_url, settings)
    try:
        with make_session_factory(engine).begin() as session:
            key = create_tenant_key(session, args.tenant)
    finally:
        engine.dispose()
    print(key)
    return 0


def _global_options() -> argparse.ArgumentParser:
    """``-v`` before or after the subcommand (suppressed default: one place does not reset the other)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="more log output"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    from codec.cli import add_target_options, version_text

    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="splatpack",
        description="2D Gaussian splat video codec and transcoding service",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    for name in CODEC_COMMANDS:
        sub.add_parser(name, help=f"codec: {name} (see splatpack {name} --help)", add_help=False)
    _add_subparser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_subparser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("serve", help="all-in-one: embedded Postgres, API, local Ray, runner")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument(
        "--allow-private-callbacks",
        action="store_true",
        help="let job callbacks reach loopback and private addresses (a receiver on this "
        "machine); same as SPLATPACK_CALLBACK_ALLOW_PRIVATE=true",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="run the API server only")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a job runner only")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--migrate", action="store_true", help="upgrade the database schema first")
    p.add_argument("--worker-id", default=None, help="lease owner name (default host:pid:random)")
    p.set_defaults(func=cmd_worker)

    def add_api_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api", default=None, help="API URL (default $SPLATPACK_API_URL)")
        p.add_argument("--key", default=None, help="API key (default $SPLATPACK_API_KEY)")

    p = sub.add_parser("submit", help="upload a video and create a job")
    p.add_argument("input", help="video file to transcode")
    p.add_argument("--wait", action="store_true", help="follow progress and download outputs")
    p.add_argument("--preset", choices=("ultrafast", "fast", "slow"), default="fast")
    p.add_argument("--quality", type=int, default=5, help="1 (smallest) .. 10 (best)")
    p.add_argument("--gop", type=int, default=30, help="frames per GOP")
    add_target_options(p)
    p.add_argument("--frames", type=int, default=None, help="encode only the first N frames")
    p.add_argument("--priority", type=int, default=None, help="-50 .. 50, higher runs first")
    p.add_argument("--callback-url", default=None, help="POST the finished job here")
    p.add_argument("--out", default=None, help="folder for the outputs (default: the job id)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between progress polls")
    add_api_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list your jobs")
    p.add_argument("--limit", type=int, default=50)
    add_api_args(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("keys", help="manage API keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser(
        "create", help="create a tenant (if new) and print a new API key", parents=[common]
    )
    k.add_argument("--tenant", required=True, help="tenant name")
    k.set_defaults(func=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``splatpack``; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command in CODEC_COMMANDS:  # global options may come before it: none takes a value
        from codec.cli import main as codec_main

        _setup_logging("-v" in args_list or "--verbose" in args_list)
        return codec_main(args_list)
    parser = build_parser()
    args = parser.parse_args(args_list)
    _setup_logging(getattr(args, "verbose", False))
    import httpx

    from frontdoor.client import ApiError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ApiError as exc:
        return _error(str(exc))
    except httpx.HTTPError as exc:
        url = getattr(args, "api", None) or os.environ.get("SPLATPACK_API_URL", "the API")
        return _error(
            f"cannot reach {url} ({exc}); is the service running? check --api / SPLATPACK_API_URL"
        )
    except (OSError, ValueError) as exc:
        return _error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
