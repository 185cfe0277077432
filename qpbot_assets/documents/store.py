"""The document store: per-document stage records and content-addressed raw bytes.

Its layout (which table and object holds what) is the read side's contract,
`qpbot_serving.document_store`; this class writes it.

A stage whose input fingerprint has not changed is not recomputed and nothing is written.
A stage's record, and the quarantine record it sets or clears, change in one transaction;
objects are written whole before a record names them, so a killed process never leaves a
half-written stage behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from tqdm import tqdm

from qpbot_serving.document_store import (
    EMBEDDINGS_PREFIX,
    INLINE_OUTPUT_BYTES,
    QUARANTINE,
    DocumentRecords,
    document_sources,
    document_stages,
    upsert,
    vectors_key,
)
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


class DocumentStore(DocumentRecords):
    """Writes the records and content that `DocumentRecords` reads."""

    def __init__(self, settings):
        super().__init__(settings)
        if self.is_local:
            import_file_records(self)

    # --- raw bytes -------------------------------------------------------------------
    def put_blob(self, source: Path, suffix: str = "") -> tuple[str, int]:
        """Stores a file by content (once); returns (sha256, size)."""
        digest = hashlib.sha256()
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        key = self.blob_key(sha256, suffix)
        if not self.objects.exists(key):
            self.objects.upload(key, source)
        return sha256, source.stat().st_size

    def put_snapshot(self, document_id: str, content: bytes, suffix: str, version: str) -> bool:
        """Keeps a document's content for a source that has no file of its own (a database
        row, rendered as a document), with the version its source listed; raw_document reads
        it from here. Returns whether it changed; an unchanged snapshot is not written. The
        document must be registered."""
        sha256 = hashlib.sha256(content).hexdigest()
        key = self.blob_key(sha256, suffix)
        if not self.objects.exists(key):
            self.objects.put(key, content, None)
        record = {"sha256": sha256, "suffix": suffix, "size": len(content), "version": version}
        if self.snapshot(document_id) == record:
            return False
        self._set_snapshot(document_id, record)
        return True

    def _set_snapshot(self, document_id: str, record: dict) -> None:
        with self.engine.begin() as conn:
            updated = conn.execute(
                sa.update(document_sources)
                .where(document_sources.c.document_id == document_id)
                .values(snapshot=record)
            )
        if updated.rowcount != 1:
            raise KeyError(f"register {document_id!r} before keeping its snapshot")

    def remove_sources(self, document_ids: Iterable[str]) -> None:
        """Marks documents that their source no longer lists as not live; the next
        search_index removes their chunks and forgets their records."""
        ids = sorted(set(document_ids))
        with self.engine.begin() as conn:
            for start in range(0, len(ids), 500):
                conn.execute(
                    sa.update(document_sources)
                    .where(document_sources.c.document_id.in_(ids[start : start + 500]))
                    .values(live=False)
                )

    def forget(self, document_id: str) -> None:
        """Removes a deleted document's stage records, vectors and large outputs (its source
        record stays, and its blobs, shared by content)."""
        with self.engine.begin() as conn:
            stages = conn.scalars(
                sa.select(document_stages.c.stage).where(
                    document_stages.c.document_id == document_id
                )
            ).all()
            conn.execute(
                sa.delete(document_stages).where(document_stages.c.document_id == document_id)
            )
        for stage in stages:
            if stage.startswith(EMBEDDINGS_PREFIX):
                self.objects.delete(vectors_key(document_id, stage.removeprefix(EMBEDDINGS_PREFIX)))
        self.objects.remove_folder(f"outputs/{document_id}")

    # --- stage outputs ---------------------------------------------------------------
    def stage_output(self, document_id: str, stage: str) -> Any:
        """The output of a stage that has run; raises Quarantined if it quarantined the document."""
        return output_of(self.read_stage(document_id, stage), document_id, stage)

    def output_digest(
        self,
        document_id: str,
        stage: str,
        fields: Sequence[str] | None = None,
        record: dict | None = None,
    ) -> str:
        """A hash of a stage's outcome (or of some of its fields): what the next stage's
        input fingerprint is made of, so an unchanged outcome means no recomputation.
        `record` is the stage's record when the caller has read it already."""
        record = (record if record is not None else self.read_stage(document_id, stage)) or {}
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
        stored = self._stored_record(document_id, stage)
        if stored is not None and stored["fingerprint"] == input_fingerprint:
            output = self._resolved(stored).get("output")
            return StageResult(output, input_fingerprint, computed=False)
        quarantine = None
        try:
            output = compute()
            record = self._stored_output(document_id, stage, input_fingerprint, output)
        except Quarantined as problem:
            output = None
            found = {
                "stage": problem.stage or stage,
                "kind": problem.kind,
                "reason": problem.reason,
            }
            record = {"fingerprint": input_fingerprint, "quarantined": found}
            if problem.stage is None:  # this stage found the problem; upstream ones are recorded
                source = self.source_uri(document_id)
                quarantine = {"document_id": document_id, "source": source, **found}
        with self.engine.begin() as conn:
            self._write_record(conn, document_id, stage, record)
            if quarantine is not None:
                self._write_record(conn, document_id, QUARANTINE, quarantine)
            elif "quarantined" not in record:
                self._clear_quarantine(conn, document_id, stage)
        replaced = (stored or {}).get("output_key")
        if replaced and replaced != record.get("output_key"):
            self.objects.delete(replaced)
        return StageResult(output, input_fingerprint, computed=True)

    def _stored_output(self, document_id: str, stage: str, input_fp: str, output: Any) -> dict:
        """The record of an output: inline, or the key of an object of its own when large.
        The object is written first, under a key of its input, so a row never names a
        missing or half-written object."""
        data = json.dumps(output, ensure_ascii=False).encode()
        if len(data) <= INLINE_OUTPUT_BYTES:
            return {"fingerprint": input_fp, "output": output}
        key = f"outputs/{document_id}/{stage}.{input_fp}.json"
        self.objects.put(key, data, None)
        return {"fingerprint": input_fp, "output_key": key}

    @staticmethod
    def _write_record(conn, document_id: str, stage: str, record: dict) -> None:
        conn.execute(
            upsert(conn, document_stages, ["document_id", "stage"], update=["record"]),
            {"document_id": document_id, "stage": stage, "record": record},
        )

    # --- quarantine ------------------------------------------------------------------
    @staticmethod
    def _clear_quarantine(conn, document_id: str, stage: str) -> None:
        quarantine = conn.scalar(
            sa.select(document_stages.c.record).where(
                document_stages.c.document_id == document_id,
                document_stages.c.stage == QUARANTINE,
            )
        )
        if quarantine is not None and quarantine.get("stage") == stage:
            conn.execute(
                sa.delete(document_stages).where(
                    document_stages.c.document_id == document_id,
                    document_stages.c.stage == QUARANTINE,
                )
            )

    def quarantined(self) -> Iterator[dict]:
        """The quarantine records of the live documents."""
        with self.engine.connect() as conn:
            query = (
                sa.select(document_stages.c.record)
                .join(
                    document_sources,
                    document_sources.c.document_id == document_stages.c.document_id,
                )
                .where(document_stages.c.stage == QUARANTINE, document_sources.c.live)
                .order_by(document_stages.c.document_id)
            )
            yield from conn.scalars(query).all()

    # --- vectors ---------------------------------------------------------------------
    def write_vectors(
        self, document_id: str, model: str, chunk_ids: list[str], vectors: np.ndarray
    ) -> None:
        """Keeps one object of vectors per document and embedding model, so a candidate
        model's vectors never replace those of the model that serves."""
        buffer = io.BytesIO()
        np.savez(buffer, chunk_ids=np.array(chunk_ids, dtype=str), vectors=vectors)
        self.objects.put(vectors_key(document_id, model_slug(model)), buffer.getvalue(), None)

    def read_vectors(self, document_id: str, model: str) -> dict[str, np.ndarray]:
        """chunk_id -> vector of the document's last chunks embedded by `model` (empty if none)."""
        found = self.objects.get(vectors_key(document_id, model_slug(model)))
        if found is None:
            return {}
        with np.load(io.BytesIO(found[0]), allow_pickle=True) as data:
            return dict(zip(data["chunk_ids"].tolist(), data["vectors"], strict=True))


