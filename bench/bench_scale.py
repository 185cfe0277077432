"""Scale benchmark: N one-sentence Markdown documents, and what each one costs.

    .venv/bin/python bench/bench_scale.py [--documents 100000] [--ui] [--home DIR]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--dagster-storage dagster]

Writes N synthetic documents into the inbox of a fresh QPBOT_HOME, ingests the inbox with
`qpbot ingest` (`qpbot_assets.runtime.runs.ingest_paths`, one run over all partitions, as
`bench_ingest.timed_ingest` runs it), then again unchanged, and reports:

- time: ms per document end to end and beyond embedding (the encode time the
  chunk_embeddings step logs in the run), and the unchanged re-run (seconds, share);
- qpbot state per document: files and bytes under QPBOT_HOME by record kind, without the
  document's own content (the inbox file and its copy in blobs/), the LanceDB table and
  the Dagster storage; bytes both as written (apparent) and as allocated on this disk;
- Dagster storage per document: the SQLite files under $QPBOT_HOME/dagster (run
  databases, the cross-run index shard, runs.db) and anything in the repository's
  dagster_home, each table's and index's pages (`dbstat`), events by type (count, bytes in
  each database) and the metadata and tags per materialization;
- the inbox sensor's tick over the N files (first tick with no cursor, then unchanged);
- with --ui, the Dagster UI's partition query (the asset page's PartitionHealthQuery)
  through a `dagster-webserver` on a loopback port;
- with --postgres, Dagster's storage in a fresh database on that server instead of SQLite
  (`QPBOT_DAGSTER_PG_URL`), sized per table with its indexes;
- with --dagster-storage dagster, the ingests on Dagster's own storage class (`storage:
  postgres` or `storage: sqlite`, writing planned events one by one) instead of qpbot's
  batching one, for comparison: the same tables and files.

Results go to bench/results/scale_<N>.json. Figures are of one run on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import timed_ingest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ENCODED = re.compile(r"encoded (\d+) chunks in ([\d.]+)s")
# What the Dagster UI asks for a partitioned asset's page (its PartitionHealthQuery).
PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
      }
    }
  }
}
"""


