"""The Storage contract, run against LocalStorage and against S3Storage on a moto server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.settings import Settings
from infra.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    make_storage,
    parse_s3_uri,
    validate_key,
)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "store")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        yield S3Storage(bucket, endpoint_url=endpoint, create_bucket=True)


def test_put_get_roundtrip_and_overwrite(storage: Storage) -> None:
    storage.put_bytes("a/b/c.bin", b"hello")
    assert storage.get_bytes("a/b/c.bin") == b"hello"
    assert storage.exists("a/b/c.bin")
    assert storage.size("a/b/c.bin") == 5
    storage.put_bytes("a/b/c.bin", b"\x00" * 3)
    assert storage.get_bytes("a/b/c.bin") == b"\x00\x00\x00"
    assert storage.size("a/b/c.bin") == 3


def test_empty_object(storage: Storage) -> None:
    storage.put_bytes("empty", b"")
    assert storage.exists("empty")
    assert storage.size("empty") == 0
    assert storage.get_bytes("empty") == b""


def test_missing_key(storage: Storage, tmp_path: Path) -> None:
    assert not storage.exists("nope/x")
    with pytest.raises(ObjectNotFoundError):
        storage.get_bytes("nope/x")
    with pytest.raises(ObjectNotFoundError):
        storage.size("nope/x")
    dst = tmp_path / "dl" / "x"
    with pytest.raises(ObjectNotFoundError):
        storage.download_file("nope/x", dst)
    assert not dst.exists()
    leftovers = list((tmp_path / "dl").iterdir()) if (tmp_path / "dl").exists() else []
    assert leftovers == []  # no temp file left behind
    storage.delete("nope/x")  # deleting a missing key is fine


def test_put_file_download_file(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(200_000)
    src.write_bytes(payload)
    storage.put_file("files/src.bin", src)
    dst = tmp_path / "out" / "deep" / "dst.bin"
    storage.download_file("files/src.bin", dst)
    assert dst.read_bytes() == payload
    assert [p.name for p in dst.parent.iterdir()] == ["dst.bin"]


def test_delete(storage: Storage) -> None:
    storage.put_bytes("d/x", b"1")
    storage.delete("d/x")
    assert not storage.exists("d/x")
    assert storage.list_keys("d/") == []


def test_list_keys_is_a_string_prefix(storage: Storage) -> None:
    for key in ["p/a", "p/b/c", "p/b/d", "pq/e", "other"]:
        storage.put_bytes(key, key.encode())
    assert storage.list_keys("p/") == ["p/a", "p/b/c", "p/b/d"]
    assert storage.list_keys("p") == ["p/a", "p/b/c", "p/b/d", "pq/e"]
    assert storage.list_keys("p/b/") == ["p/b/c", "p/b/d"]
    assert storage.list_keys("p/b/c") == ["p/b/c"]
    assert storage.list_keys("zzz/") == []
    assert storage.list_keys("") == ["other", "p/a", "p/b/c", "p/b/d", "pq/e"]


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "a/../b", "..", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb", "x" * 1025],
)
def test_bad_keys_rejected_everywhere(storage: Storage, bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyError):
        storage.put_bytes(bad, b"x")
    with pytest.raises(InvalidKeyError):
        storage.get_bytes(bad)
    with pytest.raises(InvalidKeyError):
        storage.exists(bad)
    with pytest.raises(InvalidKeyError):
        storage.download_file(bad, tmp_path / "x")
    with pytest.raises(InvalidKeyError):
        storage.uri(bad)


def test_uri(storage: Storage) -> None:
    uri = storage.uri("k/v.bin")
    if isinstance(storage, S3Storage):
        assert parse_s3_uri(uri) == (storage.bucket, "k/v.bin")
    else:
        assert uri.startswith("file:///") and uri.endswith("/k/v.bin")


def test_presigned_urls(storage: Storage) -> None:
    if isinstance(storage, LocalStorage):
        assert storage.presign_get("k", 60) is None
        assert storage.presign_put("k", 60) is None
        return
    put_url = storage.presign_put("signed/obj", 60)
    assert put_url is not None
    resp = httpx.put(put_url, content=b"via-presigned-put")
    assert resp.status_code == 200, resp.text
    assert storage.get_bytes("signed/obj") == b"via-presigned-put"
    get_url = storage.presign_get("signed/obj", 60)
    assert get_url is not None
    resp = httpx.get(get_url)
    assert resp.status_code == 200
    assert resp.content == b"via-presigned-put"


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    store.put_bytes("x/y.bin", b"abc")
    store.put_file("x/z.bin", tmp_path / "root" / "x" / "y.bin")
    names = sorted(p.name for p in (tmp_path / "root" / "x").iterdir())
    assert names == ["y.bin", "z.bin"]


def test_local_key_cannot_escape_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(InvalidKeyError):
        store.put_bytes("../escape", b"x")
    assert not (tmp_path / "escape").exists()


def test_s3_multipart_upload_for_large_files(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    store = S3Storage(
        s3_bucket,
        endpoint_url=s3_endpoint,
        multipart_threshold_bytes=5 * 1024 * 1024,
        multipart_chunksize_bytes=5 * 1024 * 1024,
        create_bucket=True,
    )
    src = tmp_path / "big.bin"
    payload = os.urandom(11 * 1024 * 1024)
    src.write_bytes(payload)
    store.put_file("big/big.bin", src)
    assert store.etag("big/big.bin").endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert store.size("big/big.bin") == len(payload)
    dst = tmp_path / "back.bin"
    store.download_file("big/big.bin", dst)
    assert dst.read_bytes() == payload

    small = tmp_path / "small.bin"
    small.write_bytes(b"s" * 1000)
    store.put_file("big/small.bin", small)
    assert "-" not in store.etag("big/small.bin")  # single PUT below the threshold


def test_s3_ensure_bucket_is_idempotent(s3_endpoint: str, s3_bucket: str) -> None:
    a = S3Storage(s3_bucket, endpoint_url=s3_endpoint, create_bucket=True)
    a.put_bytes("k", b"v")
    b = S3Storage(s3_bucket, endpoint_url=s3_endpoint, create_bucket=True)
    assert b.get_bytes("k") == b"v"


def test_make_storage(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    local = make_storage(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalStorage)
    assert local.root == (tmp_path / "storage").resolve()
    s3 = make_storage(
        Settings(storage_backend="s3", s3_bucket=s3_bucket, s3_endpoint_url=s3_endpoint),
        create_bucket=True,
    )
    assert isinstance(s3, S3Storage)
    s3.put_bytes("made", b"1")
    assert s3.list_keys() == ["made"]


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bkt/a/b.mp4") == ("bkt", "a/b.mp4")
    for bad in ["http://bkt/a", "s3://bkt", "s3://bkt/", "s3:///a", "s3://bkt/a/../b", "bkt/a"]:
        with pytest.raises(ValueError):
            parse_s3_uri(bad)


def test_validate_key_accepts_normal_keys() -> None:
    for ok in ["a", "a/b.c", "jobs/123/out/video.gsv", "ünïcode/ключ", "a b/c"]:
        assert validate_key(ok) == ok
