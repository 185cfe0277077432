"""Source sensors under a real test instance: live documents, shard partitions, run keys, S3."""

from __future__ import annotations

import io
import shutil

import dagster as dg
import pytest
from conftest import S3_KEY, S3_SECRET, s3_client, tick
from dagster_aws.s3 import S3Resource

from qpbot_assets.defs.ingestion.assets import raw_document
from qpbot_assets.defs.ingestion.sensors import inbox_sensor, s3_sensor
from qpbot_assets.defs.resources import DocumentStoreResource, S3SourceResource
from qpbot_assets.documents.sources import document_id_for
from qpbot_serving.document_store import shard_of
from qpbot_serving.documents import UploadRefused


def test_inbox_sensor_adds_edits_and_deletes(tmp_path, sample_documents):
    home = tmp_path / "home"
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    for name in ["travel-and-expense-policy.md", "release-notes.html"]:
        shutil.copy(sample_documents / name, inbox)
    documents = DocumentStoreResource(home=str(home))

    with dg.instance_for_test() as instance:
        first = tick(inbox_sensor, instance, None, documents=documents, s3=S3Resource())
        assert isinstance(first, dg.SensorResult)
        keys = documents.store.live_documents()
        assert keys == sorted(document_id_for(p.resolve().as_uri()) for p in inbox.iterdir())
        shards = instance.get_dynamic_partitions("document_shards")
        assert sorted(shards) == sorted({shard_of(key) for key in keys})
        assert all(len(shard) == 2 for shard in shards)
        runs = [
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in first.run_requests
        ]
        assert {r.job_name for r in first.run_requests} == {"ingest_documents"}
        assert {shard for run in runs for shard in run} == set(shards)
        assert documents.store.source_uri(keys[0]).startswith("file://")
        assert len(first.cursor) < 100  # it names the listing, an object of its own

        # Same state again: nothing to do, and a repeated tick would reuse the run key.
        assert isinstance(
            tick(inbox_sensor, instance, first.cursor, documents=documents, s3=S3Resource()),
            dg.SkipReason,
        )

        (inbox / "travel-and-expense-policy.md").write_text("# Travel\n\nAll travel is by train.")
        (inbox / "release-notes.html").unlink()
        second = tick(inbox_sensor, instance, first.cursor, documents=documents, s3=S3Resource())
        # The ingest run's search_index also removes the deleted document's chunks.
        edited = document_id_for((inbox / "travel-and-expense-policy.md").resolve().as_uri())
        [run] = second.run_requests
        assert run.job_name == "ingest_documents"
        assert run.tags["dagster/asset_partition_range_start"] == shard_of(edited)
        assert documents.store.live_documents() == [edited]
        assert instance.get_dynamic_partitions("document_shards") == shards  # shards stay
        run_keys = {r.run_key for r in first.run_requests + second.run_requests}
        assert len(run_keys) == len(first.run_requests) + 1


def test_s3_sensor_and_raw_document_against_a_real_s3_server(tmp_path, s3_server, sample_documents):
    endpoint, _root = s3_server
    client = s3_client(endpoint)
    client.create_bucket(Bucket="docs")
    client.upload_file(
        str(sample_documents / "release-notes.html"), "docs", "handbooks/release-notes.html"
    )
    client.put_object(Bucket="docs", Key="other/skip.md", Body=b"outside the prefix")

    home = tmp_path / "home"
    resources = {
        "documents": DocumentStoreResource(home=str(home)),
        "s3": S3Resource(
            endpoint_url=endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        ),
        "s3_source": S3SourceResource(bucket="docs", prefix="handbooks/"),
    }
    with dg.instance_for_test() as instance:
        result = tick(s3_sensor, instance, None, **resources)
        [key] = resources["documents"].store.live_documents()
        assert key == document_id_for("s3://docs/handbooks/release-notes.html")
        assert instance.get_dynamic_partitions("document_shards") == [shard_of(key)]
        assert result.run_requests[0].tags["dagster/asset_partition_range_start"] == shard_of(key)

        materialized = dg.materialize(
            [raw_document], instance=instance, partition_key=shard_of(key), resources=resources
        )
        assert materialized.success
        record = resources["documents"].store.stage_output(key, "raw")
        assert record["uri"] == "s3://docs/handbooks/release-notes.html"
        assert record["size"] == (sample_documents / "release-notes.html").stat().st_size

        client.delete_object(Bucket="docs", Key="handbooks/release-notes.html")
        removed = tick(s3_sensor, instance, result.cursor, **resources)
        assert resources["documents"].store.live_documents() == []
        assert [r.job_name for r in removed.run_requests] == ["refresh_index"]


