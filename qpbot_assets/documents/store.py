"""The document store: per-document stage outputs and content-addressed raw bytes.

Its layout (which file holds what) is the read side's contract,
`qpbot_serving.document_store`; this class writes it.

A stage whose input fingerprint has not changed is not recomputed and nothing is written;
every write is a rename of a finished temporary file, so a killed process never leaves a
half-written stage behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qpbot_serving.document_store import QUARANTINE, DocumentRecords
from qpbot_serving.index import model_slug


@dataclass(frozen=True)
class StageResult:
    """A stage's output; `computed` is False when it was reused unchanged."""

    output: Any
    fingerprint: str
    computed: bool


class Quarantined(Exception):
    """Raised inside a stage for input that cannot go on; the reason is kept and shown."""

    def __init__(self, reason: str, kind: str, stage: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.stage = stage  # set when re-raised downstream of the stage that quarantined


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serializable parts (inputs, versions, settings)."""
    payload = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


class DocumentStore(DocumentRecords):
    """Writes the layout that `DocumentRecords` reads."""

    # --- raw bytes -------------------------------------------------------------------
    def put_blob(self, source: Path, suffix: str = "") -> tuple[str, int]:
        """Copies a file into the store by content; returns (sha256, size)."""
        digest = hashlib.sha256()
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        target = self.blob_path(sha256, suffix)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        return sha256, target.stat().st_size

    # --- document registry -----------------------------------------------------------
    def register(self, document_id: str, source_uri: str) -> None:
        """Records where a document comes from; sources call this before adding a partition."""
        path = self.source_path(document_id)
        record = {"document_id": document_id, "uri": source_uri}
        if not path.exists() or json.loads(path.read_text()) != record:
            atomic_write_bytes(path, json.dumps(record).encode())

    def put_snapshot(self, document_id: str, content: bytes, suffix: str, version: str) -> bool:
        """Keeps a document's content for a source that has no file of its own (a database
        row, rendered as a document), with the version its source listed; raw_document reads
        it from here. Returns whether it changed; an unchanged snapshot is not written."""
        sha256 = hashlib.sha256(content).hexdigest()
        blob = self.blob_path(sha256, suffix)
        if not blob.exists():
            atomic_write_bytes(blob, content)
        record = {"sha256": sha256, "suffix": suffix, "size": len(content), "version": version}
        if self.snapshot(document_id) == record:
            return False
        atomic_write_bytes(self.snapshot_path(document_id), json.dumps(record).encode())
        return True

    def processed_document_ids(self) -> list[str]:
        """Documents with stage outputs on disk."""
        if not self.documents_dir.exists():
            return []
        return sorted(p.name for p in self.documents_dir.iterdir() if p.is_dir())

    def forget(self, document_id: str) -> None:
        """Removes a deleted document's stage outputs (blobs stay, shared by content)."""
        shutil.rmtree(self.document_dir(document_id), ignore_errors=True)

    # --- stage outputs ---------------------------------------------------------------
    def stage_output(self, document_id: str, stage: str) -> Any:
        """The output of a stage that has run; raises Quarantined if it quarantined the document."""
        record = self.read_stage(document_id, stage)
        if record is None:
            raise LookupError(
                f"stage {stage!r} has not run for document {document_id!r}: materialize it first"
            )
        if "quarantined" in record:
            q = record["quarantined"]
            raise Quarantined(q["reason"], q["kind"], stage=q["stage"])
        return record["output"]

    def output_digest(
        self, document_id: str, stage: str, fields: Sequence[str] | None = None
    ) -> str:
        """A hash of a stage's outcome (or of some of its fields): what the next stage's
        input fingerprint is made of, so an unchanged outcome means no recomputation."""
        record = self.read_stage(document_id, stage) or {}
        output = record.get("output")
        if fields is not None and isinstance(output, dict):
            output = {name: output.get(name) for name in fields}
        return fingerprint(output, record.get("quarantined"))

    def run_stage(
        self, document_id: str, stage: str, input_fingerprint: str, compute: Callable[[], Any]
    ) -> StageResult:
        """Runs `compute` unless the stored output was made from the same input.

        A `Quarantined` raised by `compute` is stored as the stage's outcome, with a
        quarantine record that `qpbot status` shows; a later successful run clears it.
        """
        previous = self.read_stage(document_id, stage)
        if previous is not None and previous["fingerprint"] == input_fingerprint:
            return StageResult(previous.get("output"), input_fingerprint, computed=False)
        try:
            output = compute()
            record = {"fingerprint": input_fingerprint, "output": output}
            self._clear_quarantine(document_id, stage)
        except Quarantined as problem:
            output = None
            quarantined = {
                "stage": problem.stage or stage,
                "kind": problem.kind,
                "reason": problem.reason,
            }
            record = {"fingerprint": input_fingerprint, "quarantined": quarantined}
            if problem.stage is None:  # this stage found the problem; upstream ones are recorded
                self._write_quarantine(document_id, quarantined)
        atomic_write_bytes(
            self.stage_path(document_id, stage), json.dumps(record, ensure_ascii=False).encode()
        )
        return StageResult(output, input_fingerprint, computed=True)

    # --- quarantine ------------------------------------------------------------------
    def _write_quarantine(self, document_id: str, record: dict) -> None:
        record = {"document_id": document_id, "source": self.source_uri(document_id), **record}
        atomic_write_bytes(self.stage_path(document_id, QUARANTINE), json.dumps(record).encode())

    def _clear_quarantine(self, document_id: str, stage: str) -> None:
        path = self.stage_path(document_id, QUARANTINE)
        if path.exists() and json.loads(path.read_text()).get("stage") == stage:
            path.unlink()

    def quarantined(self) -> Iterator[dict]:
        for document_id in self.processed_document_ids():
            if (record := self.quarantine(document_id)) is not None:
                yield record

    # --- vectors ---------------------------------------------------------------------
    def _vectors_path(self, document_id: str, model: str) -> Path:
        # Beside the stage records, not in a folder of its own: a folder per document is
        # one more inode and disk block (4 KB) for every document.
        return self.document_dir(document_id) / f"vectors.{model_slug(model)}.npz"

    def _legacy_vectors_path(self, document_id: str, model: str) -> Path:
        """Where stores written before the file moved keep a document's vectors."""
        return self.document_dir(document_id) / "vectors" / f"{model_slug(model)}.npz"

    def write_vectors(
        self, document_id: str, model: str, chunk_ids: list[str], vectors: np.ndarray
    ) -> None:
        """Keeps one file of vectors per document and embedding model, so a candidate model's
        vectors never replace those of the model that serves."""
        path = self._vectors_path(document_id, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".npz") as tmp:
            np.savez(tmp, chunk_ids=np.array(chunk_ids, dtype=object), vectors=vectors)
        os.replace(tmp.name, path)
        legacy = self._legacy_vectors_path(document_id, model)
        if legacy.exists():
            legacy.unlink()
            with contextlib.suppress(OSError):  # another model's vectors are still there
                legacy.parent.rmdir()

    def read_vectors(self, document_id: str, model: str) -> dict[str, np.ndarray]:
        """chunk_id -> vector of the document's last chunks embedded by `model` (empty if none)."""
        path = self._vectors_path(document_id, model)
        if not path.exists():
            path = self._legacy_vectors_path(document_id, model)
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=True) as data:
            return dict(zip(data["chunk_ids"].tolist(), data["vectors"], strict=True))
