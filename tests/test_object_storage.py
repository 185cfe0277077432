"""The pointers and the LanceDB index on object storage (QPBOT_STORAGE_URL=s3://...).

One home ingests; a serving replica with an empty QPBOT_HOME and the same storage URL serves
what it promoted, and the next promotion too; two writers racing on a pointer, one refused.

The S3 server is moto's (`moto.server`, a real S3 endpoint over HTTP), not `rclone serve s3`
as in the S3 source tests: rclone (1.75) answers every ranged GET with 200 instead of 206,
which LanceDB's S3 client refuses ("Received non-partial response when range requested"),
and it accepts If-Match / If-None-Match but ignores them.
"""

import time

import pytest
from conftest import ingest_into, service_client

from qpbot_assets.runtime.runs import ingest_paths
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import (
    INDEX_SNAPSHOT,
    POINTERS,
    PROMOTED_INDEX,
    IndexSnapshot,
    StateConflict,
    StateStore,
)

BUCKET = "qpbot"
STORAGE_URL = f"s3://{BUCKET}/platform"


def use_s3(monkeypatch, endpoint: str) -> None:
    """The standard AWS_* variables, as a deployment would set them."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "qpbot")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "qpbot-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def s3(object_store, monkeypatch):
    """The S3 server with an empty bucket; yields a boto3 client of it."""
    use_s3(monkeypatch, object_store)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def stored_keys(s3, under: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"platform/{under}")
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def search(client, query: str) -> list[dict]:
    reply = client.post("/v1/search", json={"query": query, "k": 3, "mode": "hybrid"})
    assert reply.status_code == 200, reply.text
    return reply.json()["hits"]


def test_a_replica_with_an_empty_home_serves_the_promoted_index_from_s3(
    s3, sample_documents, tmp_path, monkeypatch
):
    monkeypatch.setenv("QPBOT_STORAGE_URL", STORAGE_URL)
    writer_home = ingest_into(tmp_path / "writer", sample_documents)
    state = StateStore.from_settings(QpbotSettings(home=writer_home))
    assert state.url == STORAGE_URL
    first = state.read(PROMOTED_INDEX)
    assert first is not None and f"platform/{PROMOTED_INDEX.key}" in stored_keys(s3, "index/")
    assert stored_keys(s3, f"index/lancedb/{first.table}.lance/_versions/")
    # The writer's home holds no pointer and no index: only its caches, documents, Dagster.
    assert not (writer_home / "index").exists()
    pointer_files = {key.rsplit("/", 1)[-1] for key in (p.key for p in POINTERS)}
    assert not [p for p in writer_home.rglob("*") if p.name in pointer_files]

    replica_home = tmp_path / "replica"  # empty, and never written by the writer
    settings = QpbotSettings(home=replica_home, answer_mode="extractive")
    with service_client(settings) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["index_version"] == first.label
        # Searched from a local copy of the table: from S3 a hybrid search makes dozens of reads.
        assert (replica_home / "cache" / "index" / "lancedb" / f"{first.table}.lance").is_dir()
        hits = search(client, "battery runtime in Eco mode")
        assert hits[0]["title"] == "Kestrel K2 User Handbook"
        answer = client.post(
            "/v1/answer", json={"query": "What does error code E4 on the Kestrel K2 mean?"}
        ).json()
        assert answer["answer_mode"] == "extractive" and "side brush" in answer["answer"].lower()

        # The writer promotes a new version: the replica's watcher picks it up from S3.
        extra = tmp_path / "extra"
        extra.mkdir()
        (extra / "canteen.md").write_text("# Canteen\n\nThe canteen serves pancakes on Fridays.")
        monkeypatch.setenv("QPBOT_HOME", str(writer_home))
        assert ingest_paths(QpbotSettings(), [extra], quiet=True)["success"]
        second = state.read(PROMOTED_INDEX)
        assert second.label != first.label
        deadline = time.monotonic() + 20
        while client.get("/readyz").json()["index_version"] != second.label:
            assert time.monotonic() < deadline, "the replica did not pick up the promotion"
            time.sleep(0.5)
        assert "pancakes" in search(client, "pancakes canteen")[0]["text"]
    assert not (replica_home / "index").exists()


def snapshot(version: int) -> IndexSnapshot:
    return IndexSnapshot(
        table="chunks__x", version=version, embedding_model="m", dimension=3, chunks=1, documents=1
    )


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path) -> StateStore:
    """A store on local disk and one on an S3 server that honours conditional writes."""
    if request.param == "local":
        return StateStore(tmp_path)
    request.getfixturevalue("s3")
    return StateStore(STORAGE_URL)


def test_of_two_writers_racing_on_a_pointer_one_is_refused(any_store):
    # Both read the pointer before it exists, then both write on what they read.
    _, seen_by_first = any_store.read_versioned(INDEX_SNAPSHOT)
    _, seen_by_second = any_store.read_versioned(INDEX_SNAPSHOT)
    any_store.write(INDEX_SNAPSHOT, snapshot(1), expected=seen_by_first)
    with pytest.raises(StateConflict, match="changed since it was read"):
        any_store.write(INDEX_SNAPSHOT, snapshot(2), expected=seen_by_second)
    # And again once it exists (If-Match rather than If-None-Match on S3).
    current, seen_by_first = any_store.read_versioned(INDEX_SNAPSHOT)
    _, seen_by_second = any_store.read_versioned(INDEX_SNAPSHOT)
    assert current == snapshot(1)
    any_store.write(INDEX_SNAPSHOT, snapshot(3), expected=seen_by_first)
    with pytest.raises(StateConflict):
        any_store.write(INDEX_SNAPSHOT, snapshot(4), expected=seen_by_second)
    assert any_store.read(INDEX_SNAPSHOT) == snapshot(3)


def test_a_lease_has_one_holder_and_an_expired_one_is_taken_over(any_store):
    with any_store.lease("index/TEST.lease"):
        with pytest.raises(StateConflict, match="is held by"):
            with any_store.lease("index/TEST.lease", wait_s=0.2):
                pass
    with any_store.lease("index/TEST.lease"):  # released: free again
        pass
    with any_store.lease("index/TEST.lease", ttl_s=0.1):  # a holder that died...
        time.sleep(0.2)
        with any_store.lease("index/TEST.lease", wait_s=0.5):  # ...does not block for long
            pass


def test_the_index_uri_and_options_come_from_the_storage_url(monkeypatch, tmp_path):
    use_s3(monkeypatch, "http://127.0.0.1:9")
    local = StateStore.from_settings(QpbotSettings(home=tmp_path))
    assert local.index_uri == f"{tmp_path}/index/lancedb" and local.storage_options == {}
    remote = StateStore.from_settings(QpbotSettings(home=tmp_path, storage_url=STORAGE_URL))
    assert remote.index_uri == f"{STORAGE_URL}/index/lancedb"
    options = remote.storage_options
    assert options["endpoint"] == "http://127.0.0.1:9" and options["allow_http"] == "true"
    assert options["aws_access_key_id"] == "qpbot" and options["region"] == "us-east-1"