def write_corpus(inbox: Path, documents: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for number in tqdm(range(documents), desc="writing documents", unit="doc", mininterval=1):
        (inbox / f"note-{number:07d}.md").write_text(
            f"Note {number} records that shipment {number * 7919 % 100003} left on time.\n"
        )


# --- files on disk ----------------------------------------------------------------------
def _usage(entry: os.DirEntry) -> tuple[int, int]:
    stat = entry.stat(follow_symlinks=False)
    return stat.st_size, stat.st_blocks * 512


def record_kind(relative: Path, is_dir: bool) -> str:
    """The kind of a path under QPBOT_HOME: per-document records by stage, the rest by folder."""
    parts = relative.parts
    if parts[0] == "documents" and len(parts) >= 2:
        if len(parts) == 2:
            return "documents/<id>/ (directory)"
        if parts[2] == "vectors":  # the layout before vectors moved beside the records
            return "documents/<id>/vectors/ (directory)" if is_dir else "vectors/<model>.npz"
        if parts[2].endswith(".npz"):
            return "vectors/<model>.npz"
        stage = parts[2].removesuffix(".json")
        if "." in stage:  # embeddings.<model>, indexed.<table>
            stage = stage.split(".", 1)[0] + (".<model>" if stage.startswith("emb") else ".<table>")
        return f"documents/<id>/{stage}.json"
    if parts[0] == "vectors":  # vectors/<model>/<xx>/<id>.npz
        return "vectors/<model>/<xx>/ (directory)" if is_dir else "vectors/<model>.npz"
    if len(parts) == 1 and parts[0].startswith("documents.db"):  # the records, -wal and -shm
        return "documents.db (stage and source records)"
    if len(parts) == 1 and not is_dir:
        return "pointers and other top-level files"
    return f"{parts[0]}/"


def walk(root: Path) -> dict[str, dict[str, int]]:
    """{kind: {files, directories, bytes, allocated_bytes}} for everything under root."""
    kinds: dict[str, Counter] = defaultdict(Counter)
    stack = [root]
    with tqdm(desc=f"sizing {root.name}", unit="entry", mininterval=1) as bar:
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    kind = record_kind(Path(entry.path).relative_to(root), is_dir)
                    size, allocated = _usage(entry)
                    counts = kinds[kind]
                    counts["directories" if is_dir else "files"] += 1
                    counts["bytes"] += 0 if is_dir else size
                    counts["allocated_bytes"] += allocated
                    if is_dir:
                        stack.append(Path(entry.path))
                    bar.update()
    return {kind: dict(counts) for kind, counts in sorted(kinds.items())}


# Folders of QPBOT_HOME that are not the per-document state the targets speak of.
CONTENT = {"inbox/", "blobs/"}  # the document's own content and its copy
NOT_STATE = CONTENT | {"index/", "dagster/", "models/"}


def checkpoint_records(home: Path) -> None:
    """Folds the records database's write-ahead log into it: the log is bounded (SQLite
    checkpoints it at about 4 MB) and transient, the database is what stays per document."""
    database = home / "documents.db"
    if database.exists():
        with sqlite3.connect(database) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def qpbot_state(home: Path, documents: int) -> dict:
    kinds = walk(home)
    state = {k: v for k, v in kinds.items() if k not in NOT_STATE}

    def total(names, field):
        return sum(kinds[k].get(field, 0) for k in names if k in kinds)

    per_document = {
        k: {
            "files": round(v.get("files", 0) / documents, 3),
            "directories": round(v.get("directories", 0) / documents, 3),
            "bytes": round(v.get("bytes", 0) / documents, 1),
            "allocated_bytes": round(v.get("allocated_bytes", 0) / documents, 1),
        }
        for k, v in state.items()
    }
    without_vectors = [k for k in state if not k.startswith("vectors/")]
    return {
        "by_kind": kinds,
        "state_per_document_by_kind": per_document,
        "state_per_document": {
            "files": round(total(state, "files") / documents, 2),
            "directories": round(total(state, "directories") / documents, 2),
            "bytes": round(total(state, "bytes") / documents),
            "allocated_bytes": round(total(state, "allocated_bytes") / documents),
            "bytes_without_npz_vectors": round(total(without_vectors, "bytes") / documents),
            "allocated_bytes_without_npz_vectors": round(
                total(without_vectors, "allocated_bytes") / documents
            ),
        },
        "content_per_document": {
            "bytes": round(total(CONTENT, "bytes") / documents),
            "allocated_bytes": round(total(CONTENT, "allocated_bytes") / documents),
        },
        "lancedb_per_document": {
            "bytes": round(total(["index/"], "bytes") / documents),
            "allocated_bytes": round(total(["index/"], "allocated_bytes") / documents),
        },
    }


# --- Dagster's storage --------------------------------------------------------------------
def dagster_files(home: Path) -> dict[str, dict[str, int]]:
    """Bytes of each kind of file under $QPBOT_HOME/dagster and the repo's dagster_home."""
    kinds: dict[str, Counter] = defaultdict(Counter)
    for root, label in ((home / "dagster", "$QPBOT_HOME/dagster"), (REPO / "dagster_home", "")):
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            relative = path.relative_to(root)
            if label:
                name = relative.as_posix()
                if relative.parts[:2] == ("history", "runs") and name != "history/runs/index.db":
                    name = "history/runs/<run_id>.db (one per run)"
                elif relative.parts[0] not in ("history", "schedules"):
                    name = f"{relative.parts[0]}/ (run's artifacts, compute logs)"
                kind = f"{label}/{name}"
            else:
                kind = f"dagster_home/{relative.as_posix()}"
            stat = path.stat()
            kinds[kind]["files"] += 1
            kinds[kind]["bytes"] += stat.st_size
            kinds[kind]["allocated_bytes"] += stat.st_blocks * 512
    return {kind: dict(counts) for kind, counts in sorted(kinds.items())}


def _databases(home: Path) -> dict[str, Path]:
    history = home / "dagster" / "history"
    found = {"runs.db": history / "runs.db", "index.db": history / "runs" / "index.db"}
    for path in sorted((history / "runs").glob("*.db")):
        if path.name != "index.db":
            found[f"run:{path.stem}"] = path
    return {name: path for name, path in found.items() if path.exists()}


def event_log(home: Path, documents: int) -> dict:
    """Events by type and database, pages per table and index, metadata per materialization."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    pages: dict[str, Counter] = defaultdict(Counter)
    metadata_bytes: dict[str, list[int]] = defaultdict(list)
    tags_bytes: list[int] = []
    event_bytes: list[int] = []
    for name, path in _databases(home).items():
        shard = "run_dbs" if name.startswith("run:") else name.removesuffix(".db")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for table, size in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                pages[shard][table] += size
            if shard == "runs":
                continue
            rows = db.execute(
                "SELECT COALESCE(dagster_event_type, 'log message'), COUNT(*), "
                "SUM(LENGTH(event)) FROM event_logs GROUP BY 1"
            )
            for event_type, count, size in rows:
                by_type[event_type][f"{shard}_count"] += count
                by_type[event_type][f"{shard}_bytes"] += size
            if shard != "index":
                continue
            query = (
                "SELECT event FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
            for (text,) in tqdm(db.execute(query), desc="materializations", mininterval=1):
                event = json.loads(text)
                data = event["dagster_event"]["event_specific_data"]["materialization"]
                asset = "/".join(data["asset_key"]["path"])
                metadata_bytes[asset].append(len(json.dumps(data["metadata_entries"])))
                tags_bytes.append(len(json.dumps(data.get("tags") or {})))
                event_bytes.append(len(text))
    types = {
        event_type: {
            **counts,
            "per_document_count": round(
                (counts["run_dbs_count"] or counts["index_count"]) / documents, 3
            ),
            "per_document_bytes": round(
                (counts["run_dbs_bytes"] + counts["index_bytes"]) / documents, 1
            ),
        }
        for event_type, counts in sorted(by_type.items(), key=lambda kv: -sum(kv[1].values()))
    }
    every = [size for sizes in metadata_bytes.values() for size in sizes]
    return {
        "events_by_type": types,
        "pages_by_table_per_document": {
            shard: {
                table: round(size / documents, 1)
                for table, size in sorted(sizes.items(), key=lambda kv: -kv[1])
                if size / documents >= 50
            }
            for shard, sizes in pages.items()
        },
        "asset_materialization": {
            "count": len(event_bytes),
            "median_event_bytes": statistics.median(event_bytes) if event_bytes else 0,
            "median_metadata_bytes": statistics.median(every) if every else 0,
            "median_metadata_bytes_by_asset": {
                asset: statistics.median(sizes) for asset, sizes in sorted(metadata_bytes.items())
            },
            "median_tags_bytes": statistics.median(tags_bytes) if tags_bytes else 0,
        },
    }


def run_events(home: Path, postgres_url: str | None):
    """A function that runs one SQL query on the runs' event logs (every run database
    under the home, or the PostgreSQL database) and yields its rows."""

    def query(sql: str):
        if postgres_url:
            with _postgres(postgres_url) as connection, connection.cursor() as cursor:
                cursor.execute(sql.replace("%", "%%"))
                yield from cursor
            return
        for name, path in _databases(home).items():
            if name.startswith("run:"):
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    yield from db.execute(sql)

    return query


def embedding_seconds(query) -> float:
    """Seconds the runs' chunk_embeddings steps logged for encoding."""
    seconds = 0.0
    for (text,) in query(
        "SELECT event FROM event_logs WHERE dagster_event_type IS NULL "
        "AND event LIKE '%encoded % chunks in %'"
    ):
        if match := ENCODED.search(json.loads(text).get("user_message", "")):
            seconds += float(match.group(2))
    return seconds