def test_s3_sensor_skips_clearly_without_a_bucket(tmp_path):
    with dg.instance_for_test() as instance:
        result = tick(
            s3_sensor,
            instance,
            None,
            documents=DocumentStoreResource(home=str(tmp_path)),
            s3=S3Resource(),
            s3_source=S3SourceResource(bucket=None),
        )
    assert isinstance(result, dg.SkipReason) and "QPBOT_S3_BUCKET" in result.skip_message


def test_uploads_land_in_the_inbox_on_s3_and_the_inbox_sensor_finds_them(
    tmp_path, s3_server, monkeypatch
):
    from qpbot_serving.documents import DocumentNotFound, document_status, save_upload
    from qpbot_serving.settings import QpbotSettings

    endpoint, root = s3_server
    (root / "qpbot").mkdir()
    for name, value in {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    # The document records in a database the replica and the worker share (PostgreSQL in
    # production), everything else on S3.
    records = f"sqlite:///{tmp_path / 'records.db'}"
    settings = QpbotSettings(
        home=tmp_path / "replica", storage_url="s3://qpbot/site", database_url=records
    )
    first = save_upload(settings, "notes.md", io.BytesIO(b"# Notes\n\nThe office closes at 6."))
    again = save_upload(settings, "notes.md", io.BytesIO(b"# Notes\n\nThe office closes at 7."))
    assert (first["replaced"], again["replaced"]) == (False, True)
    assert first["document_id"] == document_id_for("s3://qpbot/site/inbox/notes.md")
    assert (root / "qpbot" / "site" / "inbox" / "notes.md").read_bytes().endswith(b"at 7.")
    assert not (tmp_path / "replica").exists()  # nothing of it on the replica's disk
    with pytest.raises(UploadRefused) as too_big:
        save_upload(settings.model_copy(update={"max_upload_mb": 0}), "big.md", io.BytesIO(b"x"))
    assert too_big.value.status == 413

    documents = DocumentStoreResource(
        home=str(tmp_path / "worker"), storage_url=settings.storage_url, database_url=records
    )
    with dg.instance_for_test() as instance:
        result = tick(inbox_sensor, instance, None, documents=documents, s3=S3Resource())
        assert documents.store.live_documents() == [first["document_id"]]
        assert [r.job_name for r in result.run_requests] == ["ingest_documents"]

    # The replica tells an upload's status from the shared records: queued until a worker
    # fetches the version uploaded last, processing after, queued again for a newer upload.
    def status():
        return document_status(settings, first["document_id"], lambda _: None)["status"]

    assert status() == "queued"
    with pytest.raises(DocumentNotFound):
        document_status(settings, "notes.md-0123456789ab", lambda _: None)
    head = s3_client(endpoint).head_object(Bucket="qpbot", Key="site/inbox/notes.md")
    fetched = {
        "filename": "notes.md",
        "etag": head["ETag"].strip('"'),
        "size": head["ContentLength"],
    }
    documents.store.run_stage(first["document_id"], "raw", "fetched", lambda: fetched)
    assert status() == "processing"
    save_upload(settings, "notes.md", io.BytesIO(b"# Notes\n\nThe office closes at 8 pm."))
    assert status() == "queued"
