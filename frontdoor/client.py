"""A small synchronous client for the splatpack REST API (used by ``splatpack submit``/``jobs``).

Talks HTTP only (no service imports). The API key goes in
``Authorization: Bearer <key>``. Errors come back as
``{"error": {"code", "message"}}`` and are raised as :class:`ApiError`.
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class ApiError(RuntimeError):
    """The API answered with an error; the message carries its status and detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"API error {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


def _detail(resp: httpx.Response) -> str:
    """The API's ``{"error": {"code", "message"}}`` as ``code: message``."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        if isinstance(error, dict) and "message" in error:
            code = error.get("code")
            return f"{code}: {error['message']}" if code else str(error["message"])
        return str(error)
    return str(body)


class SplatpackClient:
    """``SplatpackClient(api_url, api_key)``; every method raises :class:`ApiError` on 4xx/5xx."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = (api_url or os.environ.get("SPLATPACK_API_URL") or DEFAULT_API_URL).rstrip(
            "/"
        )
        self.api_key = api_key or os.environ.get("SPLATPACK_API_KEY") or ""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SplatpackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _detail(resp))
        return resp

    def _json(self, resp: httpx.Response) -> Any:
        return self._check(resp).json()

    # uploads and jobs ---------------------------------------------------------
    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """POST the file to ``/v1/uploads`` (multipart ``file``); returns it (``key`` is the input)."""
        p = Path(path)
        ctype = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        with open(p, "rb") as fh:
            resp = self._http.post("/v1/uploads", files={"file": (p.name, fh, ctype)})
        return dict(self._json(resp))

    def create_job(self, input_ref: str, **fields: Any) -> dict[str, Any]:
        """POST ``/v1/jobs``; ``fields``: preset, quality, gop, max_frames, priority, callback_url, ..."""
        body = {"input": input_ref, **{k: v for k, v in fields.items() if v is not None}}
        return dict(self._json(self._http.post("/v1/jobs", json=body)))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json(self._http.get(f"/v1/jobs/{job_id}")))

    def list_jobs(self, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs (following ``next_cursor`` pages as needed)."""
        jobs: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(jobs) < limit:
            params: dict[str, Any] = {"limit": min(200, limit - len(jobs))}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = self._json(self._http.get("/v1/jobs", params=params))
            jobs.extend(dict(j) for j in page.get("items", []))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return jobs

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json(self._http.post(f"/v1/jobs/{job_id}/cancel")))

    def wait(
        self,
        job_id: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is terminal; ``on_update`` sees every polled state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.get("status") in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.get('status')} after {timeout_s}s")
            time.sleep(poll_s)

    # outputs -----------------------------------------------------------------
    def iter_output(self, job_id: str, name: str) -> Iterator[bytes]:
        """Stream output ``name`` of a job (follows the API's redirect to storage if any)."""
        with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/outputs/{name}", follow_redirects=True
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiError(resp.status_code, _detail(resp))
            yield from resp.iter_bytes()

    def download_outputs(self, job: dict[str, Any], dest_dir: str | os.PathLike[str]) -> list[Path]:
        """Save every output of a finished job into ``dest_dir``; returns the files written."""
        out = Path(dest_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        outputs = job.get("outputs") or {}
        for name, key in outputs.items():
            filename = Path(str(key)).name or name
            target = out / filename
            tmp = target.with_name(f".{target.name}.part")
            try:  # complete or not at all
                with open(tmp, "wb") as fh:
                    for chunk in self.iter_output(str(job["id"]), name):
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(target)
        return written
