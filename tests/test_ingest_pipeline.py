"""The asset graph end to end, in-process, on real files, the real model and real LanceDB."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import docx
import sqlalchemy as sa

from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.indexing.sync import embedding_stage
from qpbot_assets.runtime.runs import index_status, ingest_paths, load_definitions
from qpbot_serving import document_store
from qpbot_serving import index as contract
from qpbot_serving.index import model_slug
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import PROMOTED_INDEX, StateStore


def index_rows(settings: QpbotSettings) -> list[dict]:
    promoted = StateStore(settings.home).read(PROMOTED_INDEX)
    table = contract.connect(StateStore.from_settings(settings)).open_table(promoted.table)
    return table.search().select(["chunk_id", "document_id", "title", "text"]).limit(None).to_list()


@contextlib.contextmanager
def record_writes(settings: QpbotSettings) -> Iterator[list[str]]:
    """Collects the statements that write the document store's records, in this process."""
    engine = DocumentStore(settings).engine
    writes: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            writes.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield writes
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)


def test_definitions_load():
    dg.Definitions.validate_loadable(load_definitions())


def test_ingest_indexes_every_sample_and_a_rerun_writes_nothing(qpbot_home, sample_documents):
    settings = QpbotSettings()
    summary = ingest_paths(settings, [sample_documents], quiet=True)
    assert summary["success"] and summary["new"] == len(list(sample_documents.iterdir()))

    status = index_status(settings)
    assert status["documents"] == summary["documents"] and status["quarantined"] == []
    rows = index_rows(settings)
    assert status["chunks"] == len(rows) > 10
    assert {r["document_id"] for r in rows} == {
        document_id_for(p.resolve().as_uri()) for p in sample_documents.iterdir()
    }
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    assert any(r["title"] == "Kestrel K2 User Handbook" for r in rows)

    version = status["index_version"]
    with record_writes(settings) as writes:
        again = ingest_paths(settings, [sample_documents], quiet=True)
    assert again["success"] and again["new"] == 0
    assert writes == []  # no stage record rewritten
    promoted = StateStore(settings.home).read(PROMOTED_INDEX)
    table = contract.connect(StateStore.from_settings(settings)).open_table(promoted.table)
    # The rerun wrote no rows: only the snapshot's optimize may add a version, never data.
    assert len(index_rows(settings)) == len(rows)
    assert index_status(settings)["chunks"] == len(rows)
    assert version is not None and table.count_rows() == len(rows)


