"""Object storage behind one small protocol: a local directory or an S3-compatible bucket.

Keys are relative, ``/``-separated object names (``jobs/<id>/out/video.gsv``).
They are validated on every call: no empty key, no leading ``/``, no ``..`` or
``.`` segments, no empty segments, no backslashes, no NUL or other control
characters, at most 1024 bytes. A bad key raises :class:`InvalidKeyError`;
reading a key that is not there raises :class:`ObjectNotFoundError`.

Writes are atomic in both backends: ``LocalStorage`` writes a temp file in the
target directory, fsyncs it and renames it into place; S3 objects appear only
once the (possibly multipart) upload completes.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from infra.settings import Settings

MAX_KEY_BYTES = 1024
_TMP_PREFIX = ".splatpack-tmp-"
_MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest allowed non-final multipart part


class StorageError(Exception):
    """Base class of storage errors."""


class InvalidKeyError(StorageError, ValueError):
    """A storage key is malformed; the message names the key and the rule it breaks."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The key does not exist in the storage."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`InvalidKeyError`."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(
            f"storage key {key!r} is empty; use a relative path like 'dir/name.ext'"
        )
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"storage key {key[:60]!r}... is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise InvalidKeyError(
            f"storage key {key!r} contains a control character (NUL, newline, ...)"
        )
    if "\\" in key:
        raise InvalidKeyError(f"storage key {key!r} contains a backslash; use '/' as the separator")
    if key.startswith("/"):
        raise InvalidKeyError(
            f"storage key {key!r} is absolute; keys are relative (no leading '/')"
        )
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKeyError(
                f"storage key {key!r} has an empty, '.' or '..' segment; use a plain relative path"
            )
        if part.startswith(_TMP_PREFIX):
            raise InvalidKeyError(f"storage key {key!r} uses the reserved prefix {_TMP_PREFIX!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key, optionally ending in ``/``."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/path/to/key`` -> ``("bucket", "path/to/key")``; raises ``ValueError``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{uri!r} is not an S3 URI; use the form s3://bucket/key")
    if parts.query or parts.fragment:
        raise ValueError(f"{uri!r} has a query or fragment; use the form s3://bucket/key")
    key = parts.path.lstrip("/")
    if not key:
        raise ValueError(f"{uri!r} names a bucket but no object; use the form s3://bucket/key")
    return parts.netloc, validate_key(key)


@runtime_checkable
class Storage(Protocol):
    """What the service and workers need from object storage."""

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download_file(self, key: str, path: str | os.PathLike[str]) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def list_keys(self, prefix: str = "") -> list[str]: ...
    def presign_get(self, key: str, expires_s: int = 3600) -> str | None: ...
    def presign_put(
        self, key: str, expires_s: int = 3600, *, content_length: int | None = None
    ) -> str | None: ...
    def uri(self, key: str) -> str: ...


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same dir, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_copy_file(src: Path, dst: Path, chunk_bytes: int = 4 * 1024 * 1024) -> None:
    """Copy ``src`` to ``dst`` atomically in chunks (never the whole file in memory)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(chunk_bytes):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dst.parent)


class LocalStorage:
    """Objects as files under ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._path(key), bytes(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        atomic_copy_file(Path(path), self._path(key))

    def get_bytes(self, key: str) -> bytes:
        p = self._path(key)
        try:
            return p.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}") from exc

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}")
        atomic_copy_file(src, Path(path))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        p = self._path(key)
        if not p.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}")
        return p.stat().st_size

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error (as in S3)."""
        p = self._path(key)
        if p.is_file():
            p.unlink(missing_ok=True)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as in S3), sorted."""
        validate_prefix(prefix)
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*head.split("/")) if head else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    keys.append(rel)
        return sorted(keys)

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        validate_key(key)
        return None

    def presign_put(
        self, key: str, expires_s: int = 3600, *, content_length: int | None = None
    ) -> str | None:
        """None: local storage cannot presign (clients POST to /v1/uploads)."""
        validate_key(key)
        return None

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


