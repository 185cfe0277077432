"""The same ingestion on a PostgreSQL-backed Dagster instance, chosen by environment alone."""

from __future__ import annotations

import shutil

import psycopg2

from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.runtime.runs import index_status, ingest_paths
from qpbot_serving.settings import QpbotSettings


def test_ingest_on_a_postgres_instance(
    qpbot_home, postgres_database, sample_documents, tmp_path, monkeypatch
):
    monkeypatch.setenv("QPBOT_DAGSTER_PG_URL", postgres_database)
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(sample_documents / "release-notes.html", folder)

    settings = QpbotSettings()
    assert ingest_paths(settings, [folder], quiet=True)["success"]
    assert index_status(settings)["chunks"] > 0

    with psycopg2.connect(postgres_database.replace("postgresql+psycopg2", "postgresql")) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] >= 1
        cursor.execute("SELECT partition FROM dynamic_partitions")
        [shard] = [row[0] for row in cursor.fetchall()]
    assert DocumentStore(settings).live_documents(shards=[shard])[0].startswith("release-notes")
    assert not (settings.dagster_storage_dir / "history").exists()  # nothing went to SQLite
