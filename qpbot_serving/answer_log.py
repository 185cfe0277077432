"""Every answer and every piece of feedback, in a relational database.

SQLite under QPBOT_HOME by default, PostgreSQL (or anything SQLAlchemy speaks) through
QPBOT_DATABASE_URL. These rows are the feedback pipeline's raw material, so writing them
must neither lose them nor slow answers down:

- Requests only put rows on a queue; a background thread writes them. An error does not end
  that thread, and a thread that is gone anyway is started again by the next call.
- A row is checked against its table before it is queued (`AnswerLog.validate`, which the
  API also calls to answer 422): one the database would refuse is set aside at once, never
  queued or spooled.
- While the database is unreachable, rows are appended to a spool file (JSON lines) under
  QPBOT_HOME and replayed once it answers again: in order, one transaction per row,
  idempotently by primary key. New rows wait behind spooled ones, so order is kept.
- Moved to a dead-letter file next to the spool, with the reason, so that nothing waits
  behind them and nothing is dropped unseen (a person reads it and can put back what is
  worth keeping): a row the database refuses for its data; feedback for an answer the
  database does not hold (accepted while it could not be asked; the service only makes ids
  of answers it logs, so the id is mistyped or made up, or its answer was set aside); a
  spool line that cannot be read (a torn line: a write cut short by a crash).
- `status()` says how many rows wait, how many were set aside, and whether the writer runs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
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
TORN_LINE = "torn line"


def engine_for(database_url: str) -> sa.Engine:
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the installed driver is psycopg2.
    if database_url.startswith(("postgresql://", "postgres://")):
        database_url = "postgresql+psycopg2://" + database_url.split("://", 1)[1]
    connect_args = {"connect_timeout": 2} if database_url.startswith("postgresql") else {}
    return sa.create_engine(database_url, pool_pre_ping=True, connect_args=connect_args)


def now() -> datetime:
    return datetime.now(UTC)


class InvalidRow(ValueError):
    """A row its table cannot hold. The message names the column and the reason, and holds
    nothing internal, so a client may see it."""


class _RowRefused(Exception):
    """The database refused one row for the row's sake (not for the connection's)."""


@dataclass(frozen=True)
class AnswerLogStatus:
    queued_rows: int  # accepted, neither written nor spooled yet
    spooled_rows: int  # in the spool file, waiting for the database
    dead_letters: int  # rows and lines set aside in the dead-letter file
    writer_alive: bool
    writer_restarts: int  # times the writer failed or was gone and was started again

    @property
    def backlog(self) -> int:
        """Rows accepted but not in the database yet."""
        return self.queued_rows + self.spooled_rows


class AnswerLog:
    """Non-blocking writer of answer and feedback rows (see the module docstring)."""

    retry_seconds = 2.0

    def __init__(self, database_url: str, spool_path: Path):
        self.engine = engine_for(database_url)
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        self._recent_answers: set[str] = set()  # recorded but maybe not written yet
        self.spool_path = Path(spool_path)
        self.dead_letter_path = self.spool_path.with_name(f"{self.spool_path.stem}.dead.jsonl")
        self._queue: queue.Queue[tuple[str, dict] | None] = queue.Queue()
        self._schema_ready = False
        # Counted, not read from the files, so status() never waits for a long replay.
        self._spooled_rows = _count_lines(self.spool_path)
        self._dead_letters = _count_lines(self.dead_letter_path)
        self._dead_letter_lock = threading.Lock()
        self._next_replay = 0.0  # monotonic time of the next try of the spool
        self._writer_lock = threading.Lock()
        self._writer_restarts = 0
        self._closing = False
        self._writer = self._start_writer()

    # --- what requests call ----------------------------------------------------------
    def record_answer(self, row: dict[str, Any]) -> None:
        """Queues an answer row (the columns of `answers`; created_at defaults to now).

        Never waits for the database. A row the table cannot hold (see `validate`) is not
        queued: it goes to the dead-letter file at once.
        """
        row = {"created_at": now(), **row}
        if self._accept("answers", row):
            if len(self._recent_answers) > 10_000:
                self._recent_answers.clear()
            self._recent_answers.add(row["answer_id"])

    def record_feedback(self, row: dict[str, Any]) -> None:
        """Queues a feedback row, like `record_answer`. Call `validate` first to turn a bad
        row into a client error (422) instead of a dead letter."""
        self._accept("feedback", {"created_at": now(), **row})

    @staticmethod
    def validate(table: str, row: dict[str, Any]) -> None:
        """Raises InvalidRow unless `table` ("answers" or "feedback") can hold `row` as
        `record_*` writes it: only its columns, the required ones present (created_at is
        filled in when absent), each value of its column's type, text no longer than its
        column and without NUL characters (PostgreSQL refuses them), JSON values plain
        JSON (no NaN)."""
        if table not in TABLES:
            raise InvalidRow(f"no table {table!r}")
        columns = TABLES[table].columns
        unknown = sorted(set(row) - set(columns.keys()))
        if unknown:
            raise InvalidRow(f"{table} has no column {unknown[0]!r}")
        for column in columns:
            value = row.get(column.name)
            if value is None:
                filled_in = column.name == "created_at" and column.name not in row
                if not column.nullable and not filled_in:
                    raise InvalidRow(f"{table}.{column.name} is required")
                continue
            problem = _value_problem(column.type, value)
            if problem:
                raise InvalidRow(f"{table}.{column.name}: {problem}")

    def answer_exists(self, answer_id: str) -> bool | None:
        """True/False from the database; None when it cannot be asked right now."""
        if answer_id in self._recent_answers:
            return True
        try:
            self._ensure_schema()
            with self.engine.connect() as connection:
                return _answer_known(connection, answer_id)
        except sa.exc.SQLAlchemyError:
            return None

    def status(self) -> AnswerLogStatus:
        """Where the rows stand, without touching the database or the files. Asking also
        starts a writer that is gone, so a /readyz or /metrics scrape revives it."""
        self._ensure_writer()
        return AnswerLogStatus(
            queued_rows=self._queue.unfinished_tasks,
            spooled_rows=self._spooled_rows,
            dead_letters=self._dead_letters,
            writer_alive=self._writer.is_alive(),
            writer_restarts=self._writer_restarts,
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every queued row is written, spooled or set aside (tests, shutdown)."""
        self._ensure_writer()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self.flush()
        self._closing = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        self.engine.dispose()

    def _accept(self, table: str, row: dict) -> bool:
        try:
            self.validate(table, row)
        except InvalidRow as error:
            self._dead_letter(str(error), table=table, row=row)
            return False
        self._ensure_writer()
        self._queue.put((table, row))
        return True

    # --- the writer thread -----------------------------------------------------------
    def _start_writer(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="answer-log", daemon=True)
        thread.start()
        return thread

    def _ensure_writer(self) -> None:
        """Starts a new writer when the last one is gone (errors do not end it; being
        killed does)."""
        if self._closing or self._writer.is_alive():
            return
        with self._writer_lock:
            if not self._writer.is_alive():
                log.error("answer log: the writer thread had stopped; starting a new one")
                self._writer_restarts += 1
                self._writer = self._start_writer()

    def _run(self) -> None:
        while True:
            try:
                self._write_until_closed()
                return
            except Exception:
                # An ended writer would lose every later row, so a bug only costs a pause;
                # the queue is served before the spool is tried again.
                log.exception("answer log: the writer failed; it carries on")
                self._writer_restarts += 1
                self._next_replay = time.monotonic() + self.retry_seconds
                time.sleep(self.retry_seconds)

    def _write_until_closed(self) -> None:
        while True:
            if self._spooled_rows and time.monotonic() >= self._next_replay:
                self._replay_spool()
            try:
                item = self._queue.get(timeout=self.retry_seconds)
            except queue.Empty:
                continue
            if item is None:
                self._queue.task_done()
                return
            try:
                self._store(*item)
            finally:
                self._queue.task_done()

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            metadata.create_all(self.engine)
            add_missing_columns(self.engine)
            self._schema_ready = True

    def _store(self, table: str, row: dict) -> None:
        """Writes one row, or spools it: behind rows already spooled, to keep the order (a
        feedback row after its answer), or when the database cannot be reached."""
        if self._spooled_rows:
            self._spool(table, row)
            return
        try:
            self._ensure_schema()
            with self.engine.connect() as connection:
                self._insert(connection, table, row)
        except _RowRefused as refused:
            self._dead_letter(str(refused), table=table, row=row)
        except sa.exc.SQLAlchemyError as error:
            self._database_away(error)
            self._spool(table, row)

    def _insert(self, connection: sa.Connection, table: str, row: dict) -> None:
        """Writes one row in a transaction of its own. Raises _RowRefused when the row is at
        fault; any other SQLAlchemyError means the database cannot be used right now (it
        is unreachable, or cannot take rows for some other reason), and the row waits."""
        try:
            with connection.begin():
                if table == "feedback" and not _answer_known(connection, row["answer_id"]):
                    raise _RowRefused(f"no answer {row['answer_id']} in the database")
                connection.execute(_insert_ignoring_duplicates(self.engine, TABLES[table], row))
        except (sa.exc.DataError, sa.exc.IntegrityError) as error:
            raise _RowRefused(f"refused by the database: {_first_line(error.orig)}") from error
        except sa.exc.StatementError as error:
            if isinstance(error, sa.exc.DBAPIError):
                raise
            # It failed before reaching the database: a value that cannot be bound.
            raise _RowRefused(f"cannot be sent: {_first_line(error.orig)}") from error
        except (TypeError, ValueError) as error:
            # Raised by the driver itself, unwrapped (psycopg2: a NUL in a string); `validate`
            # keeps such values out, this keeps any it misses from holding rows back.
            raise _RowRefused(f"cannot be sent: {_first_line(error)}") from error

    def _database_away(self, error: sa.exc.SQLAlchemyError) -> None:
        log.warning("answer log: database unavailable (%s); spooling", type(error).__name__)
        self._next_replay = time.monotonic() + self.retry_seconds

    def _spool(self, table: str, row: dict) -> None:
        line = json.dumps({"table": table, "row": row}, default=_jsonable).encode() + b"\n"
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        if _ends_mid_line(self.spool_path):  # after a torn last line: start a new line
            line = b"\n" + line
        with open(self.spool_path, "ab") as handle:
            handle.write(line)
        self._spooled_rows += 1

    def _replay_spool(self) -> None:
        """Writes the spooled rows in order, each in its own transaction, until the database
        stops answering; the rest stays spooled for the next try. A row the database
        refuses, or a line that cannot be read, is set aside and the replay goes on."""
        try:
            lines = [line for line in self.spool_path.read_bytes().split(b"\n") if line.strip()]
        except FileNotFoundError:
            lines = []
        done = 0
        try:
            self._ensure_schema()
            with self.engine.connect() as connection:
                for line in lines:
                    self._replay_line(connection, line)
                    done += 1
        except sa.exc.SQLAlchemyError as error:
            self._database_away(error)
        finally:
            self._keep_spooled(lines[done:], changed=done > 0)

    def _replay_line(self, connection: sa.Connection, line: bytes) -> None:
        try:
            item = json.loads(line)
            table, row = item["table"], _restore(item["row"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self._dead_letter(TORN_LINE, line=line.decode("utf-8", "backslashreplace"))
            return
        try:
            self.validate(table, row)  # spooled by a qpbot that did not check rows
            self._insert(connection, table, row)
        except (InvalidRow, _RowRefused) as refused:
            self._dead_letter(str(refused), table=table, row=row)

    def _keep_spooled(self, lines: list[bytes], changed: bool) -> None:
        if not lines:
            self.spool_path.unlink(missing_ok=True)
        elif changed:
            unfinished = self.spool_path.with_name(self.spool_path.name + ".tmp")
            unfinished.write_bytes(b"".join(line + b"\n" for line in lines))
            unfinished.replace(self.spool_path)
        self._spooled_rows = len(lines)

    def _dead_letter(self, reason: str, **entry: Any) -> None:
        """Sets aside a row (table=, row=) or an unreadable spool line (line=), with why.
        A row is kept in the spool's own form: fixed, {"table", "row"} can go back into the
        spool."""
        log.error("answer log: set aside in %s: %s", self.dead_letter_path, reason)
        letter = {"at": now().isoformat(), "reason": reason, **entry}
        line = json.dumps(letter, default=_jsonable_or_repr) + "\n"
        with self._dead_letter_lock:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.dead_letter_path, "a") as handle:
                handle.write(line)
            self._dead_letters += 1


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


def _jsonable_or_repr(value):
    """For the dead-letter file, which must take any row, even one that is not JSON."""
    return _jsonable(value) if isinstance(value, datetime) else repr(value)


def _restore(row: dict) -> dict:
    return {
        key: datetime.fromisoformat(value["__datetime__"])
        if isinstance(value, dict) and "__datetime__" in value
        else value
        for key, value in row.items()
    }


def _answer_known(connection: sa.Connection, answer_id: str) -> bool:
    query = sa.select(answers.c.answer_id).where(answers.c.answer_id == answer_id)
    return connection.execute(query).first() is not None


def _value_problem(kind: sa.types.TypeEngine, value: Any) -> str | None:
    """Why a column of type `kind` cannot hold `value` (not None), or None when it can."""
    if isinstance(kind, sa.String):
        if not isinstance(value, str):
            return f"expected text, got {type(value).__name__}"
        if kind.length is not None and len(value) > kind.length:
            return f"{len(value)} characters, the column holds at most {kind.length}"
        if "\x00" in value:
            return "contains a NUL character"
    elif isinstance(kind, sa.DateTime):
        if not isinstance(value, datetime):
            return f"expected a datetime, got {type(value).__name__}"
    elif isinstance(kind, sa.Boolean):
        if not isinstance(value, bool):
            return f"expected true or false, got {type(value).__name__}"
    elif isinstance(kind, sa.JSON):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            return f"not plain JSON ({error})"
    return None


def _first_line(error: BaseException | None) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False
