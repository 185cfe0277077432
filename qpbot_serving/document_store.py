"""The document store's contract: how a source URI names a document, and where the store
keeps what it knows of each document. The asset graph writes this layout
(`qpbot_assets.documents.store.DocumentStore`); the service reads a document's status and
its original from it. No Dagster here, and nothing of the write side.

Layout under the root (`QPBOT_HOME`):
    blobs/<sha256[:2]>/<sha256><suffix>      raw bytes, written once
    sources/<document_id>.json               where a document comes from (kept after deletion)
    snapshots/<document_id>.json             content a source keeps here (a database row's document)
    documents/<document_id>/<stage>.json     each stage's output with the fingerprint of its input
    documents/<document_id>/quarantine.json  why a document stopped, and at which stage
    documents/<document_id>/indexed.<table>.json  what the document last wrote into a table
    documents/<document_id>/vectors.<model>.npz   its chunks' vectors per model (write side only)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

QUARANTINE = "quarantine"
RAW_STAGE = "raw"
# A row's document: its text read as Markdown, its title a heading and front matter.
ROW_DOCUMENT_SUFFIX = ".md"


def document_id_for(uri: str) -> str:
    """A document's id (its partition key): a readable slug of its file name plus a hash of
    the full source URI, so it is stable across runs, unique per source and safe in any path."""
    name = display_name(uri).lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", name)
    slug = re.sub(r"-+\.", ".", slug).strip("-.")[:60] or "document"
    return f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def display_name(uri: str) -> str:
    """The file name a document is known by: a file's or object's name, `<table>-<id>.md`
    for a database row."""
    if uri.startswith("sql://"):
        _, table, row_id = row_parts(uri)
        return f"{table}-{row_id.replace('/', '-')}{ROW_DOCUMENT_SUFFIX}"
    return Path(unquote(urlparse(uri).path)).name


def row_uri(source_name: str, table: str, row_id: object) -> str:
    """The URI of a database row: `sql://<source>/<table>/<id>`, the id percent-encoded."""
    return f"sql://{source_name}/{quote(table, safe='.')}/{quote(str(row_id), safe='')}"


def row_parts(uri: str) -> tuple[str, str, str]:
    """(source name, table, row id) of a `sql://` URI."""
    parsed = urlparse(uri)
    _, table, row_id = parsed.path.split("/", 2)
    return parsed.netloc, unquote(table), unquote(row_id)


def indexed_stage(table_name: str) -> str:
    """The stage that records what a document last wrote into the LanceDB table `table_name`."""
    return f"indexed.{table_name}"


class DocumentRecords:
    """The store's layout under `root`, and readers of its records (the store writes them)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.documents_dir = self.root / "documents"
        self.blobs_dir = self.root / "blobs"

    # --- where each record lives -------------------------------------------------------
    def blob_path(self, sha256: str, suffix: str = "") -> Path:
        # The suffix is kept because plain text, Markdown and HTML are told apart by it.
        return self.blobs_dir / sha256[:2] / f"{sha256}{suffix.lower()}"

    def source_path(self, document_id: str) -> Path:
        return self.root / "sources" / f"{document_id}.json"

    def snapshot_path(self, document_id: str) -> Path:
        return self.root / "snapshots" / f"{document_id}.json"

    def document_dir(self, document_id: str) -> Path:
        return self.documents_dir / document_id

    def stage_path(self, document_id: str, stage: str) -> Path:
        return self.document_dir(document_id) / f"{stage}.json"

    # --- reading them ------------------------------------------------------------------
    def is_registered(self, document_id: str) -> bool:
        """Whether a source has listed the document (also after it was deleted there)."""
        return self.source_path(document_id).exists()

    def source_uri(self, document_id: str) -> str:
        path = self.source_path(document_id)
        if not path.exists():
            raise KeyError(f"document {document_id!r} is not registered with any source")
        return json.loads(path.read_text())["uri"]

    def snapshot(self, document_id: str) -> dict | None:
        """{"sha256", "suffix", "size", "version"} of the document's snapshot, if it has one."""
        return _read_json(self.snapshot_path(document_id))

    def read_stage(self, document_id: str, stage: str) -> dict | None:
        """The stored record {"fingerprint", "output"} or {"fingerprint", "quarantined"}."""
        return _read_json(self.stage_path(document_id, stage))

    def quarantine(self, document_id: str) -> dict | None:
        """{"document_id", "source", "stage", "kind", "reason"} of a quarantined document."""
        return _read_json(self.stage_path(document_id, QUARANTINE))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
