"""The document store: stage records in a database, content as objects (local or S3)."""

import json

import numpy as np
import pytest
import sqlalchemy as sa

from qpbot_assets.documents.store import DocumentStore, Quarantined, fingerprint
from qpbot_serving.document_store import INLINE_OUTPUT_BYTES, document_stages
from qpbot_serving.settings import QpbotSettings


def local_store(home) -> DocumentStore:
    return DocumentStore(QpbotSettings(home=home))


def test_a_stage_is_not_recomputed_for_the_same_input(tmp_path):
    store = local_store(tmp_path)
    store.register_sources([("doc", "file:///doc.txt")])
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    first = store.run_stage("doc", "stage", fingerprint("v1"), compute)
    again = store.run_stage("doc", "stage", fingerprint("v1"), compute)
    changed = store.run_stage("doc", "stage", fingerprint("v2"), compute)

    assert first.computed and not again.computed and changed.computed
    assert again.output == {"value": 1} and changed.output == {"value": 2}
    assert len(calls) == 2
    # A new store object (another process) reads what the first one wrote.
    assert local_store(tmp_path).read_stage("doc", "stage")["output"] == {"value": 2}


def test_quarantine_is_recorded_once_and_propagates_downstream(tmp_path):
    store = local_store(tmp_path)
    store.register_sources([("doc", "file:///broken.pdf")])

    def extract():
        raise Quarantined("the PDF is damaged", "malformed")

    store.run_stage("doc", "extracted", "fp", extract)
    store.run_stage("doc", "cleaned", "fp", lambda: store.stage_output("doc", "extracted"))
    [record] = list(store.quarantined())
    assert record == {
        "document_id": "doc",
        "source": "file:///broken.pdf",
        "stage": "extracted",
        "kind": "malformed",
        "reason": "the PDF is damaged",
    }
    with pytest.raises(Quarantined):
        store.stage_output("doc", "cleaned")

    # A fixed file clears the quarantine.
    store.run_stage("doc", "extracted", "fp2", lambda: {"blocks": []})
    assert list(store.quarantined()) == []


def test_output_digest_can_ignore_fields_that_do_not_matter(tmp_path):
    store = local_store(tmp_path)
    store.run_stage("doc", "raw", "a", lambda: {"sha256": "x", "modified": 1})
    before = store.output_digest("doc", "raw", fields=("sha256",))
    store.run_stage("doc", "raw", "b", lambda: {"sha256": "x", "modified": 2})
    assert store.output_digest("doc", "raw", fields=("sha256",)) == before
    assert store.output_digest("doc", "raw") != fingerprint({"sha256": "x", "modified": 1}, None)


def test_blobs_are_content_addressed(tmp_path):
    store = local_store(tmp_path / "store")
    (tmp_path / "a.txt").write_text("same")
    (tmp_path / "b.txt").write_text("same")
    assert store.put_blob(tmp_path / "a.txt", ".txt") == store.put_blob(tmp_path / "b.txt", ".txt")
    assert len(list((tmp_path / "store" / "blobs").rglob("*.txt"))) == 1


def test_large_outputs_are_objects_named_by_their_row(tmp_path):
    store = local_store(tmp_path)
    store.register_sources([("doc", "file:///long.pdf")])
    long_text = {"text": "word " * INLINE_OUTPUT_BYTES}
    store.run_stage("doc", "extracted", "v1", lambda: long_text)
    with store.engine.connect() as conn:
        row = conn.scalar(sa.select(document_stages.c.record))
    assert "output" not in row and row["output_key"].startswith("outputs/doc/")
    assert store.stage_output("doc", "extracted") == long_text
    first = tmp_path / row["output_key"]

    # A new output replaces the object; a small one goes back into the row.
    store.run_stage("doc", "extracted", "v2", lambda: {"text": "short"})
    assert not first.exists() and store.stage_output("doc", "extracted") == {"text": "short"}

    store.run_stage("doc", "extracted", "v3", lambda: long_text)
    store.forget("doc")
    assert not (tmp_path / "outputs" / "doc").exists() or not any(
        (tmp_path / "outputs" / "doc").iterdir()
    )
    assert store.read_stage("doc", "extracted") is None and store.is_registered("doc")