def test_edit_delete_and_metadata_only_change(qpbot_home, sample_documents, tmp_path):
    folder = tmp_path / "docs"
    shutil.copytree(sample_documents, folder)
    settings = QpbotSettings()
    ingest_paths(settings, [folder], quiet=True)
    store = DocumentStore(settings)

    # Edit one paragraph of a Markdown file, delete the HTML page, retitle the DOCX.
    policy = folder / "travel-and-expense-policy.md"
    policy.write_text(policy.read_text().replace("45 EUR", "52 EUR"))
    (folder / "release-notes.html").unlink()
    warranty = folder / "warranty-and-returns-policy.docx"
    document = docx.Document(warranty)
    document.core_properties.title = "Warranty Policy (2027 edition)"
    document.save(warranty)

    warranty_id = document_id_for(warranty.resolve().as_uri())
    promoted = StateStore(settings.home).read(PROMOTED_INDEX)
    vectors_key = contract.vectors_key(promoted.embedding_model, promoted.embedding_backend)
    vectors_file = settings.home / document_store.vectors_key(warranty_id, model_slug(vectors_key))
    vectors_written = vectors_file.stat().st_mtime_ns

    summary = ingest_paths(settings, [folder], quiet=True)
    assert summary["success"] and summary["removed"] == 1

    rows = index_rows(settings)
    ids = [r["chunk_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a chunk is in the index twice"
    expected = []
    for path in sorted(folder.iterdir()):
        doc_id = document_id_for(path.resolve().as_uri())
        expected += [c["chunk_id"] for c in store.stage_output(doc_id, "chunks")]
    assert sorted(ids) == sorted(expected)
    texts = " ".join(r["text"] for r in rows)
    assert "52 EUR" in texts and "45 EUR" not in texts
    assert not any("release-notes" in r["document_id"] for r in rows)

    assert vectors_file.stat().st_mtime_ns == vectors_written  # the retitled DOCX: no re-embedding
    assert {r["title"] for r in rows if r["document_id"] == warranty_id} == {
        "Warranty Policy (2027 edition)"
    }
    policy_id = document_id_for(policy.resolve().as_uri())
    policy_embeddings = store.stage_output(policy_id, embedding_stage(vectors_key))
    assert (
        1 <= policy_embeddings["embedded"] < policy_embeddings["chunks"]
        or policy_embeddings["chunks"] == 1
    )


def test_bad_files_are_quarantined_and_the_batch_goes_on(qpbot_home, sample_documents, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(sample_documents / "travel-and-expense-policy.md", folder)
    (folder / "truncated.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <<")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "photo.docx").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)

    settings = QpbotSettings()
    assert ingest_paths(settings, [folder], quiet=True)["success"]
    status = index_status(settings)
    reasons = {Path(q["source"]).name: q for q in status["quarantined"]}
    assert set(reasons) == {"truncated.pdf", "empty.txt", "photo.docx"}
    assert all(q["stage"] == "extracted" and q["reason"] for q in reasons.values())
    assert status["chunks"] > 0
    assert {r["document_id"] for r in index_rows(settings)} == {
        document_id_for((folder / "travel-and-expense-policy.md").resolve().as_uri())
    }

    # A good document that turns bad loses its chunks and is quarantined; nothing else changes.
    (folder / "travel-and-expense-policy.md").write_bytes(b"")
    assert ingest_paths(settings, [folder], quiet=True)["success"]
    status = index_status(settings)
    assert len(status["quarantined"]) == 4 and status["chunks"] == 0
    assert index_rows(settings) == []


def test_status_json_shape(qpbot_home, sample_documents, tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(sample_documents / "release-notes.html", folder)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n%garbage without objects")
    qpbot = Path(sys.executable).parent / "qpbot"
    ingest = subprocess.run([qpbot, "ingest", folder, "--json"], capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    status = json.loads(
        subprocess.run(
            [qpbot, "status", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert status["documents"] == 2 and status["chunks"] > 0
    assert status["index_version"].startswith("chunks__")
    [quarantined] = status["quarantined"]
    assert set(quarantined) >= {"source", "stage", "reason"}
    assert quarantined["source"].endswith("broken.pdf")


def test_a_large_enough_index_gets_a_vector_index(
    qpbot_home, sample_documents, tmp_path, monkeypatch
):
    """Above the threshold `search_index` builds the ANN index and the service uses it;
    an edited document's new chunks are folded into it, and searches find what the exact
    search finds."""
    from qpbot_serving.retrieval import Retriever

    monkeypatch.setattr(contract, "VECTOR_INDEX_MIN_ROWS", 10)  # the samples: ~50 chunks
    folder = tmp_path / "docs"
    shutil.copytree(sample_documents, folder)
    settings = QpbotSettings()
    assert ingest_paths(settings, [folder], quiet=True)["success"]

    def vector_index_stats():
        promoted = StateStore(settings.home).read(PROMOTED_INDEX)
        table = contract.connect(StateStore.from_settings(settings)).open_table(promoted.table)
        table.checkout(promoted.version)
        return table.index_stats(contract.vector_index_of(table).name)

    stats = vector_index_stats()
    assert (stats.index_type, stats.distance_type) == ("IVF_HNSW_FLAT", "cosine")
    assert stats.num_unindexed_rows == 0
    markdown = next(folder.glob("*.md"))
    markdown.write_text(markdown.read_text() + "\n\nThe lighthouse keeper counts gulls at dawn.\n")
    assert ingest_paths(settings, [folder], quiet=True)["success"]
    assert vector_index_stats().num_unindexed_rows == 0

    retriever = Retriever.open(settings.home)
    assert retriever.vector_index == contract.VECTOR_INDEX_NAME
    flat = Retriever.open(settings.home, embedder=retriever.embedder)
    flat.vector_index = None
    question = "How long is the battery warranty?"
    for mode in ("dense", "hybrid"):
        assert [h.chunk_id for h in retriever.search(question, 5, mode)] == [
            h.chunk_id for h in flat.search(question, 5, mode)
        ]


def test_the_index_check_sees_missing_rows_and_leaves_documents_in_flight_alone(
    qpbot_home, sample_documents, tmp_path
):
    """`index_rows_match_live_chunks` on the snapshot: a document another run is still
    processing (its chunks changed since the sync) is pending, not a failure; a document
    the index records as current but whose rows are gone fails the check."""
    from qpbot_assets.defs.indexing.asset_checks import index_rows_match_live_chunks
    from qpbot_assets.defs.indexing.assets import search_index
    from qpbot_assets.runtime.instance import get_instance
    from qpbot_serving.state import INDEX_SNAPSHOT

    folder = tmp_path / "docs"
    shutil.copytree(sample_documents, folder)
    settings = QpbotSettings()
    assert ingest_paths(settings, [folder], quiet=True)["success"]
    store = DocumentStore(settings)
    defs = load_definitions()

    def check() -> dg.AssetCheckEvaluation:
        result = dg.materialize(
            [search_index, index_rows_match_live_chunks],
            selection=dg.AssetSelection.checks(index_rows_match_live_chunks),
            resources=defs.resources,
            instance=get_instance(settings),
            raise_on_error=False,
        )
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    assert check().passed

    # In flight: new chunks written by a run that has not reached search_index yet.
    policy = document_id_for((folder / "travel-and-expense-policy.md").resolve().as_uri())
    store.run_stage(policy, "chunks", "a later version", lambda: [])
    in_flight = check()
    assert in_flight.passed and in_flight.metadata["pending_documents"].value == 1

    # Rows gone from a document the index records as current: the check fails.
    handbook = document_id_for((folder / "kestrel-k2-user-handbook.pdf").resolve().as_uri())
    state = StateStore.from_settings(settings)
    snapshot = state.read(INDEX_SNAPSHOT)
    table = contract.connect(state).open_table(snapshot.table)
    table.delete(f"document_id = '{handbook}'")
    state.write(INDEX_SNAPSHOT, snapshot.model_copy(update={"version": table.version}))
    broken = check()
    assert not broken.passed
    assert broken.metadata["mismatched_documents"].value == [handbook]