def _is_not_found(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class S3Storage:
    """Objects in an S3 bucket (AWS, MinIO, moto, ...) through boto3.

    With ``endpoint_url`` set, path-style addressing is used (what MinIO and
    moto expect). Checksums are only computed/validated when an operation
    requires them, which S3-compatible servers handle. Files at or above
    ``multipart_threshold_bytes`` are uploaded in parts of
    ``multipart_chunksize_bytes`` (at least 5 MiB).
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        *,
        multipart_threshold_bytes: int = 64 * 1024 * 1024,
        multipart_chunksize_bytes: int = 16 * 1024 * 1024,
        create_bucket: bool = False,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        public_endpoint_url: str | None = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise ValueError("S3 bucket name is empty; set SPLATPACK_S3_BUCKET")
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        self.region = region
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            config=config,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
        )
        # presigned URLs are for clients elsewhere: signed for the endpoint they reach (signing
        # makes no request, so this client never talks to that address itself)
        self.public_endpoint_url = public_endpoint_url or None
        self._presign_client: Any = self._client
        if self.public_endpoint_url and self.public_endpoint_url != self.endpoint_url:
            self._presign_client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.public_endpoint_url,
                region_name=region,
                config=config.merge(Config(s3={"addressing_style": "path"})),
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
            )
        self._transfer = TransferConfig(
            multipart_threshold=max(1, multipart_threshold_bytes),
            multipart_chunksize=max(_MIN_PART_BYTES, multipart_chunksize_bytes),
        )
        if create_bucket:
            self.ensure_bucket()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The underlying boto3 S3 client."""
        return self._client

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=validate_key(key), Body=bytes(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self._client.upload_file(
            os.fspath(path), self.bucket, validate_key(key), Config=self._transfer
        )

    def get_bytes(self, key: str) -> bytes:
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=validate_key(key))
        except Exception as exc:
            if _is_not_found(exc):
                raise ObjectNotFoundError(f"no object {key!r} in {self!r}") from exc
            raise
        body = resp["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dst = Path(path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dst.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                try:
                    self._client.download_fileobj(
                        self.bucket, validate_key(key), fh, Config=self._transfer
                    )
                except Exception as exc:
                    if _is_not_found(exc):
                        raise ObjectNotFoundError(f"no object {key!r} in {self!r}") from exc
                    raise
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.head_object(Bucket=self.bucket, Key=validate_key(key)))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}")
        return int(head["ContentLength"])

    def etag(self, key: str) -> str:
        """The object's ETag without quotes (``<md5>-<parts>`` for multipart uploads)."""
        head = self._head(key)
        if head is None:
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}")
        return str(head["ETag"]).strip('"')

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=validate_key(key))

    def list_keys(self, prefix: str = "") -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=validate_prefix(prefix)):
            keys.extend(str(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        return str(
            self._presign_client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": validate_key(key)},
                ExpiresIn=int(expires_s),
            )
        )

    def presign_put(
        self, key: str, expires_s: int = 3600, *, content_length: int | None = None
    ) -> str | None:
        """A presigned PUT; with ``content_length`` the length is signed, so S3 refuses a
        body of any other size."""
        params: dict[str, object] = {"Bucket": self.bucket, "Key": validate_key(key)}
        if content_length is not None:
            params["ContentLength"] = int(content_length)
        return str(
            self._presign_client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=int(expires_s)
            )
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"


def make_storage(settings: Settings, *, create_bucket: bool = False) -> Storage:
    """The storage backend ``settings`` describe (``storage_backend``: local or s3)."""
    if settings.storage_backend == "s3":
        return S3Storage(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            multipart_threshold_bytes=settings.s3_multipart_threshold_bytes,
            create_bucket=create_bucket,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    if settings.storage_backend == "local":
        return LocalStorage(settings.resolved_storage_root)
    raise ValueError(
        f"storage_backend={settings.storage_backend!r} is unknown; use 'local' or 's3'"
    )
