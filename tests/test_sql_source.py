"""A database table as a source: rows in SQLite and the real PostgreSQL become documents
through `qpbot ingest --sql` and the SQL sensor, and leave when they are deleted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from conftest import tick

from qpbot_assets.cli import main
from qpbot_assets.defs.ingestion import sensors
from qpbot_assets.defs.ingestion.sensors import sql_sensor
from qpbot_assets.defs.resources import DocumentStoreResource, SqlSourcesResource
from qpbot_assets.documents.sql_source import (
    SqlSourceError,
    SqlTable,
    row_document,
    source_name,
)
from qpbot_assets.documents.store import DocumentStore
from qpbot_serving.answer_log import engine_for
from qpbot_serving.document_store import display_name, document_id_for, row_uri, shard_of
from qpbot_serving.retrieval import Retriever
from qpbot_serving.settings import QpbotSettings, SqlSource

PASSWORD = "s3cret-pw-42"  # PostgreSQL here trusts local connections: it is sent, never checked

ROWS = {
    1: ("Resetting the robot", "Hold the power button for ten seconds until the light blinks."),
    2: ("Warranty", "The warranty lasts 24 months from the date of purchase."),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A database with an empty `faq` table: SQLite, then the real PostgreSQL."""
    if request.param == "sqlite":
        return with_faq_table(f"sqlite:///{tmp_path / 'faq.db'}")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def postgres_url(postgres_database) -> str:
    """A fresh PostgreSQL database with an empty `faq` table, its URL as a user would write
    it: plain postgresql:// with a password."""
    url = postgres_database.replace(
        "postgresql+psycopg2://postgres@", f"postgresql://postgres:{PASSWORD}@"
    )
    return with_faq_table(url)


def with_faq_table(url: str) -> str:
    engine = engine_for(url)
    faq_table(sa.MetaData()).create(engine)
    engine.dispose()
    return url


def faq_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "faq",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("question", sa.String(200)),
        sa.Column("answer", sa.Text),
        sa.Column("author", sa.String(50)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )


def write_rows(url: str, rows: dict[int, tuple[str, str]], delete: tuple[int, ...] = ()) -> None:
    """Inserts or replaces `rows` ({id: (question, answer)}) and deletes the `delete` ids,
    giving every written row a later updated_at."""
    engine = engine_for(url)
    table = faq_table(sa.MetaData())
    stamp = datetime.now(UTC) + timedelta(seconds=len(rows))
    with engine.begin() as connection:
        ids = [*rows, *delete]
        connection.execute(table.delete().where(table.c.id.in_(ids)))
        for row_id, (question, answer) in rows.items():
            connection.execute(
                table.insert().values(
                    id=row_id, question=question, answer=answer, author="Ann", updated_at=stamp
                )
            )
    engine.dispose()


def faq_source(url: str, **fields) -> SqlSource:
    return SqlSource(
        url=url,
        table="faq",
        id_column="id",
        text_column="answer",
        title_column="question",
        metadata_columns=["author"],
        **fields,
    )


def stage_file_times(home: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (home / "documents").rglob("*") if p.is_file()}


# --- pure functions --------------------------------------------------------------------


def test_a_row_is_a_markdown_document_with_front_matter_and_its_title_as_heading():
    document = row_document("Line one.\n\nLine two.", "How to\nreset", {"author": "Ann", "x": None})
    assert document.decode() == (
        "---\nauthor: Ann\ntitle: How to reset\n---\n\n# How to reset\n\nLine one.\n\nLine two."
    )
    assert row_document("Just text.").decode() == "Just text."
    assert row_document(None) == b""  # extraction quarantines it as empty, like an empty file


def test_row_uris_ids_and_names_are_safe_and_never_hold_the_password():
    uri = row_uri("crm", "public.faq", "a/b c")
    assert uri == "sql://crm/public.faq/a%2Fb%20c"
    assert display_name(uri) == "public.faq-a-b c.md"
    assert document_id_for(uri).startswith("public.faq-a-b-c.md-")
    assert document_id_for(uri) != document_id_for(row_uri("crm", "public.faq", "a-b c"))

    source = faq_source(f"postgresql://u:{PASSWORD}@db.example:5432/support")
    name = source_name(source)
    assert name.startswith("postgresql-support-") and PASSWORD not in name
    rotated = faq_source("postgresql+psycopg2://u:new-password@db.example:5432/support")
    assert source_name(rotated) == name  # a new password or driver keeps the documents
    assert source_name(faq_source("postgresql://u@db.example:5432/other")) != name
    assert source_name(faq_source("sqlite:///x.db", name="kb")) == "kb"
    assert PASSWORD not in repr(source)


