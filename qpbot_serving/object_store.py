"""Where state is kept: files under a folder, or objects under `s3://bucket/prefix`,
behind one small interface (get, put with an optional compare-and-swap, delete, mirror a
prefix to a local folder). `qpbot_serving.state` builds the pointers on it; the write side
stores artifacts (models, reports) through `StateStore`, and every reader of a stored folder
gets it on local disk through `cached_folder`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def split_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "key or prefix") of `s3://bucket/key`."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


class StateConflict(RuntimeError):
    """A conditional write lost a race: the pointer changed since it was read (or a lease
    stayed held by another writer)."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes `data` as JSON to a temporary file beside `path`, flushes it to disk and
    renames it over `path`: readers never see half a file, a crash never leaves one."""
    _write_bytes_atomic(path, json.dumps(data, indent=2).encode())


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


@dataclass(frozen=True)
class Version:
    """What a pointer was when read: its object's ETag (S3) or its content's digest (local
    disk); `tag` None when it did not exist."""

    tag: str | None


def objects_at(root: Path | str) -> LocalObjects | S3Objects:
    """The backend of a storage root: `s3://bucket/prefix`, else a local folder."""
    if str(root).startswith("s3://"):
        return S3Objects(str(root))
    return LocalObjects(Path(root))


class LocalObjects:
    """Files under a folder. A conditional write compares under an flock of the file's
    folder (every write takes it, so an unconditional one cannot slip between)."""

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.md5(data).hexdigest()

    def put(self, key: str, data: bytes, expected: Version | None) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with _flocked(path.parent):
            if expected is not None:
                found = self.get(key)
                if (found[1] if found else None) != expected.tag:
                    raise StateConflict(f"{path} changed since it was read")
            _write_bytes_atomic(path, data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def upload(self, key: str, source: Path) -> None:
        """Stores the file `source` as `key` (a copy renamed into place)."""
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)

    def remove_folder(self, key: str) -> None:
        """Removes the folder `key` and everything in it."""
        shutil.rmtree(self.root / key, ignore_errors=True)


@contextmanager
def _flocked(folder: Path) -> Iterator[None]:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


def _aws_environment() -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in _AWS_VARIABLES)


@functools.lru_cache(maxsize=8)
def _s3_session(environment: tuple[str | None, ...]):
    """(session, S3 client) for one AWS_* configuration, made once per process: a session
    and its client take tens of milliseconds to build, and every StateStore, document
    store and status request would otherwise build them again (clients are thread-safe)."""
    import boto3

    session = boto3.session.Session()
    return session, session.client("s3")


class S3Objects:
    """Objects under `s3://bucket/prefix`. The endpoint, region and credentials are boto3's:
    the standard AWS_* variables (AWS_ENDPOINT_URL for an S3-compatible server), or its
    config files. A PUT replaces an object whole; conditional ones use If-Match and
    If-None-Match (a server that ignores them, like `rclone serve s3`, gives no protection)."""

    CONFLICTS = ("PreconditionFailed", "ConditionalRequestConflict")

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.bucket, prefix = split_s3_url(self.url)
        self.prefix = f"{prefix}/" if prefix else ""

    @property
    def session(self):
        return _s3_session(_aws_environment())[0]

    @property
    def client(self):
        return _s3_session(_aws_environment())[1]

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            return None
        return reply["Body"].read(), reply["ETag"]

    def put(self, key: str, data: bytes, expected: Version | None) -> None:
        from botocore.exceptions import ClientError

        condition = {}
        if expected is not None:
            condition = {"IfMatch": expected.tag} if expected.tag else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, **condition
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in self.CONFLICTS:
                raise StateConflict(f"{self.url}/{key} changed since it was read") from None
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> tuple[str, int] | None:
        """(ETag without quotes, size) of the object `key`, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head["ETag"].strip('"'), head["ContentLength"]

    def upload(self, key: str, source: Path) -> None:
        """Stores the file `source` as `key` (multipart for large files)."""
        self.client.upload_file(str(source), self.bucket, self.prefix + key)

    def download(self, key: str, target: Path) -> None:
        """Writes the object `key` to `target`, which appears only once complete."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            self.client.download_file(self.bucket, self.prefix + key, str(partial))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def remove_folder(self, key: str) -> None:
        """Removes every object under `key`/."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}{key.rstrip('/')}/"
        )
        for page in pages:
            if objects := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    def mirror(self, key: str, folder: Path) -> int:
        """Makes `folder` a copy of the objects under `key`/: downloads those it lacks (or
        holds at another size), removes those gone. Returns the number downloaded."""
        from concurrent.futures import ThreadPoolExecutor

        under = f"{self.prefix}{key.rstrip('/')}/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=under
        )
        remote = {o["Key"][len(under) :]: o["Size"] for p in pages for o in p.get("Contents", [])}
        local = {str(f.relative_to(folder)): f for f in folder.rglob("*") if f.is_file()}
        for name in local.keys() - remote.keys():
            local[name].unlink()
        missing = [
            n for n, size in remote.items() if n not in local or local[n].stat().st_size != size
        ]

        base = key.rstrip("/")
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda name: self.download(f"{base}/{name}", folder / name), missing))
        return len(missing)

    def storage_options(self) -> dict[str, str]:
        """LanceDB's options for the same endpoint, region and credentials as boto3's."""
        meta = self.client.meta
        options = {"endpoint": meta.endpoint_url, "region": meta.region_name or "us-east-1"}
        if meta.endpoint_url.startswith("http://"):
            options["allow_http"] = "true"
        credentials = self.session.get_credentials()  # boto3's chain: variables, files, role
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            options["aws_access_key_id"] = frozen.access_key
            options["aws_secret_access_key"] = frozen.secret_key
            if frozen.token:
                options["aws_session_token"] = frozen.token
        return options

    def upload_folder(self, key: str, folder: Path) -> None:
        """Uploads every file under `folder` to `key`/ (a PUT each, several at once)."""
        from concurrent.futures import ThreadPoolExecutor

        files = [f for f in folder.rglob("*") if f.is_file()]
        under = f"{self.prefix}{key.rstrip('/')}/"

        def upload(file: Path) -> None:
            self.client.upload_file(str(file), self.bucket, under + str(file.relative_to(folder)))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(upload, files))

    def folders(self, key: str) -> list[str]:
        """The names of the folders directly under `key`/."""
        under = f"{self.prefix}{key.rstrip('/')}/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=under, Delimiter="/"
        )
        return [c["Prefix"][len(under) : -1] for p in pages for c in p.get("CommonPrefixes", [])]


