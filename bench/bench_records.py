"""The document store's records at 100k-1M documents: bytes per document and what a run pays
to find its work, without Dagster or the model.

    .venv/bin/python bench/bench_records.py [--documents 1000000] [--postgres URL]

Writes N documents' records as the pipeline leaves them for a one-sentence document (the
source row and the raw, extracted, cleaned, metadata, chunks, embeddings and indexed stage
records, with the same JSON shapes and sizes: bench/bench_scale.py measures those), into a
fresh records database: SQLite under a temporary QPBOT_HOME, or a fresh database on the
PostgreSQL server given. Then times, with nothing changed:

- `register_sources` of all N (what a source sensor's first tick and `qpbot ingest` do),
- `read_stages` of the four stages `sync_table` reads for every live document, and the
  whole "which documents changed" computation of `sync_table` (fingerprints included),
- one document's `run_stage` with an unchanged input (what each per-document step pays
  for a document it skips), median of 2,000.

and reports the database's bytes per document (SQLite after a checkpoint; PostgreSQL's
tables with their indexes and TOAST). Results go to bench/results/records_<N>[_postgres].json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import create_postgres_database, drop_postgres_database  # noqa: E402

from qpbot_assets.documents.store import DocumentStore, fingerprint  # noqa: E402
from qpbot_assets.indexing.sync import embedding_stage, indexed_fingerprint  # noqa: E402
from qpbot_serving.document_store import (  # noqa: E402
    document_sources,
    document_stages,
    indexed_stage,
)
from qpbot_serving.settings import QpbotSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2@int8"
TABLE = "chunks__all-minilm-l6-v2-int8"
WRITE_BATCH = 5_000


def records_of(number: int) -> tuple[str, str, dict[str, dict]]:
    """(document id, source URI, {stage: record}) of one synthetic one-sentence document."""
    name = f"doc-{number:07d}.md"
    document_id = f"{name}-{number:012x}"
    uri = f"file:///data/inbox/{name}"
    sha = fingerprint(number) * 2
    text = f"Document {number} says that the sample value is {number * 7 % 1000}."
    blocks = [{"text": text, "page": None, "section": None}]
    stages = {
        "raw": {"uri": uri, "filename": name, "sha256": sha, "size": len(text) + 10,
                "modified_ns": 1764633600000000000 + number, "fetched_at": "2026-12-01T23:00:00+00:00"},
        "extracted": {"format": "markdown", "page_count": None, "blocks": blocks, "title": None},
        "cleaned": {"format": "markdown", "page_count": None, "blocks": blocks, "title": None},
        "metadata": {"title": f"Document {number}", "author": None, "language": "en",
                     "format": "markdown", "source_uri": uri, "ingested_at": "2026-12-01T23:00:00+00:00",
                     "pages": None, "words": 10, "content_sha256": sha},
        "chunks": [{"chunk_id": f"{document_id}-0000-{sha[:8]}", "chunk_index": 0, "text": text,
                    "section": None, "page_start": None, "page_end": None, "tokens": 16}],
        embedding_stage(MODEL): {"model": MODEL, "chunks": 1, "embedded": 1, "reused": 0},
    }  # fmt: skip
    records = {stage: {"fingerprint": fingerprint(stage, number), "output": output}
               for stage, output in stages.items()}  # fmt: skip
    return document_id, uri, records


def write_store(store: DocumentStore, documents: int) -> list[str]:
    """All documents' records, in batches of one transaction each; returns their ids."""
    ids = []
    for start in tqdm(range(0, documents, WRITE_BATCH), desc="writing records", unit="batch"):
        sources, rows = [], []
        for number in range(start, min(start + WRITE_BATCH, documents)):
            document_id, uri, records = records_of(number)
            ids.append(document_id)
            sources.append({"document_id": document_id, "uri": uri})
            for stage, record in records.items():
                rows.append({"document_id": document_id, "stage": stage, "record": record})
            # What search_index records once the rows are in the table.
            scratch = {(document_id, s): r for s, r in records.items()}
            rows.append({
                "document_id": document_id,
                "stage": indexed_stage(TABLE),
                "record": {"fingerprint": indexed_fingerprint(store, document_id, MODEL, TABLE, scratch),
                           "output": {"raw_fingerprint": records["raw"]["fingerprint"],
                                      "pipeline_version": "bench"}},
            })  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(sa.insert(document_sources), sources)
            conn.execute(sa.insert(document_stages), rows)
    return ids


def changed_documents(store: DocumentStore, live: list[str]) -> list[str]:
    """What sync_table computes before it writes anything."""
    stage = indexed_stage(TABLE)
    records = store.read_stages(live, ["chunks", "metadata", embedding_stage(MODEL), stage])
    return [
        d
        for d in live
        if (d, "chunks") in records
        and (records.get((d, stage)) or {}).get("fingerprint")
        != indexed_fingerprint(store, d, MODEL, TABLE, records)
    ]


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def database_bytes(store: DocumentStore, home: Path) -> dict:
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            tables = dict(
                conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").all()
            )
        return {"file": (home / "documents.db").stat().st_size, "by_table_and_index": tables}
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")  # a fresh bulk load: sizes without dead rows
    with store.engine.connect() as conn:
        sizes = conn.exec_driver_sql(
            "SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND relkind = 'r'"
        ).all()
    tables = dict(sizes)
    return {"file": sum(tables.values()), "by_table_with_indexes": tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a fresh database is made)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    n = args.documents
    database = None
    with tempfile.TemporaryDirectory(prefix="qpbot-records-") as folder:
        home = Path(folder)
        database_url = None
        if args.postgres:
            database, database_url = create_postgres_database(args.postgres)
        try:
            store = DocumentStore(QpbotSettings(home=home, database_url=database_url))
            write_s, ids = timed(write_store, store, n)
            size = database_bytes(store, home)
            register_s, _ = timed(store.register_sources, [records_of(i)[:2] for i in range(n)])
            read_s, records = timed(
                store.read_stages,
                ids,
                ["chunks", "metadata", embedding_stage(MODEL), indexed_stage(TABLE)],
            )
            changed_s, changed = timed(changed_documents, store, ids)
            assert changed == [], f"{len(changed)} documents look changed"
            skips = []
            for document_id in ids[:: max(1, n // 2000)][:2000]:
                fp = store.read_stage(document_id, "cleaned")["fingerprint"]
                seconds, result = timed(store.run_stage, document_id, "cleaned", fp, dict)
                assert not result.computed
                skips.append(seconds)
        finally:
            if database:
                drop_postgres_database(args.postgres, database)
    cpu_flags = sorted(
        {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()}
        & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}
    )
    result = {
        "documents": n,
        "database": "postgresql" if args.postgres else "sqlite",
        "cpu_flags": cpu_flags,
        "write_s": round(write_s, 1),
        "database_bytes": size,
        "bytes_per_document": round(size["file"] / n),
        "register_unchanged_s": round(register_s, 2),
        "read_stages_4_of_all_s": round(read_s, 2),
        "records_read": len(records),
        "sync_changed_computation_s": round(changed_s, 2),
        "sync_changed_us_per_document": round(changed_s / n * 1e6, 1),
        "run_stage_unchanged_ms_median": round(statistics.median(skips) * 1000, 3),
    }
    print(json.dumps(result, indent=2))
    suffix = "_postgres" if args.postgres else ""
    output = args.output or REPO / "bench" / "results" / f"records_{n}{suffix}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
