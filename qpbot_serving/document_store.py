"""The document store's contract: how a source URI names a document, where the store keeps
what it knows of each document, and readers of it. The asset graph writes it
(`qpbot_assets.documents.store.DocumentStore`); the service reads a document's status and
its original from it. No Dagster here, and nothing of the write side.

Records (small, many, rewritten in place) are rows of a relational database; content
(written once, possibly large) is objects under the storage root. Nothing of either is
needed on a worker's disk when both are remote (PostgreSQL and S3).

    database: QPBOT_DATABASE_URL, by default SQLite at $QPBOT_HOME/documents.db
      document_sources (document_id, uri, snapshot, shard, live)  where a document comes
          from (kept after its deletion, no longer live), the content a source keeps here
          (a database row's), and its shard: the Dagster partition it is processed in
      document_stages (document_id, stage, record)  each stage's output with the
          fingerprint of its input: raw, extracted, cleaned, metadata, chunks,
          embeddings.<model>, indexed.<table> (what it last wrote into a LanceDB table)
          and quarantine (why a document stopped, and at which stage)
    storage root: QPBOT_STORAGE_URL (s3://bucket/prefix), by default $QPBOT_HOME
      blobs/<sha256[:2]>/<sha256><suffix>        raw bytes, written once, shared by content
      outputs/<document_id>/<stage>.<fp>.json    a stage output too large for its row
      vectors/<model>/<id[-2:]>/<id>.npz         a document's chunk vectors per model

Measured in BENCHMARKS.md ("Scale: storage per document"): files per document and stage
cost a 4 KB block each on ext4 and millions of inodes; rows cost their bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import sqlalchemy as sa

from qpbot_serving.answer_log import engine_for
from qpbot_serving.object_store import cached_file, objects_at

QUARANTINE = "quarantine"
RAW_STAGE = "raw"
EMBEDDINGS_PREFIX = "embeddings."  # + the model's slug: a document's vectors of that model
# A row's document: its text read as Markdown, its title a heading and front matter.
ROW_DOCUMENT_SUFFIX = ".md"


# Documents are processed in 256 shards, the Dagster partitions of the per-document assets:
# few and fixed, so partitions stay far below Dagster's ~100k per asset and its storage per
# document falls with the shard size (docs/scaling.md). A shard is the id's last two hex
# digits (of the URI's hash), so documents spread evenly and never move.
SHARD_DIGITS = 2


def shard_of(document_id: str) -> str:
    return document_id[-SHARD_DIGITS:]


def document_id_for(uri: str) -> str:
    """A document's id: a readable slug of its file name plus a hash of
    the full source URI, so it is stable across runs, unique per source and safe in any path."""
    name = display_name(uri).lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", name)
    slug = re.sub(r"-+\.", ".", slug).strip("-.")[:60] or "document"
    return f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def display_name(uri: str) -> str:
    """The file name a document is known by: a file's or object's name, `<table>-<id>.md`
    for a database row."""
    if uri.startswith("sql://"):
        _, table, row_id = row_parts(uri)
        return f"{table}-{row_id.replace('/', '-')}{ROW_DOCUMENT_SUFFIX}"
    return Path(unquote(urlparse(uri).path)).name


def row_uri(source_name: str, table: str, row_id: object) -> str:
    """The URI of a database row: `sql://<source>/<table>/<id>`, the id percent-encoded."""
    return f"sql://{source_name}/{quote(table, safe='.')}/{quote(str(row_id), safe='')}"


def row_parts(uri: str) -> tuple[str, str, str]:
    """(source name, table, row id) of a `sql://` URI."""
    parsed = urlparse(uri)
    _, table, row_id = parsed.path.split("/", 2)
    return parsed.netloc, unquote(table), unquote(row_id)


def indexed_stage(table_name: str) -> str:
    """The stage that records what a document last wrote into the LanceDB table `table_name`."""
    return f"indexed.{table_name}"


metadata = sa.MetaData()

document_sources = sa.Table(
    "document_sources",
    metadata,
    sa.Column("document_id", sa.String(200), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("snapshot", sa.JSON),  # {"sha256", "suffix", "size", "version"}
    sa.Column("shard", sa.String(8), nullable=False),
    # False once its source no longer lists it: search_index then removes its chunks.
    sa.Column("live", sa.Boolean, nullable=False),
    sa.Index("document_sources_by_shard", "shard", "live"),
)

document_stages = sa.Table(
    "document_stages",
    metadata,
    sa.Column("document_id", sa.String(200), primary_key=True),
    sa.Column("stage", sa.String(200), primary_key=True),
    # {"fingerprint", "output"} or {"fingerprint", "quarantined"}; a large output is
    # {"fingerprint", "output_key"}, the output an object of its own.
    sa.Column("record", sa.JSON, nullable=False),
    sa.Index("document_stages_by_stage", "stage"),
)

# Above this much JSON a stage output (the text of a long PDF, its chunks) is an object.
INLINE_OUTPUT_BYTES = 64 * 1024
# More documents than this are read by scanning their stages rather than by id lists.
SCAN_ABOVE_DOCUMENTS = 5_000


_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()  # threads of the service open it at once (uploads)


def records_engine(database_url: str) -> sa.Engine:
    """The engine of the records database (one per process), its tables created. SQLite
    runs in WAL mode, so readers (the service) never wait for the writer."""
    with _engines_lock:
        if database_url not in _engines:
            _engines[database_url] = _new_engine(database_url)
        return _engines[database_url]


def _new_engine(database_url: str) -> sa.Engine:
    engine = engine_for(database_url)
    if engine.dialect.name == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            connection.execute("PRAGMA journal_mode=WAL")
            # A power cut may lose the last commits, never corrupt: those stages run again.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=60000")

    try:
        metadata.create_all(engine)
    except sa.exc.DBAPIError:  # another process created the tables meanwhile
        metadata.create_all(engine)
    _add_shard_columns(engine)
    return engine


def _add_shard_columns(engine: sa.Engine) -> None:
    """Adds `shard` and `live` to a records database made before documents had shards (the
    live set was Dagster's partitions then). A document is taken as live when it has stage
    records or its file still exists; one without records and without a file was deleted
    from its source (and forgotten) or, for S3 and database rows, cannot be checked here:
    a source sensor that lists it again registers it again."""
    columns = {column["name"] for column in sa.inspect(engine).get_columns("document_sources")}
    if "shard" in columns:
        return
    sources, stages = document_sources.c, document_stages.c
    has_records = sa.exists().where(stages.document_id == sources.document_id)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE document_sources ADD COLUMN shard VARCHAR(8)"))
            conn.execute(sa.text("ALTER TABLE document_sources ADD COLUMN live BOOLEAN"))
            # In two statements, not one per document: the id's last SHARD_DIGITS characters.
            start = sa.func.length(sources.document_id) - (SHARD_DIGITS - 1)
            conn.execute(
                sa.update(document_sources).values(
                    shard=sa.func.substr(sources.document_id, start, SHARD_DIGITS),
                    live=has_records,
                )
            )
            unprocessed = sa.select(sources.document_id, sources.uri).where(~sources.live)
            still_there = [d for d, uri in conn.execute(unprocessed).all() if _file_exists(uri)]
            for begin in range(0, len(still_there), 500):
                conn.execute(
                    sa.update(document_sources)
                    .where(sources.document_id.in_(still_there[begin : begin + 500]))
                    .values(live=True)
                )
            conn.execute(
                sa.text("CREATE INDEX document_sources_by_shard ON document_sources (shard, live)")
            )
    except sa.exc.DBAPIError:  # another process added them meanwhile
        columns = {c["name"] for c in sa.inspect(engine).get_columns("document_sources")}
        if "shard" not in columns:
            raise


def _file_exists(uri: str) -> bool:
    return uri.startswith("file://") and Path(unquote(urlparse(uri).path)).exists()


def _forget_engines() -> None:
    """In a forked child: its own connections, and a lock no parent thread holds."""
    global _engines_lock
    _engines.clear()
    _engines_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_engines)


def vectors_key(document_id: str, model_slug: str) -> str:
    # Spread over 256 folders: a folder of millions of files is slow to list.
    return f"vectors/{model_slug}/{shard_of(document_id)}/{document_id}.npz"


def upsert(conn, table: sa.Table, keys: list[str], update: list[str]):
    """An INSERT that, for a row with the same key, sets the columns `update` instead
    (SQLite and PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"the document store needs SQLite or PostgreSQL, not {conn.dialect.name}")
    statement = insert(table)
    values = {name: statement.excluded[name] for name in update}
    return statement.on_conflict_do_update(index_elements=keys, set_=values)


class DocumentRecords:
    """Readers of the store of `settings` (a QpbotSettings): its records database
    (`documents_database_url`) and its storage root (`storage_url`, else `home`)."""

    def __init__(self, settings):
        self.home = Path(settings.home)
        self.cache_dir = Path(settings.cache_dir)
        self.engine = records_engine(settings.documents_database_url)
        self.objects = objects_at(settings.storage_url or settings.home)
        self.is_local = not settings.storage_url

    # --- content -----------------------------------------------------------------------
    def blob_key(self, sha256: str, suffix: str = "") -> str:
        # The suffix is kept because plain text, Markdown and HTML are told apart by it.
        return f"blobs/{sha256[:2]}/{sha256}{suffix.lower()}"

    def blob_file(self, sha256: str, suffix: str = "") -> Path:
        """A local file with the blob's bytes: the stored file itself on local disk, else a
        copy in the cache (blobs never change, so a copy once made stays right)."""
        return cached_file(f"{self.objects.url}/{self.blob_key(sha256, suffix)}", self.cache_dir)

    # --- records -----------------------------------------------------------------------
    def register_sources(self, documents: Iterable[tuple[str, str]]) -> None:
        """Records where live documents come from, (document_id, uri) pairs in one
        transaction: the source sensors and `qpbot ingest` before they start runs, uploads
        as they land (so the service can say "queued" at once)."""
        documents = dict(documents)
        known = self.source_uris(documents, live_only=True)
        changed = [d for d in sorted(documents) if known.get(d) != documents[d]]
        if not changed:
            return
        with self.engine.begin() as conn:
            for document_id in changed:
                conn.execute(
                    upsert(conn, document_sources, ["document_id"], update=["uri", "live"]),
                    {
                        "document_id": document_id,
                        "uri": documents[document_id],
                        "shard": shard_of(document_id),
                        "live": True,
                    },
                )

    def live_documents(self, shards: Iterable[str] | None = None) -> list[str]:
        """The ids of the live documents, of the given shards or of all, in id order."""
        query = sa.select(document_sources.c.document_id).where(document_sources.c.live)
        if shards is not None:
            query = query.where(document_sources.c.shard.in_(sorted(set(shards))))
        with self.engine.connect() as conn:
            return list(conn.scalars(query.order_by(document_sources.c.document_id)))

    def live_count(self) -> int:
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(document_sources.c.live)
            return conn.scalar(query.select_from(document_sources))

    def is_registered(self, document_id: str) -> bool:
        """Whether a source has listed the document (also after it was deleted there)."""
        return self._source_row(document_id) is not None

    def source_uri(self, document_id: str) -> str:
        return self.source(document_id)[0]

    def source(self, document_id: str) -> tuple[str, bool]:
        """(uri, live) of a registered document."""
        row = self._source_row(document_id)
        if row is None:
            raise KeyError(f"document {document_id!r} is not registered with any source")
        return row.uri, row.live

    def source_uris(self, document_ids: Iterable[str], live_only: bool = False) -> dict[str, str]:
        """{document_id: uri} of the registered (or only the live) ones among many documents."""
        ids = sorted(set(document_ids))
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = sa.select(document_sources.c.document_id, document_sources.c.uri).where(
                    document_sources.c.document_id.in_(ids[start : start + 500])
                )
                if live_only:
                    query = query.where(document_sources.c.live)
                found.update((row.document_id, row.uri) for row in conn.execute(query))
        return found

    def snapshot(self, document_id: str) -> dict | None:
        """{"sha256", "suffix", "size", "version"} of the document's snapshot, if it has one."""
        row = self._source_row(document_id)
        return row.snapshot if row is not None else None

    def read_stage(self, document_id: str, stage: str) -> dict | None:
        """The stored record {"fingerprint", "output"} or {"fingerprint", "quarantined"}."""
        return self._resolved(self._stored_record(document_id, stage))

    def read_stages(self, document_ids: Iterable[str], stages: list[str]) -> dict:
        """{(document_id, stage): record} of the given stages of many documents, read in a
        few queries (absent ones are missing)."""
        wanted = set(document_ids)
        found: dict[tuple[str, str], dict] = {}
        columns = (document_stages.c.document_id, document_stages.c.stage, document_stages.c.record)
        with self.engine.connect() as conn:
            if len(wanted) > SCAN_ABOVE_DOCUMENTS:
                queries = [sa.select(*columns).where(document_stages.c.stage.in_(stages))]
            else:
                ids = sorted(wanted)
                queries = [
                    sa.select(*columns).where(
                        document_stages.c.stage.in_(stages),
                        document_stages.c.document_id.in_(ids[start : start + 500]),
                    )
                    for start in range(0, len(ids), 500)
                ]
            for query in queries:
                for document_id, stage, record in conn.execute(query):
                    if document_id in wanted:
                        found[(document_id, stage)] = self._resolved(record)
        return found

    def quarantine(self, document_id: str) -> dict | None:
        """{"document_id", "source", "stage", "kind", "reason"} of a quarantined document."""
        return self.read_stage(document_id, QUARANTINE)

    def _stored_record(self, document_id: str, stage: str) -> dict | None:
        """The row's record as stored (a large output only named by its key)."""
        with self.engine.connect() as conn:
            return conn.scalar(
                sa.select(document_stages.c.record).where(
                    document_stages.c.document_id == document_id,
                    document_stages.c.stage == stage,
                )
            )

    def _source_row(self, document_id: str):
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(document_sources).where(document_sources.c.document_id == document_id)
            ).first()

    def _resolved(self, record: dict | None) -> dict | None:
        if record is None or "output_key" not in record:
            return record
        found = self.objects.get(record["output_key"])
        if found is None:
            raise LookupError(f"the stage output {record['output_key']} is missing from storage")
        return {"fingerprint": record["fingerprint"], "output": json.loads(found[0])}