def cached_folder(uri: str, cache_root: Path) -> Path:
    """A folder on this machine that holds the stored folder `uri` (`StateStore.uri`): the
    path itself on local disk; for `s3://bucket/key`, a copy under `cache_root`
    (QpbotSettings.cache_dir), downloaded on first use and read from there afterwards
    (stored folders never change). Raises FileNotFoundError when nothing is stored there."""
    if not uri.startswith("s3://"):
        return Path(uri)
    target = copy_path(uri, cache_root)
    if target.is_dir():  # renamed into place only once complete
        return target
    bucket, key = split_s3_url(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.mkdir()
    try:
        if not S3Objects(f"s3://{bucket}").mirror(key, partial):
            raise FileNotFoundError(f"nothing is stored under {uri}")
        try:
            os.rename(partial, target)
        except OSError:  # another process finished first: its copy is the same
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def cached_file(uri: str, cache_root: Path) -> Path:
    """A file on this machine that holds the stored file `uri` (`StateStore.uri`), as
    `cached_folder` does for a folder: the path itself on local disk; for `s3://bucket/key`,
    a copy under `cache_root`, downloaded on first use. Only for files that are never
    rewritten (their key names their content, like a version of the training pairs)."""
    if not uri.startswith("s3://"):
        return Path(uri)
    target = copy_path(uri, cache_root)
    if not target.is_file():  # renamed into place only once complete
        bucket, key = split_s3_url(uri)
        S3Objects(f"s3://{bucket}").download(key, target)
    return target


def copy_path(uri: str, cache_root: Path) -> Path:
    """Where `cached_folder` keeps the copy of `s3://bucket/key`: `<cache_root>/s3/bucket/key`."""
    return Path(cache_root) / "s3" / uri.removeprefix("s3://").rstrip("/")
