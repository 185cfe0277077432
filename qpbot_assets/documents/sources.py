"""Where documents come from: folders, S3 prefixes and database tables, listed as (uri,
version) pairs.

A document's id is its partition key (`document_id_for`, in the read side's contract
`qpbot_serving.document_store`, with the file names and row URIs it is made from). A
database row (`sql://<source>/<table>/<id>`, see `sql_source`) is a Markdown document whose
content its lister keeps as a snapshot in the document store; from there on it goes the way
a file goes.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from qpbot_serving.document_store import document_id_for

if TYPE_CHECKING:
    from qpbot_assets.documents.store import DocumentStore

# Editors' lock files and partial downloads are not documents.
_IGNORED = re.compile(r"^(\.|~\$)|\.(tmp|part|crdownload|swp)$", re.IGNORECASE)


@dataclass(frozen=True)
class SourceObject:
    uri: str
    version: str  # mtime and size for files, the ETag for S3 objects, see sql_source for rows

    @cached_property  # a hash and a URL parse: read several times per object per tick
    def document_id(self) -> str:
        return document_id_for(self.uri)


def scan_folder(folder: Path) -> list[SourceObject]:
    """Every file under `folder` (recursively), skipping hidden and temporary files."""
    objects = []
    for path in sorted(Path(folder).resolve().rglob("*")):
        if path.is_file() and not any(_IGNORED.search(part) for part in path.parts[-1:]):
            stat = path.stat()
            objects.append(SourceObject(path.as_uri(), f"{stat.st_mtime_ns}-{stat.st_size}"))
    return objects


def list_s3(client, bucket: str, prefix: str = "") -> list[SourceObject]:
    """Every object under s3://bucket/prefix with its ETag (paginated)."""
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/") or _IGNORED.search(Path(item["Key"]).name):
                continue
            objects.append(SourceObject(f"s3://{bucket}/{item['Key']}", item["ETag"].strip('"')))
    return objects


@dataclass(frozen=True)
class SourceChanges:
    added: list[SourceObject]
    changed: list[SourceObject]
    removed: list[str]  # uris

    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff_listing(previous: dict[str, str], current: Iterable[SourceObject]) -> SourceChanges:
    """Compares a listing with the last one seen ({uri: version})."""
    current = list(current)
    seen = {obj.uri for obj in current}
    return SourceChanges(
        added=[obj for obj in current if obj.uri not in previous],
        changed=[
            obj for obj in current if obj.uri in previous and previous[obj.uri] != obj.version
        ],
        removed=sorted(uri for uri in previous if uri not in seen),
    )


@contextmanager
def local_copy(uri: str, s3_client=None, store: DocumentStore | None = None):
    """Yields a local path for a source URI (S3 objects are downloaded to a temp file; a
    database row is the snapshot its lister put in `store`)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        yield Path(unquote(parsed.path))
    elif parsed.scheme == "sql":
        snapshot = store.snapshot(document_id_for(uri)) if store else None
        if snapshot is None:
            raise ValueError(f"{uri} has no snapshot: list its table first (`qpbot ingest --sql`)")
        yield store.blob_file(snapshot["sha256"], snapshot["suffix"])
    elif parsed.scheme == "s3":
        if s3_client is None:
            raise ValueError(f"{uri} needs an S3 client: configure QPBOT_S3_* settings")
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(parsed.path).name
            s3_client.download_file(parsed.netloc, parsed.path.lstrip("/"), str(target))
            yield target
    else:
        raise ValueError(f"unsupported source URI scheme {parsed.scheme!r} in {uri}")


def source_version(uri: str, s3_client=None, store: DocumentStore | None = None) -> dict | None:
    """What tells a changed source apart, read without fetching the content: modified time
    and size of a file, the ETag and size of an S3 object, the version and size of a database
    row's snapshot in `store`. None when it no longer exists."""
    parsed = urlparse(uri)
    if parsed.scheme == "sql":
        snapshot = store.snapshot(document_id_for(uri)) if store else None
        if snapshot is None:
            return None
        return {"row_version": snapshot["version"], "size": snapshot["size"]}
    if parsed.scheme == "s3":
        try:
            head = s3_client.head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
        except s3_client.exceptions.ClientError:
            return None
        return {"etag": head["ETag"].strip('"'), "size": head["ContentLength"]}
    path = Path(unquote(parsed.path))
    if not path.is_file():
        return None
    stat = path.stat()
    return {"modified_ns": stat.st_mtime_ns, "size": stat.st_size}
