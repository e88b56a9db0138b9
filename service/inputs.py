"""Turning user-supplied inputs and prefixes into safe references.

An input is one of:

- a storage key under the caller's own area ``tenants/<tenant_id>/`` (what
  ``POST /v1/uploads`` returns), kept as the bare key; at most ``max_upload_bytes``
  (also for objects PUT through a presigned URL);
- ``s3://<our bucket>/<key>``: the same as the bare key (and confined the same way);
- ``s3://<other bucket>/<key>``: only for buckets in ``allowed_input_buckets``;
- an absolute path or ``file://`` URI of a regular file under one of
  ``allowed_input_roots``: no ``..`` segments, symlinks resolved, checked against
  the roots before and after resolving (so nothing outside a root is even probed).

A prefix (batches, schedules) is a storage key prefix under the caller's area,
bare or as ``s3://<our bucket>/...``. Job outputs (``tenants/<id>/jobs/``) are
never taken as inputs, so a schedule cannot feed on its own outputs.
"""

from __future__ import annotations

import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from infra.settings import Settings
from infra.storage import (
    InvalidKeyError,
    ObjectNotFoundError,
    Storage,
    parse_s3_uri,
    validate_key,
    validate_prefix,
)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".y4m"}
)


class InputError(ValueError):
    """An input or prefix that cannot be used; the message says what to do instead."""


def tenant_area(tenant_id: uuid.UUID) -> str:
    return f"tenants/{tenant_id}/"


def upload_key(tenant_id: uuid.UUID, upload_id: uuid.UUID, filename: str | None) -> str:
    """Storage key of an upload: ids only, plus a known video extension when there is one."""
    suffix = PurePosixPath(filename or "").suffix.lower()
    return (
        f"{tenant_area(tenant_id)}uploads/{upload_id}{suffix if suffix in VIDEO_EXTENSIONS else ''}"
    )


def _is_job_output(key: str, tenant_id: uuid.UUID) -> bool:
    return key.startswith(f"{tenant_area(tenant_id)}jobs/")


def _own_key(key: str, tenant_id: uuid.UUID, storage: Storage, max_bytes: int) -> str:
    """``key`` when it is an object in the caller's area of at most ``max_bytes``.

    The size check also bounds objects that arrived by a presigned PUT, which
    the upload route's streaming limit never saw.
    """
    try:
        validate_key(key)
    except InvalidKeyError as err:
        raise InputError(str(err)) from err
    if not key.startswith(tenant_area(tenant_id)):
        raise InputError(
            f"storage key {key!r} is not under your area {tenant_area(tenant_id)!r}; "
            "use the key returned by POST /v1/uploads, an s3:// URI or an allowed file path"
        )
    try:
        size_bytes = storage.size(key)
    except ObjectNotFoundError as err:
        raise InputError(
            f"no uploaded object {key!r}; upload the video with POST /v1/uploads first"
        ) from err
    if size_bytes > max_bytes:
        raise InputError(
            f"uploaded object {key!r} is {size_bytes} bytes, over the upload limit of "
            f"{max_bytes}; upload a smaller file"
        )
    return key