def step_seconds(query) -> dict[str, float]:
    """Seconds from each step's start to its success, summed over the runs."""
    columns = "SELECT run_id, step_key, timestamp FROM event_logs WHERE dagster_event_type ="
    starts = {(run, step): at for run, step, at in query(f"{columns} 'STEP_START'")}
    seconds: Counter = Counter()
    for run, step, ended in query(f"{columns} 'STEP_SUCCESS'"):
        seconds[step] += _timestamp(ended) - _timestamp(starts[run, step])
    return {step: round(value, 1) for step, value in seconds.most_common()}


def _timestamp(value) -> float:
    from datetime import datetime

    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(value).timestamp()


# --- Dagster on PostgreSQL ----------------------------------------------------------------
def _postgres(url: str):
    import psycopg2

    return psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))


def create_postgres_database(server: str) -> tuple[str, str]:
    """(name, SQLAlchemy URL) of a fresh database on `server` (a postgresql:// URL)."""
    name = f"qpbot_scale_{os.getpid()}_{int(time.time())}"
    admin = _postgres(server)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    admin.close()
    base = server.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
    return name, f"{base}/{name}"


def drop_postgres_database(server: str, name: str) -> None:
    admin = _postgres(server)
    admin.autocommit = True
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def postgres_storage(url: str, documents: int) -> dict:
    """Each table's size with its indexes and TOAST (pg_total_relation_size), and the
    events by type (bytes of their JSON, and as stored: pg_column_size, after compression)."""
    with _postgres(url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC"
        )
        tables = dict(cursor.fetchall())
        cursor.execute(
            "SELECT COALESCE(dagster_event_type, 'log message'), COUNT(*), "
            "SUM(OCTET_LENGTH(event)), SUM(PG_COLUMN_SIZE(event)) FROM event_logs "
            "GROUP BY 1 ORDER BY 3 DESC"
        )
        events = {
            event_type: {
                "count": count,
                "bytes": int(size),
                "stored_bytes": int(stored),
                "per_document_count": round(count / documents, 3),
                "per_document_bytes": round(int(size) / documents, 1),
            }
            for event_type, count, size, stored in cursor.fetchall()
        }
    return {
        "bytes_per_document": round(sum(tables.values()) / documents),
        "tables_per_document": {
            table: round(size / documents, 1)
            for table, size in tables.items()
            if size / documents >= 50
        },
        "events_by_type": events,
    }


