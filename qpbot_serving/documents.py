"""Uploads into the watched inbox, and a document's ingestion status as the store shows it."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.documents.store import DocumentStore
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
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    limit = settings.max_upload_mb * 1024 * 1024
    digest = hashlib.sha256()
    size = 0
    # Hidden: the sensor skips it until it is renamed into place.
    handle, partial_name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=inbox)
    partial = Path(partial_name)
    try:
        with open(handle, "wb") as out:
            while block := data.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise UploadRefused(
                        f"the file is larger than the {settings.max_upload_mb} MB upload limit "
                        "(QPBOT_MAX_UPLOAD_MB)",
                        413,
                    )
                digest.update(block)
                out.write(block)
        target = inbox / name
        with _INBOX_LOCK:
            replaced = target.exists()
            partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    document_id = document_id_for(target.resolve().as_uri())
    replaced = replaced or (settings.home / "sources" / f"{document_id}.json").exists()
    return {
        "document_id": document_id,
        "filename": name,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "status": "queued",
        "replaced": replaced,  # an earlier document of this name is updated, not added
    }


def document_status(settings: QpbotSettings, document_id: str, chunks_in_index) -> dict:
    """queued (waiting for the sensor), processing, indexed or quarantined (with the reason).

    `chunks_in_index(document_id)` counts the document's chunks in the promoted index (None
    when no index is open): a document is indexed when a search can find it.
    """
    registered = settings.home / "sources" / f"{document_id}.json"
    in_inbox = (
        [p for p in settings.inbox_dir.glob("*") if p.is_file()]
        if settings.inbox_dir.exists()
        else []
    )
    pending = [p for p in in_inbox if document_id_for(p.resolve().as_uri()) == document_id]
    if not registered.exists():
        if pending:
            return {"document_id": document_id, "filename": pending[0].name, "status": "queued"}
        raise DocumentNotFound(f"no document with id {document_id}")
    uri = json.loads(registered.read_text())["uri"]
    # The name, never the server's path to it.
    status: dict = {"document_id": document_id, "filename": Path(unquote(urlsplit(uri).path)).name}
    quarantine = settings.documents_dir / document_id / "quarantine.json"
    if quarantine.exists():
        record = json.loads(quarantine.read_text())
        return {
            **status,
            "status": "quarantined",
            "stage": record["stage"],
            "reason": record["reason"],
        }
    chunks = chunks_in_index(document_id)
    if chunks:
        return {**status, "status": "indexed", "chunks": chunks}
    return {**status, "status": "processing"}


def document_file(settings: QpbotSettings, document_id: str) -> tuple[Path, str]:
    """The stored original of an ingested document: (path, file name)."""
    store = DocumentStore(settings.home)
    record = (store.read_stage(document_id, "raw") or {}).get("output")
    if not record:
        raise DocumentNotFound(f"no ingested document with id {document_id}")
    suffix = Path(record["filename"]).suffix
    return store.blob_path(record["sha256"], suffix=suffix), record["filename"]