def test_sql_sources_come_from_one_json_setting_and_reach_dagster_only_by_name(monkeypatch):
    from qpbot_assets.defs.resources import resources

    listed = [{"url": f"postgresql://u:{PASSWORD}@h/db", "table": "faq", "id_column": "id"}]
    monkeypatch.setenv("QPBOT_SQL_SOURCES", json.dumps([{**listed[0], "text_column": "answer"}]))
    [source] = QpbotSettings().sql_sources
    assert (source.table, source.text_column, source.updated_column) == ("faq", "answer", None)

    resource = resources().resources["sql_sources"]
    config = resource.get_resource_definition().config_schema.default_value
    assert config == {"sources_json": {"env": "QPBOT_SQL_SOURCES"}}  # what the UI shows
    assert [s.table for s in resource.process_config_and_initialize().sources] == ["faq"]

    monkeypatch.setenv("QPBOT_SQL_SOURCES", json.dumps(listed))  # no text_column
    with pytest.raises(ValueError, match="sql_sources"):
        QpbotSettings()


# --- listing and errors ----------------------------------------------------------------


def test_listing_reads_versions_and_fetches_only_changed_rows(database_url, tmp_path):
    write_rows(database_url, ROWS)
    store = DocumentStore(QpbotSettings(home=tmp_path / "home"))
    with SqlTable(faq_source(database_url)) as table:  # no updated column: a hash of the row
        first = table.list_rows()
        assert table.stage(store, first) == 2
        assert table.stage(store, first) == 0  # snapshots already at these versions
    [one, two] = sorted(first, key=lambda o: o.uri)
    snapshot = store.snapshot(one.document_id)
    document = store.blob_file(snapshot["sha256"], snapshot["suffix"]).read_text()
    assert "# Resetting the robot" in document and "author: Ann" in document

    write_rows(database_url, {2: ("Warranty", "The warranty lasts 36 months.")})
    with SqlTable(faq_source(database_url)) as table:
        second = {o.uri: o.version for o in table.list_rows()}
    assert second[one.uri] == one.version and second[two.uri] != two.version

    with SqlTable(faq_source(database_url, updated_column="updated_at")) as table:
        versions = [o.version for o in table.list_rows()]
    assert all(v not in (one.version, two.version) for v in versions)