def dagster_own_storage_home(folder: Path) -> Path:
    """A DAGSTER_HOME in `folder` with the repository's Dagster configuration (that of
    postgres/ when QPBOT_DAGSTER_PG_URL is set) but Dagster's own storage class."""
    postgres = bool(os.environ.get("QPBOT_DAGSTER_PG_URL"))
    shipped = REPO / "dagster_home" / ("postgres" if postgres else "") / "dagster.yaml"
    config = yaml.safe_load(shipped.read_text())
    config["storage"] = (
        {"postgres": {"postgres_url": {"env": "QPBOT_DAGSTER_PG_URL"}}}
        if postgres
        else {"sqlite": {"base_dir": {"env": "QPBOT_DAGSTER_STORAGE"}}}
    )
    folder.mkdir(parents=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config))
    return folder


def summed(kinds: dict[str, dict[str, int]], field: str) -> int:
    return sum(v.get(field, 0) for v in kinds.values())


# --- sensor and UI ------------------------------------------------------------------------
def sensor_ticks(home: Path, repeat: int = 3) -> dict:
    """The inbox sensor evaluated against the home's instance: once with no cursor (every
    file is new to it: it lists, registers and groups them), then unchanged with its cursor."""
    import dagster as dg

    from qpbot_assets.runtime.instance import get_instance
    from qpbot_assets.runtime.runs import load_definitions
    from qpbot_serving.settings import QpbotSettings

    os.environ["QPBOT_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)
    instance = get_instance(QpbotSettings())
    definitions = load_definitions()  # the sensor with the resources the daemon gives it
    inbox_sensor = definitions.get_sensor_def("inbox_sensor")
    resources = definitions.resources

    def tick(cursor):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=resources, sensor_name="inbox_sensor"
        )
        started = time.perf_counter()
        result = inbox_sensor(context)
        return time.perf_counter() - started, result

    first_seconds, first = tick(None)
    unchanged = [tick(first.cursor) for _ in range(repeat)]
    assert all(isinstance(result, dg.SkipReason) for _, result in unchanged)
    return {
        "first_tick_s": round(first_seconds, 3),
        "first_tick_run_requests": len(first.run_requests),
        # The cursor is stored with each tick that changes it; it names the listing (every
        # file's URI and version), an object under listings/ written by ticks that change it.
        "cursor_bytes": len(first.cursor),
        "listing_object_bytes": sum(
            path.stat().st_size for path in (home / "listings" / "inbox_sensor").glob("*")
        ),
        "unchanged_tick_median_s": round(statistics.median(s for s, _ in unchanged), 3),
        "unchanged_ticks_s": [round(s, 3) for s, _ in unchanged],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _graphql(url: str, query: str, variables: dict, timeout: float = 300) -> dict:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read()
    return {**json.loads(text), "response_bytes": len(text)}


def ui_partition_page(home: Path, repeat: int = 3, start_timeout: float = 300) -> dict:
    """Times the asset page's partition query on a webserver over the home's instance."""
    port = _free_port()
    env = {
        **os.environ,
        "QPBOT_HOME": str(home),
        "QPBOT_DAGSTER_STORAGE": str(home / "dagster"),
        "DAGSTER_HOME": str(
            REPO / "dagster_home" / ("postgres" if os.environ.get("QPBOT_DAGSTER_PG_URL") else "")
        ),
    }
    webserver = Path(sys.executable).parent / "dagster-webserver"
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [webserver, "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    variables = {"assetKey": {"path": ["raw_document"]}}
    try:
        started = time.perf_counter()
        while True:  # until the code location has loaded and the asset is known
            try:
                answer = _graphql(url, PARTITION_HEALTH_QUERY, variables, timeout=10)
                if answer.get("data", {}).get("assetNodeOrError", {}).get("id"):
                    break
            except OSError:
                pass
            if time.perf_counter() - started > start_timeout or process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"dagster-webserver did not serve: {log.read()[-2000:]!r}")
            time.sleep(1)
        ready_seconds = time.perf_counter() - started
        timings, statuses = [], {}
        for _ in range(repeat):
            started = time.perf_counter()
            answer = _graphql(url, PARTITION_HEALTH_QUERY, variables)
            timings.append(time.perf_counter() - started)
            node = answer["data"]["assetNodeOrError"]
            statuses = node["assetPartitionStatuses"]
        return {
            "webserver_ready_s": round(ready_seconds, 1),
            "partition_health_query_median_s": round(statistics.median(timings), 3),
            "partition_health_query_s": [round(t, 3) for t in timings],
            "response_bytes": answer["response_bytes"],
            "partition_keys": len(node["partitionKeysByDimension"][0]["partitionKeys"]),
            "materialized_partitions": len(statuses.get("materializedPartitions", [])),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- the run ------------------------------------------------------------------------------
def per_document_storage(home: Path, documents: int) -> dict:
    """Dagster's files; the per-document figures count those under the home only (the
    repository's dagster_home holds the configuration, and other processes log there)."""
    files = dagster_files(home)
    own = {kind: v for kind, v in files.items() if kind.startswith("$QPBOT_HOME")}
    return {
        "files": files,
        "bytes_per_document": round(summed(own, "bytes") / documents),
        "allocated_bytes_per_document": round(summed(own, "allocated_bytes") / documents),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--home", type=Path, help="keep the QPBOT_HOME here (must not exist)")
    parser.add_argument("--ui", action="store_true", help="also time the UI's partition query")
    parser.add_argument("--output", type=Path, help="default bench/results/scale_<N>.json")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="Dagster on PostgreSQL: a fresh database on this server (postgresql://...)",
    )
    parser.add_argument(
        "--dagster-storage",
        choices=["qpbot", "dagster"],
        default="qpbot",
        help="Dagster's storage class: qpbot's (batching, the default) or Dagster's own",
    )
    args = parser.parse_args()
    count = args.documents
    suffix = ("_postgres" if args.postgres else "") + (
        "_dagster_storage" if args.dagster_storage == "dagster" else ""
    )
    output = args.output or RESULTS / f"scale_{count}{suffix}.json"
    postgres_url = None
    if args.postgres:
        database, postgres_url = create_postgres_database(args.postgres)
        os.environ["QPBOT_DAGSTER_PG_URL"] = postgres_url  # `qpbot` picks postgres/dagster.yaml
    try:
        result = measure(args, count, postgres_url)
    finally:
        if args.postgres:
            drop_postgres_database(args.postgres, database)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    brief = {
        key: result[key]
        for key in (
            "documents",
            "first_run_ms_per_document",
            "ms_per_document_beyond_embedding",
            "rerun_s",
            "rerun_share_of_first",
            "one_edit_rerun_s",
        )
    }
    brief["qpbot_state_per_document"] = result["qpbot_state"]["state_per_document"]
    brief["dagster_bytes_per_document"] = result["dagster_storage_after_first_run"][
        "bytes_per_document"
    ]
    brief["sensor"] = result["sensor"]
    brief["ui"] = result["ui"]
    print(json.dumps(brief, indent=2))
    print(f"written to {output}", file=sys.stderr)


def measure(args, count: int, postgres_url: str | None) -> dict:
    """Writes the corpus, ingests it twice, sizes everything, ticks the sensor."""
    with tempfile.TemporaryDirectory() as tmp:
        home = (args.home or Path(tmp) / "home").resolve()
        if home.exists():
            sys.exit(f"{home} exists: the benchmark needs a fresh QPBOT_HOME")
        inbox = home / "inbox"
        write_corpus(inbox, count)
        dagster_home = (
            dagster_own_storage_home(Path(tmp) / "dagster_home")
            if args.dagster_storage == "dagster"
            else None
        )
        load_before = os.getloadavg()

        print(f"first ingest of {count:,} documents", file=sys.stderr)
        first_s, peak_mb, _, status = timed_ingest(
            home, inbox, show_progress=True, dagster_home=dagster_home
        )
        query = run_events(home, postgres_url)
        encode_s = embedding_seconds(query)
        steps = step_seconds(query)
        dagster_first = per_document_storage(home, count)
        if postgres_url:
            dagster_first["postgres"] = postgres_storage(postgres_url, count)
            dagster_first["bytes_per_document"] += dagster_first["postgres"]["bytes_per_document"]
            events = "see dagster_storage_after_first_run.postgres"
        else:
            events = event_log(home, count)

        print("unchanged re-run", file=sys.stderr)
        rerun_s, _, _, rerun_status = timed_ingest(
            home, inbox, show_progress=True, dagster_home=dagster_home
        )
        dagster_after_rerun = per_document_storage(home, count)
        if postgres_url:
            dagster_after_rerun["bytes_per_document"] += postgres_storage(postgres_url, count)[
                "bytes_per_document"
            ]
        checkpoint_records(home)
        state = qpbot_state(home, count)

        print("one document edited", file=sys.stderr)
        (inbox / "note-0000000.md").write_text("Note 0 was edited: the shipment left late.\n")
        edit_s, _, _, edit_status = timed_ingest(
            home, inbox, show_progress=True, dagster_home=dagster_home
        )

        print("sensor ticks", file=sys.stderr)
        sensor = sensor_ticks(home)
        ui = ui_partition_page(home) if args.ui else "not measured (run with --ui)"
        load_after = os.getloadavg()

    result = {
        "documents": count,
        "chunks": status["chunks"],
        "quarantined": len(status["quarantined"]),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "first_run_s": round(first_s, 1),
        "first_run_ms_per_document": round(1000 * first_s / count, 2),
        "embedding_s": round(encode_s, 1),
        "ms_per_document_beyond_embedding": round(1000 * (first_s - encode_s) / count, 2),
        "peak_rss_mb": round(peak_mb),
        "rerun_s": round(rerun_s, 2),
        "rerun_share_of_first": round(rerun_s / first_s, 4),
        "rerun_runs": rerun_status["ingest"]["runs"],
        # One run over the edited document's shard; the shard's other documents are skipped.
        "one_edit_rerun_s": round(edit_s, 2),
        "one_edit_rerun_ingest": edit_status["ingest"],
        "qpbot_state": state,
        "dagster_storage_after_first_run": dagster_first,
        "step_seconds": steps,
        "dagster_storage_added_by_rerun_per_document": round(
            dagster_after_rerun["bytes_per_document"] - dagster_first["bytes_per_document"], 1
        ),
        "dagster_files_grown_by_rerun": {
            kind: after["bytes"] - dagster_first["files"].get(kind, {}).get("bytes", 0)
            for kind, after in dagster_after_rerun["files"].items()
            if after["bytes"] != dagster_first["files"].get(kind, {}).get("bytes", 0)
        },
        "dagster_storage": "postgresql" if postgres_url else "sqlite",
        "dagster_storage_class": args.dagster_storage,
        "dagster_event_log": events,
        "sensor": sensor,
        "ui": ui,
    }
    return result


if __name__ == "__main__":
    main()
