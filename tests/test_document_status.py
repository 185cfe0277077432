"""A document's status as the service reads it from the store the asset graph writes."""

import os

import pytest

from qpbot_assets.documents.store import DocumentStore, Quarantined
from qpbot_serving.document_store import document_id_for, indexed_stage
from qpbot_serving.documents import DocumentNotFound, document_file, document_status
from qpbot_serving.settings import QpbotSettings

TABLE = "chunks_test"


def _ingest(store: DocumentStore, path, document_id: str) -> None:
    """What raw_document and search_index record for the file's current version."""
    stat = path.stat()
    version = {"modified_ns": stat.st_mtime_ns, "size": stat.st_size}
    sha256, size = store.put_blob(path, suffix=path.suffix)
    raw = {"filename": path.name, "sha256": sha256, "size": size, **version}
    store.run_stage(document_id, "raw", f"raw-{stat.st_mtime_ns}", lambda: raw)
    raw_fingerprint = store.read_stage(document_id, "raw")["fingerprint"]
    record = {"raw_fingerprint": raw_fingerprint, "pipeline_version": "test"}
    store.run_stage(document_id, indexed_stage(TABLE), raw_fingerprint, lambda: record)


@pytest.fixture
def home(tmp_path):
    settings = QpbotSettings(home=tmp_path)
    settings.inbox_dir.mkdir()
    return settings


def _status(settings, document_id, chunks=3):
    return document_status(settings, document_id, lambda _: chunks, TABLE)


def test_a_replaced_upload_is_not_reported_as_indexed_from_its_old_version(home):
    notes = home.inbox_dir / "notes.md"
    notes.write_text("The first version.")
    document_id = document_id_for(notes.resolve().as_uri())
    store = DocumentStore(home)
    store.register_sources([(document_id, notes.resolve().as_uri())])
    _ingest(store, notes, document_id)
    assert _status(home, document_id) == {
        "document_id": document_id,
        "filename": "notes.md",
        "status": "indexed",
        "chunks": 3,
    }

    notes.write_text("The second version, longer than the first.")
    # Three chunks of the first version are still in the index: the new one is not fetched.
    assert _status(home, document_id)["status"] == "queued"

    # Fetched, but the served table still holds the rows of the first version.
    stat = notes.stat()
    version = {"modified_ns": stat.st_mtime_ns, "size": stat.st_size}
    store.run_stage(document_id, "raw", "raw-2", lambda: {"filename": "notes.md", **version})
    assert _status(home, document_id)["status"] == "processing"

    _ingest(store, notes, document_id)
    assert _status(home, document_id)["status"] == "indexed"


def test_status_reads_the_stores_quarantine_and_original(home):
    report = home.inbox_dir / "report.txt"
    report.write_text("text")
    os.utime(report, ns=(1, 1))
    document_id = document_id_for(report.resolve().as_uri())
    store = DocumentStore(home)
    store.register_sources([(document_id, report.resolve().as_uri())])
    assert _status(home, document_id, chunks=0)["status"] == "queued"

    _ingest(store, report, document_id)
    path, filename = document_file(home, document_id)
    assert filename == "report.txt" and path.read_text() == "text"

    def unreadable():
        raise Quarantined("the file is empty", "empty")

    store.run_stage(document_id, "extracted", "fp", unreadable)
    assert _status(home, document_id, chunks=0) == {
        "document_id": document_id,
        "filename": "report.txt",
        "status": "quarantined",
        "stage": "extracted",
        "reason": "the file is empty",
    }
    with pytest.raises(DocumentNotFound):
        _status(home, "unknown-0123")

    store.remove_sources([document_id])  # as a source sensor does when the file is gone
    assert _status(home, document_id)["status"] == "deleted"
