"""Uploads into the watched inbox, and a document's ingestion status as the store shows it."""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from qpbot_serving.document_store import (
    RAW_STAGE,
    DocumentRecords,
    display_name,
    document_id_for,
    indexed_stage,
)
from qpbot_serving.object_store import split_s3_url
from qpbot_serving.settings import QpbotSettings

ACCEPTED_SUFFIXES = {".pdf", ".docx", ".md", ".markdown", ".txt", ".html", ".htm"}


MAX_NAME_BYTES = 200  # of a stored file name (file systems allow 255)
# Characters no file name keeps: path separators, controls, and those Windows refuses.
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
# One upload at a time decides whether it replaces a file: the reply must say so truthfully.
_INBOX_LOCK = threading.Lock()


class DocumentNotFound(Exception):
    pass


class UploadRefused(ValueError):
    """An upload that is not accepted; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def upload_name(filename: str) -> str:
    """The name an upload is stored under: its own name, kept distinct (Unicode letters stay,
    so `文档.md` and `报告.md` remain two files), without path parts or unsafe characters,
    and short enough for any file system (the suffix kept)."""
    name = unicodedata.normalize("NFC", filename.replace("\\", "/").rsplit("/", 1)[-1])
    # Invisible format characters (a right-to-left override shows "a\u202egpj.md" as
    # "adm.jpg"; zero-width spaces make look-alikes) go; so do leading marks that make the
    # inbox sensor skip a file ("~$" of Office's lock files, "." of hidden ones).
    name = "".join(ch for ch in name if unicodedata.category(ch) != "Cf")
    name = _UNSAFE_IN_NAME.sub("_", name).strip(" ")
    name = re.sub(r"^(?:~\$|[ .])+", "", name).rstrip(" .")
    suffix = Path(name).suffix.lower()
    stem = name[: len(name) - len(suffix)] if suffix else name
    while len((stem + suffix).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return (stem.rstrip(" .") or "upload") + suffix


def save_upload(settings: QpbotSettings, filename: str, data: BinaryIO) -> dict:
    """Writes an upload into the inbox the ingestion sensor watches; returns its document id,
    the sha256 of the bytes stored, and whether it replaced an earlier upload of that name.

    Each upload is written to a file of its own and renamed into place, so concurrent
    uploads of one name never mix. Raises UploadRefused (415 for an unaccepted type, 413 for
    a file over QPBOT_MAX_UPLOAD_MB).
    """
    name = upload_name(filename)
    suffix = Path(name).suffix
    if suffix not in ACCEPTED_SUFFIXES:
        raise UploadRefused(
            f"files of type {suffix or '(none)'!r} are not accepted; send one of "
            f"{', '.join(sorted(ACCEPTED_SUFFIXES))}",
            415,
        )
    if settings.inbox_url:
        return _save_to_object_storage(settings, name, data)
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    # Hidden: the sensor skips it until it is renamed into place.
    handle, partial_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=inbox)
    partial = Path(partial_name)
    try:
        with open(handle, "wb") as out:
            size, sha256 = _copy_within_limit(data, out, settings.max_upload_mb)
        target = inbox / name
        with _INBOX_LOCK:
            replaced = target.exists()
            partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    uri = target.resolve().as_uri()
    document_id = document_id_for(uri)
    records = DocumentRecords(settings)
    replaced = replaced or records.is_registered(document_id)
    records.register_sources([(document_id, uri)])  # its status is "queued" from now on
    return _upload_reply(document_id, name, size, sha256, replaced)


def _save_to_object_storage(settings: QpbotSettings, name: str, data: BinaryIO) -> dict:
    """The upload as one object under the inbox URL (a PUT is atomic: the sensor lists the
    whole object or none of it); spooled to a local temporary file first, for the limit."""
    import boto3  # the S3 client; credentials and endpoint from the AWS_* variables

    bucket, prefix = split_s3_url(settings.inbox_url)
    key = prefix + name
    client = boto3.client("s3")
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        size, sha256 = _copy_within_limit(data, spool, settings.max_upload_mb)
        spool.seek(0)
        with _INBOX_LOCK:
            existing = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            replaced = any(item["Key"] == key for item in existing.get("Contents", []))
            client.upload_fileobj(spool, bucket, key)
    uri = f"s3://{bucket}/{key}"
    DocumentRecords(settings).register_sources([(document_id_for(uri), uri)])
    return _upload_reply(document_id_for(uri), name, size, sha256, replaced)


def _copy_within_limit(data: BinaryIO, out: BinaryIO, max_upload_mb: int) -> tuple[int, str]:
    """Copies the upload, refusing it (413) past QPBOT_MAX_UPLOAD_MB; returns its size and
    sha256."""
    limit = max_upload_mb * 1024 * 1024
    digest = hashlib.sha256()
    size = 0
    while block := data.read(1 << 20):
        size += len(block)
        if size > limit:
            raise UploadRefused(
                f"the file is larger than the {max_upload_mb} MB upload limit "
                "(QPBOT_MAX_UPLOAD_MB)",
                413,
            )
        digest.update(block)
        out.write(block)
    return size, digest.hexdigest()


def _upload_reply(document_id: str, name: str, size: int, sha256: str, replaced: bool) -> dict:
    return {
        "document_id": document_id,
        "filename": name,
        "bytes": size,
        "sha256": sha256,
        "status": "queued",
        "replaced": replaced,  # an earlier document of this name is updated, not added
    }


def document_status(
    settings: QpbotSettings, document_id: str, chunks_in_index, served_table: str | None = None
) -> dict:
    """queued (waiting for the sensor), processing, indexed, quarantined (with the reason) or
    deleted (its source no longer has it).

    `chunks_in_index(document_id)` counts the document's chunks in the promoted index (None
    when no index is open), which is the LanceDB table `served_table`: a document is indexed
    when a search can find its current version. An upload that replaced an indexed file is
    queued until it is fetched, then processing until its rows are in that table.
    """
    records = DocumentRecords(settings)
    try:
        uri, live = records.source(document_id)
    except KeyError:
        raise DocumentNotFound(f"no document with id {document_id}") from None
    # The name, never the server's path to it.
    status: dict = {"document_id": document_id, "filename": display_name(uri)}
    if not live:
        return {**status, "status": "deleted"}
    raw = records.read_stage(document_id, RAW_STAGE)
    if _newer_version_waits(records, uri, (raw or {}).get("output")):
        return {**status, "status": "queued"}
    quarantine = records.quarantine(document_id)
    if quarantine is not None:
        return {
            **status,
            "status": "quarantined",
            "stage": quarantine["stage"],
            "reason": quarantine["reason"],
        }
    indexed = records.read_stage(document_id, indexed_stage(served_table)) if served_table else None
    indexed_from = ((indexed or {}).get("output") or {}).get("raw_fingerprint")
    # The rows the table holds were made from an earlier version of the document.
    outdated = raw is None or indexed_from not in (None, raw["fingerprint"])
    chunks = chunks_in_index(document_id)
    if chunks and not outdated:
        return {**status, "status": "indexed", "chunks": chunks}
    return {**status, "status": "processing"}


def _newer_version_waits(records: DocumentRecords, uri: str, raw: dict | None) -> bool:
    """Whether the document's source holds a version the store has not fetched yet: a file
    changed since, an upload to the S3 inbox (under the storage root) not fetched yet or
    replaced since."""
    if uri.startswith("file://"):
        return not _is_fetched(Path(unquote(urlparse(uri).path)), raw)
    if not records.is_local and uri.startswith(f"{records.objects.url}/"):
        head = records.objects.head(uri.removeprefix(f"{records.objects.url}/"))
        if head is None:  # deleted meanwhile: no newer version waits
            return False
        return not raw or (raw.get("etag"), raw.get("size")) != head
    return raw is None


def _is_fetched(path: Path, raw: dict | None) -> bool:
    """Whether the file's current version is the one the store last fetched."""
    try:
        stat = path.stat()
    except FileNotFoundError:  # deleted meanwhile: no newer version waits
        return True
    return bool(raw) and (raw.get("modified_ns"), raw.get("size")) == (
        stat.st_mtime_ns,
        stat.st_size,
    )


def document_file(settings: QpbotSettings, document_id: str) -> tuple[Path, str]:
    """The stored original of an ingested document: (path, file name)."""
    records = DocumentRecords(settings)
    record = (records.read_stage(document_id, RAW_STAGE) or {}).get("output")
    if not record:
        raise DocumentNotFound(f"no ingested document with id {document_id}")
    suffix = Path(record["filename"]).suffix
    return records.blob_file(record["sha256"], suffix=suffix), record["filename"]