def test_bad_configuration_names_the_setting(database_url, closed_port, tmp_path):
    def error(source: SqlSource) -> str:
        with pytest.raises(SqlSourceError) as raised:
            with SqlTable(source, lambda field: f"SETTING.{field}"):
                pass
        return str(raised.value)

    assert "SETTING.table: no table 'nope'" in error(
        faq_source(database_url).model_copy(update={"table": "nope"})
    )
    message = error(faq_source(database_url, updated_column="changed"))
    assert "SETTING.updated_column" in message and "'changed'" in message and "answer" in message
    unreachable = error(faq_source(f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port}/db"))
    assert unreachable.startswith("SETTING.url: cannot read postgresql://u:***@127.0.0.1")
    assert PASSWORD not in unreachable
    assert "SETTING.url: no SQLite file" in error(faq_source(f"sqlite:///{tmp_path / 'typo.db'}"))
    assert not (tmp_path / "typo.db").exists()


# --- `qpbot ingest --sql`, end to end --------------------------------------------------


def test_ingest_insert_update_delete_and_an_unchanged_rerun(postgres_url, qpbot_home, capsys):
    command = [
        "ingest",
        "--sql",
        postgres_url,
        "--table",
        "faq",
        "--id-column",
        "id",
        "--text-column",
        "answer",
        "--title-column",
        "question",
        "--updated-column",
        "updated_at",
        "--metadata-columns",
        "author",
        "--json",
    ]

    def ingest() -> dict:
        assert main(command) == 0
        out, err = capsys.readouterr()
        assert PASSWORD not in out + err
        return json.loads(out)

    def search(query: str) -> list:
        # Keyword search embeds no query: the model loads only in the ingest's own process.
        return Retriever.open(qpbot_home).search(query, 3, mode="keyword")

    write_rows(postgres_url, ROWS)
    first = ingest()
    assert first["ingest"] == {
        "documents": 2,
        "new": 2,
        "changed": 0,
        "removed": 0,
        "runs": 1,
        "success": True,
    }
    assert first["documents"] == 2 and first["quarantined"] == []
    [hit, *_] = search("how long is the warranty")
    assert "24 months" in hit.text and hit.title == "Warranty"
    assert hit.source_uri.startswith("sql://") and hit.source_uri.endswith("/faq/2")

    # One row edited, one deleted, one inserted: one run for the two documents.
    edited = {2: ("Warranty", "The warranty lasts 36 months, parts included.")}
    write_rows(
        postgres_url, {**edited, 3: ("Charging", "The dock charges it in three hours.")}, (1,)
    )
    second = ingest()["ingest"]
    assert (second["new"], second["changed"], second["removed"], second["runs"]) == (1, 1, 1, 1)
    assert "36 months" in search("how long is the warranty")[0].text
    assert not any("power button" in hit.text for hit in search("hold the power button"))

    files_before = stage_file_times(qpbot_home)
    again = ingest()
    assert again["ingest"]["runs"] == 0 and again["ingest"]["changed"] == 0
    assert stage_file_times(qpbot_home) == files_before  # nothing recomputed or rewritten

    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["documents"] == 2 and status["chunks"] == again["chunks"] == 2

    # The password is nowhere in the home: document store, Dagster's runs and events, index.
    for path in qpbot_home.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_ingest_reports_a_missing_column_by_its_flag(database_url, qpbot_home, capsys):
    code = main(
        ["ingest", "--sql", database_url, "--table", "faq", "--id-column", "id"]
        + ["--text-column", "body"]
    )
    assert code == 2
    assert "--text-column: table 'faq' has no column 'body'" in capsys.readouterr().err
    assert main(["ingest", "--sql", database_url, "--table", "faq"]) == 2
    assert "also give --id-column, --text-column" in capsys.readouterr().err


# --- the sensor ------------------------------------------------------------------------


def test_sql_sensor_adds_edits_and_deletes_rows_and_a_failed_tick_loses_nothing(
    database_url, tmp_path
):
    write_rows(database_url, ROWS)
    source = faq_source(database_url)  # no updated column: PostgreSQL hashes rows itself
    documents = DocumentStoreResource(home=str(tmp_path / "home"))

    def resources(*sources: SqlSource) -> dict:
        listed = [json.loads(s.model_dump_json()) | {"url": database_url} for s in sources]
        return {
            "documents": documents,
            "sql_sources": SqlSourcesResource(sources_json=json.dumps(listed)),
        }

    with SqlTable(source) as table:
        ids = {int(o.uri.rsplit("/", 1)[1]): o.document_id for o in table.list_rows()}

    with dg.instance_for_test() as instance:
        first = tick(sql_sensor, instance, None, **resources(source))
        assert documents.store.live_documents() == sorted(ids.values())
        [run] = first.run_requests
        assert run.job_name == "ingest_documents"
        assert documents.store.source_uri(ids[1]).startswith("sql://")
        assert documents.store.snapshot(ids[1]) is not None  # fetched for raw_document

        assert isinstance(
            tick(sql_sensor, instance, first.cursor, **resources(source)), dg.SkipReason
        )

        write_rows(database_url, {1: (ROWS[1][0], "Hold the power button for twenty seconds.")})
        edited = tick(sql_sensor, instance, first.cursor, **resources(source))
        [run] = edited.run_requests
        assert run.tags["dagster/asset_partition_range_start"] == shard_of(ids[1])
        assert run.tags["dagster/asset_partition_range_end"] == shard_of(ids[1])
        assert edited.dynamic_partitions_requests == []  # its shard has its partition

        # A tick that cannot read its table fails, naming the setting; nothing is removed.
        broken = source.model_copy(update={"text_column": "body"})
        with pytest.raises(SqlSourceError, match=r"QPBOT_SQL_SOURCES\[1\]\.text_column"):
            tick(sql_sensor, instance, edited.cursor, **resources(source, broken))
        assert len(documents.store.live_documents()) == 2
        again = tick(sql_sensor, instance, edited.cursor, **resources(source))
        assert isinstance(again, dg.SkipReason)  # the cursor it kept is still the truth

        write_rows(database_url, {}, delete=(2,))
        removed = tick(sql_sensor, instance, edited.cursor, **resources(source))
        assert documents.store.live_documents() == [ids[1]]
        assert [r.job_name for r in removed.run_requests] == ["refresh_index"]


def test_sql_sensor_takes_a_large_first_listing_over_several_ticks(tmp_path, monkeypatch):
    url = with_faq_table(f"sqlite:///{tmp_path / 'faq.db'}")
    write_rows(url, {**ROWS, 3: ("Charging", "The dock charges the robot.")})
    monkeypatch.setattr(sensors, "SQL_ROWS_PER_TICK", 2)
    resources = {
        "documents": DocumentStoreResource(home=str(tmp_path / "home")),
        "sql_sources": SqlSourcesResource(
            sources_json=json.dumps(
                [{"url": url, "table": "faq", "id_column": "id", "text_column": "answer"}]
            )
        ),
    }
    with dg.instance_for_test() as instance:
        first = tick(sql_sensor, instance, None, **resources)
        assert len(resources["documents"].store.live_documents()) == 2
        second = tick(sql_sensor, instance, first.cursor, **resources)
        assert len(resources["documents"].store.live_documents()) == 3
        assert [r.job_name for r in second.run_requests] == ["ingest_documents"]
        assert isinstance(tick(sql_sensor, instance, second.cursor, **resources), dg.SkipReason)


def test_sql_sensor_is_off_without_tables(tmp_path):
    with dg.instance_for_test() as instance:
        result = tick(
            sql_sensor,
            instance,
            None,
            documents=DocumentStoreResource(home=str(tmp_path)),
            sql_sources=SqlSourcesResource(),
        )
    assert isinstance(result, dg.SkipReason) and "QPBOT_SQL_SOURCES" in result.skip_message
