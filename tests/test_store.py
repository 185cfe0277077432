import pytest

from qpbot_assets.documents.store import DocumentStore, Quarantined, fingerprint


def test_a_stage_is_not_recomputed_for_the_same_input(tmp_path):
    store = DocumentStore(tmp_path)
    store.register("doc", "file:///doc.txt")
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    first = store.run_stage("doc", "stage", fingerprint("v1"), compute)
    path = tmp_path / "documents" / "doc" / "stage.json"
    written_at = path.stat().st_mtime_ns
    again = store.run_stage("doc", "stage", fingerprint("v1"), compute)
    changed = store.run_stage("doc", "stage", fingerprint("v2"), compute)

    assert first.computed and not again.computed and changed.computed
    assert again.output == {"value": 1} and changed.output == {"value": 2}
    assert len(calls) == 2
    assert path.stat().st_mtime_ns != written_at or changed.output != first.output


def test_quarantine_is_recorded_once_and_propagates_downstream(tmp_path):
    store = DocumentStore(tmp_path)
    store.register("doc", "file:///broken.pdf")

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
    store = DocumentStore(tmp_path)
    store.run_stage("doc", "raw", "a", lambda: {"sha256": "x", "modified": 1})
    before = store.output_digest("doc", "raw", fields=("sha256",))
    store.run_stage("doc", "raw", "b", lambda: {"sha256": "x", "modified": 2})
    assert store.output_digest("doc", "raw", fields=("sha256",)) == before
    assert store.output_digest("doc", "raw") != fingerprint({"sha256": "x", "modified": 1}, None)


def test_blobs_are_content_addressed(tmp_path):
    store = DocumentStore(tmp_path / "store")
    (tmp_path / "a.txt").write_text("same")
    (tmp_path / "b.txt").write_text("same")
    assert store.put_blob(tmp_path / "a.txt", ".txt") == store.put_blob(tmp_path / "b.txt", ".txt")
    assert len(list((tmp_path / "store" / "blobs").rglob("*.txt"))) == 1


def test_vectors_lie_beside_the_records_and_old_stores_still_read(tmp_path):
    import numpy as np

    store = DocumentStore(tmp_path)
    vectors = np.eye(2, 4, dtype=np.float32)
    # A store written before the move kept them in a vectors/ folder per document.
    store.write_vectors("doc", "model-a", ["c1", "c2"], vectors)
    legacy = store._legacy_vectors_path("doc", "model-b")
    legacy.parent.mkdir()
    store._vectors_path("doc", "model-a").rename(legacy)
    assert list(store.read_vectors("doc", "model-b")) == ["c1", "c2"]

    store.write_vectors("doc", "model-b", ["c1", "c2"], vectors)
    # No folder per document beside its records: one inode and disk block less each.
    assert [p.name for p in store.document_dir("doc").iterdir() if p.is_dir()] == []
    assert (store.read_vectors("doc", "model-b")["c2"] == vectors[1]).all()
