"""/v1/uploads: stream a video into storage (size-limited), or get a presigned PUT (S3)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import PurePosixPath
from typing import IO

from fastapi import APIRouter, Request, status
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from service.auth import TenantDep
from service.deps import SettingsDep, StorageDep
from service.errors import ApiError
from service.inputs import upload_key
from service.schemas import (
    PresignedUpload,
    PresignedUploadCreate,
    UploadPublic,
    error_responses,
)

router = APIRouter(prefix="/uploads", tags=["uploads"])

FILE_FIELD = "file"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # part headers and boundaries on top of the file itself


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the upload is larger than the limit of {limit} bytes; send a smaller file"
        " (or a presigned PUT with S3 storage)",
    )


class _FilePartSink:
    """Multipart callbacks that stream the part named ``file`` into ``out`` (others are ignored)."""

    def __init__(self, out: IO[bytes], limit_bytes: int) -> None:
        self.out = out
        self.limit_bytes = limit_bytes
        self.size_bytes = 0
        self.sha256 = hashlib.sha256()
        self.filename: str | None = None
        self.found = False
        self._in_file = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""

    def on_part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _kind, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if params.get(b"name") == FILE_FIELD.encode() and not self.found:
            self._in_file = True
            raw_name = params.get(b"filename")
            if raw_name:
                self.filename = PurePosixPath(
                    raw_name.decode("utf-8", "replace").replace("\\", "/")
                ).name[:255]

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        chunk = data[start:end]
        self.size_bytes += len(chunk)
        if self.size_bytes > self.limit_bytes:
            raise too_large(self.limit_bytes)
        self.sha256.update(chunk)
        self.out.write(chunk)

    def on_part_end(self) -> None:
        if self._in_file:
            self.found = True
            self._in_file = False


UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FILE_FIELD],
                "properties": {
                    FILE_FIELD: {
                        "type": "string",
                        "format": "binary",
                        "description": "the video file (other fields are ignored)",
                    }
                },
            }
        }
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
    responses=error_responses(415),
)
async def upload(
    request: Request, tenant: TenantDep, settings: SettingsDep, storage: StorageDep
) -> UploadPublic:
    """``multipart/form-data`` with the video in the field ``file``; returns the key to use as input."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the video as multipart/form-data with a field named 'file' "
            "(curl -F file=@video.mp4 ...)",
        )
    tmp_dir = settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _FilePartSink(out, settings.max_upload_bytes)
            parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": sink.on_part_begin,
                    "on_header_field": sink.on_header_field,
                    "on_header_value": sink.on_header_value,
                    "on_header_end": sink.on_header_end,
                    "on_headers_finished": sink.on_headers_finished,
                    "on_part_data": sink.on_part_data,
                    "on_part_end": sink.on_part_end,
                },
            )
            try:
                async for chunk in request.stream():
                    await run_in_threadpool(parser.write, chunk)
                parser.finalize()
            except MultipartParseError as err:
                raise ApiError(
                    400,
                    "malformed_multipart",
                    f"the multipart body is malformed ({err}); resend it",
                ) from err
        if not sink.found:
            raise ApiError(
                422,
                "validation_error",
                "the multipart body has no field named 'file'; put the video there",
            )
        if sink.size_bytes == 0:
            raise ApiError(422, "validation_error", "the uploaded file is empty; send a video file")
        key = upload_key(tenant.id, uuid.uuid4(), sink.filename)
        await run_in_threadpool(storage.put_file, key, tmp_name)
    finally:
        os.unlink(tmp_name)
    return UploadPublic(
        key=key, size_bytes=sink.size_bytes, sha256=sink.sha256.hexdigest(), filename=sink.filename
    )


@router.post(
    "/presign",
    status_code=status.HTTP_201_CREATED,
    response_model=PresignedUpload,
    responses=error_responses(409),
)
def presign_upload(
    body: PresignedUploadCreate, tenant: TenantDep, settings: SettingsDep, storage: StorageDep
) -> PresignedUpload:
    """A presigned PUT URL (S3 storage only); then submit a job with the returned key.

    With ``size_bytes`` the length is signed into the URL (checked against the
    upload limit here); without, an object over the limit is refused when a job
    names it.
    """
    if body.size_bytes is not None and body.size_bytes > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes)
    key = upload_key(tenant.id, uuid.uuid4(), body.filename)
    url = storage.presign_put(key, settings.s3_presign_seconds, content_length=body.size_bytes)
    if url is None:
        raise ApiError(
            409,
            "presign_unavailable",
            "this server stores files locally and cannot presign uploads; POST the file to /v1/uploads",
        )
    return PresignedUpload(
        key=key,
        url=url,
        expires_in_s=settings.s3_presign_seconds,
        max_bytes=settings.max_upload_bytes,
    )