def output_of(record: dict | None, document_id: str, stage: str) -> Any:
    """A stage record's output; raises Quarantined if the stage quarantined the document."""
    if record is None:
        raise LookupError(
            f"stage {stage!r} has not run for document {document_id!r}: materialize it first"
        )
    if "quarantined" in record:
        q = record["quarantined"]
        raise Quarantined(q["reason"], q["kind"], stage=q["stage"])
    return record["output"]


# --- stores written before the records moved into a database --------------------------


def import_file_records(store: DocumentStore) -> int:
    """Moves the per-file records of an earlier layout under the home (`documents/<id>/
    <stage>.json`, `sources/`, `snapshots/`, vectors files) into the store, once, and
    renames those folders to `<name>.imported`. Returns the number of documents moved."""
    home = store.home
    legacy = [home / name for name in ("documents", "sources", "snapshots")]
    if not any(folder.is_dir() for folder in legacy):
        return 0
    lock = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be importing the same home
        if not any(folder.is_dir() for folder in legacy):
            return 0
        return _import_files(store, *legacy)
    finally:
        os.close(lock)


def _import_files(store: DocumentStore, documents: Path, sources: Path, snapshots: Path) -> int:
    registry = {}
    for path in sorted(sources.glob("*.json")) if sources.is_dir() else []:
        record = json.loads(path.read_text())
        registry[record["document_id"]] = record["uri"]
    store.register_sources(registry.items())
    for path in sorted(snapshots.glob("*.json")) if snapshots.is_dir() else []:
        store._set_snapshot(path.stem, json.loads(path.read_text()))
    moved = 0
    folders = sorted(p for p in documents.iterdir() if p.is_dir()) if documents.is_dir() else []
    for folder in tqdm(folders, desc="importing document records", disable=len(folders) < 100):
        records = {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}
        for stage, record in records.items():
            if "output" in record:  # a large output becomes an object, as run_stage makes it
                fp = record["fingerprint"]
                records[stage] = store._stored_output(folder.name, stage, fp, record["output"])
        with store.engine.begin() as conn:
            for stage, record in records.items():
                store._write_record(conn, folder.name, stage, record)
        for path in [*folder.glob("vectors.*.npz"), *folder.glob("vectors/*.npz")]:
            slug = path.name.removeprefix("vectors.").removesuffix(".npz")
            store.objects.upload(vectors_key(folder.name, slug), path)
        moved += 1
    for folder in (documents, sources, snapshots):
        if folder.is_dir():
            os.rename(folder, folder.with_name(f"{folder.name}.imported"))
    return moved