def test_vectors_are_kept_per_model_and_leave_with_the_document(tmp_path):
    store = local_store(tmp_path)
    vectors = np.eye(2, 4, dtype=np.float32)
    store.write_vectors("doc-ab", "model-a", ["c1", "c2"], vectors)
    store.write_vectors("doc-ab", "model-b", ["c1", "c2"], 2 * vectors)
    assert (store.read_vectors("doc-ab", "model-a")["c2"] == vectors[1]).all()
    assert (store.read_vectors("doc-ab", "model-b")["c2"] == 2 * vectors[1]).all()
    assert store.read_vectors("other", "model-a") == {}
    for model in ("model-a", "model-b"):
        store.run_stage("doc-ab", f"embeddings.{model}", "fp", lambda: {"chunks": 2})
    store.forget("doc-ab")
    assert store.read_vectors("doc-ab", "model-a") == {} == store.read_vectors("doc-ab", "model-b")


def test_bulk_reads_match_single_reads(tmp_path, monkeypatch):
    store = local_store(tmp_path)
    for i in range(30):
        store.run_stage(f"doc-{i}", "chunks", "fp", lambda i=i: [i])
    store.run_stage("doc-3", "metadata", "fp", lambda: {"title": "three"})
    ids = [f"doc-{i}" for i in range(0, 30, 3)]
    expected = {
        (d, s): store.read_stage(d, s)
        for d in ids
        for s in ("chunks", "metadata")
        if store.read_stage(d, s) is not None
    }
    assert store.read_stages(ids, ["chunks", "metadata"]) == expected
    # Past SCAN_ABOVE_DOCUMENTS the stages are scanned instead: the same answer.
    monkeypatch.setattr("qpbot_serving.document_store.SCAN_ABOVE_DOCUMENTS", 2)
    assert store.read_stages(ids, ["chunks", "metadata"]) == expected


def test_documents_are_live_until_removed_and_registering_again_revives_them(tmp_path):
    store = local_store(tmp_path)
    store.register_sources([("a-00000000000a", "file:///a"), ("b-00000000000b", "file:///b")])
    store.remove_sources(["a-00000000000a"])
    assert store.live_documents() == ["b-00000000000b"] and store.live_count() == 1
    assert store.live_documents(shards=["0a"]) == []
    assert store.source_uri("a-00000000000a") == "file:///a"  # the record stays
    store.register_sources([("a-00000000000a", "file:///a")])
    assert store.live_documents(shards=["0a", "0c"]) == ["a-00000000000a"]


def test_a_records_database_from_before_shards_gets_them_and_its_live_set(tmp_path):
    """The live set was Dagster's partitions then: a document with records, or whose file
    still exists, is live; one with neither was deleted (and forgotten)."""
    kept = tmp_path / "kept.md"
    kept.write_text("still here")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'documents.db'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE document_sources (document_id VARCHAR(200) PRIMARY KEY, "
                "uri TEXT NOT NULL, snapshot JSON)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE document_stages (document_id VARCHAR(200), stage VARCHAR(200), "
                "record JSON NOT NULL, PRIMARY KEY (document_id, stage))"
            )
        )
        for document_id, uri in [
            ("indexed-0000000000a1", "file:///gone-but-processed.md"),
            ("queued-0000000000b2", kept.as_uri()),
            ("deleted-0000000000c3", "file:///deleted.md"),
            ("row-0000000000d4", "sql://faq/faq/4"),
        ]:
            conn.execute(
                sa.text("INSERT INTO document_sources VALUES (:id, :uri, NULL)"),
                {"id": document_id, "uri": uri},
            )
        conn.execute(
            sa.text("INSERT INTO document_stages VALUES ('indexed-0000000000a1', 'raw', '{}')")
        )
    engine.dispose()

    store = local_store(tmp_path)
    assert store.live_documents() == ["indexed-0000000000a1", "queued-0000000000b2"]
    assert store.live_documents(shards=["b2"]) == ["queued-0000000000b2"]
    assert local_store(tmp_path).live_count() == 2  # once