def _is_under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def resolve_input_path(raw: str, allowed_roots: list[Path]) -> Path:
    """The resolved path of a file input, or :class:`InputError` saying why not."""
    if not allowed_roots:
        raise InputError(
            "file-path inputs are disabled on this server (SPLATPACK_ALLOWED_INPUT_ROOTS is empty); "
            "upload the video with POST /v1/uploads instead"
        )
    text = raw
    if raw.startswith("file://"):
        parts = urlsplit(raw)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InputError(f"{raw!r} is not a local file URI; use file:///absolute/path")
        text = unquote(parts.path)
    if "\0" in text:
        raise InputError("the file path contains a NUL character")
    path = PurePosixPath(text)
    if not path.is_absolute():
        raise InputError(f"file path {text!r} is not absolute; give the full path")
    if ".." in path.parts:
        raise InputError(f"file path {text!r} contains '..'; give the path without '..' segments")
    lexical_roots = [Path(r).absolute() for r in allowed_roots]
    resolved_roots = [Path(r).resolve() for r in allowed_roots]
    roots_text = ", ".join(str(r) for r in lexical_roots)
    if not _is_under(Path(path), lexical_roots + resolved_roots):
        raise InputError(f"file path {text!r} is not under an allowed input root ({roots_text})")
    try:
        resolved = Path(path).resolve(strict=True)
    except FileNotFoundError as err:
        raise InputError(f"file {text!r} does not exist") from err
    except (OSError, RuntimeError) as err:
        raise InputError(f"file {text!r} cannot be resolved: {err}") from err
    if not _is_under(resolved, resolved_roots):
        raise InputError(
            f"file path {text!r} resolves (through a symlink) outside the allowed input roots "
            f"({roots_text})"
        )
    if not resolved.is_file():
        raise InputError(f"{text!r} is not a regular file; give the path of a video file")
    return resolved


def normalize_input(raw: str, *, tenant_id: uuid.UUID, settings: Settings, storage: Storage) -> str:
    """Check one job input and return the ``input_uri`` to store (see the module doc)."""
    raw = raw.strip()
    if not raw:
        raise InputError("input is empty; give an uploaded key, an s3:// URI or a file path")
    if raw.startswith("s3://"):
        try:
            bucket, key = parse_s3_uri(raw)
        except ValueError as err:
            raise InputError(str(err)) from err
        if bucket == settings.s3_bucket:
            return _own_key(key, tenant_id, storage, settings.max_upload_bytes)
        if bucket not in settings.allowed_input_buckets:
            raise InputError(
                f"bucket {bucket!r} is not an allowed input bucket; upload the video with "
                "POST /v1/uploads, or ask the operator to add it to SPLATPACK_ALLOWED_INPUT_BUCKETS"
            )
        return f"s3://{bucket}/{key}"
    if raw.startswith(("file://", "/")):
        return resolve_input_path(raw, settings.allowed_input_roots).as_uri()
    if "://" in raw:
        raise InputError(
            f"input {raw!r} has an unsupported scheme; use an uploaded key, s3://bucket/key "
            "or an absolute file path"
        )
    return _own_key(raw, tenant_id, storage, settings.max_upload_bytes)


def normalize_prefix(raw: str, *, tenant_id: uuid.UUID, settings: Settings) -> str:
    """A listing prefix under the caller's area (bare or ``s3://<our bucket>/...``)."""
    prefix = raw.strip()
    if prefix.startswith("s3://"):
        parts = urlsplit(prefix)
        if parts.netloc != settings.s3_bucket:
            raise InputError(
                f"only prefixes in the service bucket {settings.s3_bucket!r} can be listed; give "
                f"s3://{settings.s3_bucket}/tenants/<your id>/... or a list of inputs instead"
            )
        prefix = parts.path.lstrip("/")
    elif "://" in prefix or prefix.startswith("/"):
        raise InputError(
            f"prefix {raw!r} is not a storage prefix; use s3://{settings.s3_bucket}/tenants/<your id>/... "
            "or tenants/<your id>/..."
        )
    area = tenant_area(tenant_id)
    if prefix == area.rstrip("/"):
        prefix = area
    try:
        validate_prefix(prefix)
    except InvalidKeyError as err:
        raise InputError(str(err)) from err
    if not prefix.startswith(area):
        raise InputError(f"prefix {raw!r} is not under your area {area!r}; give a prefix inside it")
    return prefix


def list_video_keys(storage: Storage, prefix: str, tenant_id: uuid.UUID) -> list[str]:
    """Video objects under ``prefix`` (by extension), sorted, never a job's outputs."""
    return [
        key
        for key in storage.list_keys(prefix)
        if PurePosixPath(key).suffix.lower() in VIDEO_EXTENSIONS
        and not _is_job_output(key, tenant_id)
    ]
