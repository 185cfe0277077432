"""Every answer and every piece of feedback, in a relational database.

SQLite under QPBOT_HOME by default, PostgreSQL (or anything SQLAlchemy speaks) through
QPBOT_DATABASE_URL. These rows are the feedback pipeline's raw material, so writing them
must neither lose them nor slow answers down: requests only put rows on a queue; a
background thread writes them, and while the database is unreachable it appends them to a
spool file under QPBOT_HOME that it replays (idempotently, by primary key) once the
database answers again.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)

metadata = sa.MetaData()

answers = sa.Table(
    "answers",
    metadata,
    sa.Column("answer_id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("mode", sa.String(16)),  # retrieval: hybrid | dense | keyword
    sa.Column("retrieved", sa.JSON, nullable=False),  # [{"chunk_id", "document_id", "score"}]
    sa.Column("prompt_version", sa.String(32)),
    sa.Column("model_version", sa.String(200)),
    sa.Column("index_version", sa.String(200)),
    sa.Column("answer", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("latency_ms", sa.JSON),  # per stage
    # Added with prompt answer-v2 (older tables get them on start-up, see _ensure_schema):
    sa.Column("answer_mode", sa.String(16)),  # generative | extractive | declined
    sa.Column("grounded", sa.Boolean),
    sa.Column("evidence", sa.JSON),  # the prompt's units, as FinishedAnswer.evidence_rows
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("feedback_id", sa.String(36), primary_key=True),
    sa.Column("answer_id", sa.String(36), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rating", sa.String(8), nullable=False),  # "up" | "down"
    sa.Column("comment", sa.Text),
    sa.Column("source_judgments", sa.JSON),  # {"chunk_id": "relevant" | "irrelevant"}
)

TABLES = {"answers": answers, "feedback": feedback}


def engine_for(database_url: str) -> sa.Engine:
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the installed driver is psycopg2.
    if database_url.startswith(("postgresql://", "postgres://")):
        database_url = "postgresql+psycopg2://" + database_url.split("://", 1)[1]
    connect_args = {"connect_timeout": 2} if database_url.startswith("postgresql") else {}
    return sa.create_engine(database_url, pool_pre_ping=True, connect_args=connect_args)


def now() -> datetime:
    return datetime.now(UTC)


class AnswerLog:
    """Non-blocking writer of answer and feedback rows (see the module docstring)."""

    retry_seconds = 2.0

    def __init__(self, database_url: str, spool_path: Path):
        self.engine = engine_for(database_url)
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        self._recent_answers: set[str] = set()  # recorded but maybe not written yet
        self.spool_path = Path(spool_path)
        self._queue: queue.Queue[tuple[str, dict] | None] = queue.Queue()
        self._spool_lock = threading.Lock()
        self._schema_ready = False
        self._thread = threading.Thread(target=self._run, name="answer-log", daemon=True)
        self._thread.start()

    # --- what requests call ----------------------------------------------------------
    def record_answer(self, row: dict[str, Any]) -> None:
        if len(self._recent_answers) > 10_000:
            self._recent_answers.clear()
        self._recent_answers.add(row["answer_id"])
        self._queue.put(("answers", {"created_at": now(), **row}))

    def record_feedback(self, row: dict[str, Any]) -> None:
        self._queue.put(("feedback", {"created_at": now(), **row}))

    def answer_exists(self, answer_id: str) -> bool | None:
        """True/False from the database; None when it cannot be asked right now."""
        if answer_id in self._recent_answers:
            return True
        try:
            self._ensure_schema()
            with self.engine.connect() as connection:
                query = sa.select(answers.c.answer_id).where(answers.c.answer_id == answer_id)
                return connection.execute(query).first() is not None
        except sa.exc.SQLAlchemyError:
            return None

    @property
    def spooled(self) -> int:
        """Rows waiting in the spool for the database to come back."""
        with self._spool_lock:
            try:
                with open(self.spool_path) as handle:
                    return sum(1 for line in handle if line.strip())
            except FileNotFoundError:  # nothing spooled, or just replayed and removed
                return 0

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every queued row is written or spooled (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.engine.dispose()

    # --- the writer thread -----------------------------------------------------------
    def _run(self) -> None:
        next_replay = 0.0
        while True:
            try:
                item = self._queue.get(timeout=self.retry_seconds)
            except queue.Empty:
                item = ()
            if item is None:
                self._queue.task_done()
                return
            if item:
                table, row = item
                if not self._write([(table, row)]):
                    self._spool(table, row)
                self._queue.task_done()
            if time.monotonic() >= next_replay and self.spool_path.exists():
                if not self._replay_spool():
                    next_replay = time.monotonic() + self.retry_seconds

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            metadata.create_all(self.engine)
            add_missing_columns(self.engine)
            self._schema_ready = True

    def _write(self, rows: list[tuple[str, dict]]) -> bool:
        try:
            self._ensure_schema()
            with self.engine.begin() as connection:
                for table, row in rows:
                    connection.execute(_insert_ignoring_duplicates(self.engine, TABLES[table], row))
            return True
        except sa.exc.SQLAlchemyError as error:
            log.warning("answer log: database unavailable (%s); spooling", type(error).__name__)
            return False

    def _spool(self, table: str, row: dict) -> None:
        line = json.dumps({"table": table, "row": row}, default=_jsonable)
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self._spool_lock, open(self.spool_path, "a") as handle:
            handle.write(line + "\n")

    def _replay_spool(self) -> bool:
        with self._spool_lock:
            lines = [json.loads(line) for line in self.spool_path.read_text().splitlines() if line]
            rows = [(item["table"], _restore(item["row"])) for item in lines]
            if rows and not self._write(rows):
                return False
            self.spool_path.unlink()
            return True


def add_missing_columns(engine: sa.Engine) -> list[str]:
    """Adds the (nullable) columns a table made by an older qpbot lacks; returns them as
    "table.column". Columns are only ever added, so this is the whole migration story."""
    inspector = sa.inspect(engine)
    added = []
    with engine.begin() as connection:
        for name, table in TABLES.items():
            present = {column["name"] for column in inspector.get_columns(name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(
                        sa.text(f'ALTER TABLE {name} ADD COLUMN "{column.name}" {kind}')
                    )
                    added.append(f"{name}.{column.name}")
    return added


def _insert_ignoring_duplicates(engine: sa.Engine, table: sa.Table, row: dict):
    """A replayed row that already landed is skipped, never written twice."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return sa.insert(table).values(**row)
    return insert(table).values(**row).on_conflict_do_nothing()


def _jsonable(value):
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    raise TypeError(f"cannot spool {type(value).__name__}")


def _restore(row: dict) -> dict:
    return {
        key: datetime.fromisoformat(value["__datetime__"])
        if isinstance(value, dict) and "__datetime__" in value
        else value
        for key, value in row.items()
    }