def test_a_store_of_the_earlier_file_layout_is_imported_once(tmp_path):
    """Homes written before the records moved into the database keep every record."""
    docs = tmp_path / "documents" / "doc-1"
    docs.mkdir(parents=True)
    (docs / "raw.json").write_text(json.dumps({"fingerprint": "f", "output": {"sha256": "x"}}))
    long_text = {"text": "word " * INLINE_OUTPUT_BYTES}
    (docs / "extracted.json").write_text(json.dumps({"fingerprint": "e", "output": long_text}))
    quarantine = {"document_id": "doc-1", "source": "file:///a.pdf", "stage": "raw"}
    (docs / "quarantine.json").write_text(json.dumps(quarantine))
    buffer_path = docs / "vectors.model-a.npz"
    np.savez(buffer_path, chunk_ids=np.array(["c1"], dtype=object), vectors=np.ones((1, 4)))
    (tmp_path / "sources").mkdir()
    source = {"document_id": "doc-1", "uri": "file:///a.pdf"}
    (tmp_path / "sources" / "doc-1.json").write_text(json.dumps(source))

    store = local_store(tmp_path)
    assert store.source_uri("doc-1") == "file:///a.pdf"
    assert store.read_stage("doc-1", "raw") == {"fingerprint": "f", "output": {"sha256": "x"}}
    assert list(store.quarantined()) == [quarantine]
    assert list(store.read_vectors("doc-1", "model-a")) == ["c1"]
    assert not (tmp_path / "documents").exists() and (tmp_path / "documents.imported").is_dir()
    assert local_store(tmp_path).read_stage("doc-1", "raw")["output"] == {"sha256": "x"}
    # A large output of the old layout became an object, as run_stage would store it.
    assert store.stage_output("doc-1", "extracted") == long_text
    assert "output_key" in store._stored_record("doc-1", "extracted")


def test_the_store_on_postgresql_and_s3_keeps_nothing_on_local_disk(
    tmp_path, postgres_database, object_store, monkeypatch
):
    from conftest import s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", object_store)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "qpbot")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "qpbot-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3_client(object_store).create_bucket(Bucket="records")
    settings = QpbotSettings(
        home=tmp_path / "home", storage_url="s3://records/p", database_url=postgres_database
    )
    store = DocumentStore(settings)
    source = tmp_path / "a.md"
    source.write_text("# A\n\nSome text.")
    store.register_sources([("doc-1", source.as_uri())])
    sha256, _ = store.put_blob(source, ".md")
    store.run_stage("doc-1", "raw", "f", lambda: {"sha256": sha256})
    store.run_stage("doc-1", "extracted", "f", lambda: {"text": "x" * INLINE_OUTPUT_BYTES})
    store.write_vectors("doc-1", "model-a", ["c1"], np.ones((1, 4), np.float32))

    home = tmp_path / "home"
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))
    reader = DocumentStore(settings)
    assert reader.stage_output("doc-1", "extracted") == {"text": "x" * INLINE_OUTPUT_BYTES}
    assert list(reader.read_vectors("doc-1", "model-a")) == ["c1"]
    # Reading a blob on object storage leaves a copy in the cache, nowhere else.
    assert reader.blob_file(sha256, ".md").read_text() == "# A\n\nSome text."
    assert {p.relative_to(home).parts[0] for p in home.rglob("*") if p.is_file()} == {"cache"}
