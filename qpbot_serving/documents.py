"""Uploads into the watched inbox, and a document's ingestion status as the store shows it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import BinaryIO

from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.documents.store import DocumentStore
from qpbot_serving.settings import QpbotSettings

ACCEPTED_SUFFIXES = {".pdf", ".docx", ".md", ".markdown", ".txt", ".html", ".htm"}


class DocumentNotFound(Exception):
    pass


def save_upload(settings: QpbotSettings, filename: str, data: BinaryIO, max_mb: int) -> dict:
    """Writes an upload into the inbox the ingestion sensor watches; returns its document id.

    Raises ValueError for an unaccepted type or a file over `max_mb`.
    """
    name = re.sub(r"[^A-Za-z0-9._ -]+", "_", Path(filename).name).strip(" .")
    suffix = Path(name).suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise ValueError(
            f"files of type {suffix or '(none)'!r} are not accepted; send one of "
            f"{', '.join(sorted(ACCEPTED_SUFFIXES))}"
        )
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    partial = inbox / f".{name}.part"  # hidden: the sensor skips it until it is complete
    limit = max_mb * 1024 * 1024
    digest = hashlib.sha256()
    size = 0
    with open(partial, "wb") as out:
        while block := data.read(1 << 20):
            size += len(block)
            if size > limit:
                out.close()
                partial.unlink()
                raise ValueError(f"the file is larger than the {max_mb} MB upload limit")
            digest.update(block)
            out.write(block)
    target = inbox / name
    partial.replace(target)
    return {
        "document_id": document_id_for(target.resolve().as_uri()),
        "filename": name,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "status": "queued",
    }


def document_status(settings: QpbotSettings, document_id: str) -> dict:
    """queued (waiting for the sensor), processing, indexed or quarantined (with the reason)."""
    registered = settings.home / "sources" / f"{document_id}.json"
    in_inbox = (
        [p for p in settings.inbox_dir.glob("*") if p.is_file()]
        if settings.inbox_dir.exists()
        else []
    )
    pending = any(document_id_for(p.resolve().as_uri()) == document_id for p in in_inbox)
    if not registered.exists():
        if pending:
            return {"document_id": document_id, "status": "queued"}
        raise DocumentNotFound(f"no document with id {document_id}")
    stages = settings.documents_dir / document_id
    status: dict = {"document_id": document_id, "source": json.loads(registered.read_text())["uri"]}
    quarantine = stages / "quarantine.json"
    if quarantine.exists():
        record = json.loads(quarantine.read_text())
        return {
            **status,
            "status": "quarantined",
            "stage": record["stage"],
            "reason": record["reason"],
        }
    if (stages / "indexed.json").exists():
        chunks = json.loads((stages / "chunks.json").read_text()).get("output") or []
        return {**status, "status": "indexed", "chunks": len(chunks)}
    return {**status, "status": "processing"}


def document_file(settings: QpbotSettings, document_id: str) -> tuple[Path, str]:
    """The stored original of an ingested document: (path, file name)."""
    store = DocumentStore(settings.home)
    record = (store.read_stage(document_id, "raw") or {}).get("output")
    if not record:
        raise DocumentNotFound(f"no ingested document with id {document_id}")
    suffix = Path(record["filename"]).suffix
    return store.blob_path(record["sha256"], suffix=suffix), record["filename"]
