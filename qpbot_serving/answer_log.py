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
  idempotently by primary key (a row written twice, by a replay or a client's retry with
  the same feedback_id, lands once). New rows wait behind spooled ones, so order is kept.
- While the spool cannot be written either (disk full, read-only, something else in its
  place), rows are held in memory, behind the spooled ones, and tried again with the spool
  and the database at every retry; past `held_rows_limit` a row is lost, and counted.
- On PostgreSQL no call waits on the database without end, as a server that is stopped or
  frozen (alive at TCP level, answering nothing) would otherwise make it: each statement
  has a deadline, past which the log cuts its connections and the call fails as if the
  database were away (the writer spools). Requests ask through `answer_known`, on threads
  of the log's own, for at most a timeout of their own.
- Moved to a dead-letter file next to the spool, with the reason, so that nothing waits
  behind them and nothing is dropped unseen (a person reads it and can put back what is
  worth keeping): a row the database refuses for its data; feedback for an answer the
  database does not hold (accepted while it could not be asked; the service only makes ids
  of answers it logs, so the id is mistyped or made up, or its answer was set aside); a
  spool line that cannot be read (a torn line: a write cut short by a crash).
- `status()` says how many rows wait, how many were set aside or lost, whether the spool
  can be written and whether the writer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


# libpq's, for PostgreSQL: connecting, and a peer gone or cut off (no ACKs) found in seconds.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 2,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,  # ms that sent data may stay unacknowledged
}


def engine_for(database_url: str, statement_timeout_s: float | None = None) -> sa.Engine:
    """An engine for `database_url` (pre-pinged pool). On PostgreSQL its waits are bounded:
    connecting, a peer that is gone or cut off (TCP keepalives, tcp_user_timeout), a free
    pool slot (pool_timeout) and, with `statement_timeout_s`, each statement on the server
    (off by default: the feedback assets copy whole tables). Parameters the URL sets win.
    None of these ends a wait on a server that is alive at TCP level but does not answer
    (stopped, frozen): AnswerLog's deadlines do."""
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the installed driver is psycopg2.
    if database_url.startswith(("postgresql://", "postgres://")):
        database_url = "postgresql+psycopg2://" + database_url.split("://", 1)[1]
    url = sa.make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return sa.create_engine(url, pool_pre_ping=True)
    connect_args: dict[str, Any] = {
        name: value for name, value in POSTGRES_CONNECT_ARGS.items() if name not in url.query
    }
    if statement_timeout_s:
        timeout = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
        given = url.query.get("options")
        connect_args["options"] = f"{timeout} {given}" if isinstance(given, str) else timeout
    return sa.create_engine(url, pool_pre_ping=True, pool_timeout=2, connect_args=connect_args)


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
    held_rows: int  # in memory, waiting for the spool or the database (the spool failed)
    dead_letters: int  # rows and lines set aside in the dead-letter file
    lost_rows: int  # dropped: past held_rows_limit, or a dead letter that could not be written
    spool_error: str | None  # why the spool could not be written, while rows wait for it
    writer_alive: bool
    writer_restarts: int  # times the writer failed or was gone and was started again

    @property
    def backlog(self) -> int:
        """Rows accepted but not in the database yet."""
        return self.queued_rows + self.spooled_rows + self.held_rows


class AnswerLog:
    """Non-blocking writer of answer and feedback rows (see the module docstring)."""

    retry_seconds = 2.0
    # The server's statement_timeout; a second later the log's own deadline cuts the
    # connections (the server cannot end a statement while it is stopped or frozen).
    database_timeout_seconds = 5.0
    held_rows_limit = 10_000  # rows held in memory while the spool fails (a few kB each)
    lookup_threads = 4  # answer_known's own, so a frozen database takes none of the app's

    def __init__(self, database_url: str, spool_path: Path):
        self.engine = engine_for(database_url, statement_timeout_s=self.database_timeout_seconds)
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        self._connections = _CuttableConnections(self.engine)
        self._watchdog = _Watchdog(self._database_too_slow)
        self._lookups = ThreadPoolExecutor(self.lookup_threads, "answer-log-lookup")
        self._recent_answers: set[str] = set()  # recorded but maybe not written yet
        self.spool_path = Path(spool_path)
        self.dead_letter_path = self.spool_path.with_name(f"{self.spool_path.stem}.dead.jsonl")
        self._queue: queue.Queue[tuple[str, dict] | None] = queue.Queue()
        self._schema_ready = False
        self._held: list[bytes] = []  # spool lines the spool could not take; writer only
        self._spool_error: str | None = None
        self._lost_rows = 0
        # Counted, not read from the files, so status() never waits for a long replay.
        try:
            self._spooled_rows = _count_lines(self.spool_path)
        except OSError as error:
            self._spooled_rows = 0
            self._spool_failed(error, "read")
        try:
            self._dead_letters = _count_lines(self.dead_letter_path)
        except OSError:
            self._dead_letters = 0  # writing one will say why
        self._dead_letter_lock = threading.Lock()  # also guards _lost_rows
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
        """True/False from the database; None when it cannot be asked right now (it is
        away, or did not answer within database_timeout_seconds). Blocks: from the event
        loop, await `answer_known` instead."""
        if answer_id in self._recent_answers:
            return True
        try:
            with self._session() as (connection, _):
                return _answer_known(connection, answer_id)
        except sa.exc.SQLAlchemyError:
            return None

    async def answer_known(self, answer_id: str, timeout: float = 2.0) -> bool | None:
        """`answer_exists` for a request: asked on the log's own threads, so a database that
        hangs holds none of the event loop's, and given up after `timeout` seconds. None:
        unknown (the feedback is accepted; the replay sets it aside if the answer is not in
        the database)."""
        if answer_id in self._recent_answers:
            return True
        lookup = asyncio.get_running_loop().run_in_executor(
            self._lookups, self.answer_exists, answer_id
        )
        try:
            return await asyncio.wait_for(lookup, timeout)  # cancels it while it waits its turn
        except TimeoutError:
            return None

    def status(self) -> AnswerLogStatus:
        """Where the rows stand, without touching the database or the files. Asking also
        starts a writer that is gone, so a /readyz or /metrics scrape revives it."""
        self._ensure_writer()
        return AnswerLogStatus(
            queued_rows=self._queue.unfinished_tasks,
            spooled_rows=self._spooled_rows,
            held_rows=len(self._held),
            dead_letters=self._dead_letters,
            lost_rows=self._lost_rows,
            spool_error=self._spool_error,
            writer_alive=self._writer.is_alive(),
            writer_restarts=self._writer_restarts,
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every queued row is written, spooled, held or set aside (tests,
        shutdown)."""
        self._ensure_writer()
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        """Writes what is queued and stops the writer. Rows still held in memory go to the
        spool or the database if either takes them now, else to the dead-letter file."""
        self.flush()
        self._closing = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._lookups.shutdown(wait=False, cancel_futures=True)
        # A lookup still waiting would hold up the interpreter's exit (it joins pool threads).
        self._connections.cut()
        self.engine.dispose()
        self._watchdog.stop()

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
            if (self._spooled_rows or self._held) and time.monotonic() >= self._next_replay:
                self._catch_up()
            try:
                item = self._queue.get(timeout=self.retry_seconds)
            except queue.Empty:
                continue
            if item is None:
                self._save_held()
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

    @contextlib.contextmanager
    def _session(self) -> Iterator[tuple[sa.Connection, Callable[[], None]]]:
        """A connection (schema ready) and a function that renews the deadline: past it,
        with no renewal, the log's connections are cut and the call waiting on one raises
        a SQLAlchemyError, as for a database away. Renew after each row of a long run."""
        deadline = (
            self._watchdog.deadline(self._deadline_seconds)
            if self._connections.cuttable
            else contextlib.nullcontext(lambda: None)  # SQLite: a local file, nothing to cut
        )
        with deadline as renew:
            self._ensure_schema()
            with self.engine.connect() as connection:
                yield connection, renew

    @property
    def _deadline_seconds(self) -> float:
        return self.database_timeout_seconds + 1.0

    def _database_too_slow(self) -> None:
        log.warning(
            "answer log: the database did not answer within %.1f s; cutting its connections",
            self._deadline_seconds,
        )
        self._connections.cut()

    def _store(self, table: str, row: dict) -> None:
        """Writes one row, or keeps it for later: behind rows already waiting, to keep the
        order (a feedback row after its answer), or when the database cannot be reached."""
        if self._spooled_rows or self._held:
            self._keep_for_later(table, row)
            return
        try:
            with self._session() as (connection, _):
                self._insert(connection, table, row)
        except _RowRefused as refused:
            self._dead_letter(str(refused), table=table, row=row)
        except sa.exc.SQLAlchemyError as error:
            self._database_away(error)
            self._keep_for_later(table, row)

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

    def _keep_for_later(self, table: str, row: dict) -> None:
        """Spools a row, or holds it in memory while the spool cannot be written (behind the
        rows held already: the spool is tried again at the next catch-up, not per row).
        Past held_rows_limit the row is lost, and counted."""
        line = json.dumps({"table": table, "row": row}, default=_jsonable).encode()
        if not self._held and self._spooled([line]):
            return
        if len(self._held) < self.held_rows_limit:
            self._held.append(line)
            return
        with self._dead_letter_lock:
            self._lost_rows += 1
        log.error(
            "answer log: lost a %s row (%s): the spool cannot be written (%s) and %d rows are"
            " held in memory already",
            table,
            row.get("feedback_id") or row.get("answer_id"),
            self._spool_error,
            len(self._held),
        )

    def _spooled(self, lines: list[bytes]) -> bool:
        """Appends spool lines (all or none); False, with the reason noted, when it cannot."""
        try:
            self._spool(lines)
        except OSError as error:
            self._spool_failed(error)
            return False
        self._spool_error = None
        return True

    def _spool(self, lines: list[bytes]) -> None:
        """Appends lines to the spool file, or raises OSError and leaves it as it was (no
        torn line from a disk that filled up mid-write)."""
        data = b"".join(line + b"\n" for line in lines)
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        if _ends_mid_line(self.spool_path):  # after a torn last line: start a new line
            data = b"\n" + data
        fd = os.open(self.spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                unwritten = memoryview(data)
                while unwritten:
                    unwritten = unwritten[os.write(fd, unwritten) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
        self._spooled_rows += len(lines)

    def _spool_failed(self, error: OSError, doing: str = "write") -> None:
        reason = f"cannot {doing} the spool: {error.strerror or type(error).__name__}"
        if reason != self._spool_error:
            log.error("answer log: %s (%s)", reason, error)
        self._spool_error = reason  # for /readyz: no path, no internals

    def _catch_up(self) -> None:
        """Replays the spool, then writes the rows held in memory; what the database does
        not take yet waits, held rows in the spool if it can be written again."""
        # Once per retry period, whatever fails: it may rewrite thousands of held rows.
        self._next_replay = time.monotonic() + self.retry_seconds
        if self._spooled_rows:
            self._replay_spool()
        if self._held and not self._spooled_rows:  # never ahead of rows spooled earlier
            del self._held[: self._write_lines(self._held)]
        if self._held and self._spooled(self._held):
            self._held.clear()
        if not self._held and not self._spooled_rows:
            self._spool_error = None  # nothing waits on the spool

    def _save_held(self) -> None:
        """At close: rows held in memory would die with the process."""
        if not self._held:
            return
        self._catch_up()
        for line in self._held:
            item = json.loads(line)
            reason = "held in memory when the service stopped: the spool could not be written"
            self._dead_letter(reason, table=item["table"], row=item["row"])
        self._held.clear()

    def _replay_spool(self) -> None:
        """Writes the spooled rows in order (see `_write_lines`); the rest stays spooled for
        the next try."""
        try:
            lines = [line for line in self.spool_path.read_bytes().split(b"\n") if line.strip()]
        except FileNotFoundError:
            lines = []
        except OSError as error:
            self._spool_failed(error, "read")  # its rows, if any, wait for a person
            return
        done = 0
        try:
            done = self._write_lines(lines)
        finally:
            self._keep_spooled(lines[done:], changed=done > 0)

    def _write_lines(self, lines: list[bytes]) -> int:
        """Writes spool lines in order, each row in its own transaction, until the database
        stops answering; returns how many are done. A row the database refuses, or a line
        that cannot be read, is set aside and the rest goes on."""
        done = 0
        try:
            with self._session() as (connection, renew):
                for line in lines:
                    self._replay_line(connection, line)
                    done += 1
                    renew()
        except sa.exc.SQLAlchemyError as error:
            self._database_away(error)
        return done

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
            try:
                self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.dead_letter_path, "a") as handle:
                    handle.write(line)
            except OSError as error:
                # Never raised into a request or the writer; the log keeps the letter.
                self._lost_rows += 1
                log.error("answer log: cannot write a dead letter (%s): %s", error, line)
                return
            self._dead_letters += 1


class _CuttableConnections:
    """The DBAPI connections an engine holds (PostgreSQL), so that a deadline can cut them:
    a socket shut down from another thread ends at once a call waiting on it (the driver
    sees the server gone and SQLAlchemy drops the connection), which no driver timeout
    does for a server alive at TCP level that does not answer."""

    def __init__(self, engine: sa.Engine):
        self._open: set[Any] = set()
        self._lock = threading.Lock()  # a closing connection's fd is never cut once reused
        self.cuttable = engine.dialect.name == "postgresql"
        if self.cuttable:
            sa.event.listen(engine, "connect", self._opened)
            sa.event.listen(engine, "close", self._closing)
            sa.event.listen(engine, "close_detached", self._closing)

    def _opened(self, dbapi_connection: Any, _record: Any = None) -> None:
        with self._lock:
            self._open.add(dbapi_connection)

    def _closing(self, dbapi_connection: Any, _record: Any = None) -> None:
        with self._lock:
            self._open.discard(dbapi_connection)

    def cut(self) -> None:
        with self._lock:
            for dbapi_connection in self._open:
                with contextlib.suppress(Exception):  # closed already: nothing to cut
                    with socket.socket(fileno=os.dup(dbapi_connection.fileno())) as sock:
                        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """Calls `expire` when a thread overruns its deadline. One thread watches them all, so
    a deadline (or renewing one, per replayed row) costs a lock, not a thread."""

    def __init__(self, expire: Callable[[], None]):
        self._expire = expire
        self._deadlines: dict[int, tuple[float, float]] = {}  # thread id -> (time, seconds)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[Callable[[], None]]:
        """Within the block, `expire` is called once `seconds` pass since it began or since
        the function it yields (renew) was last called."""
        thread = threading.get_ident()

        def renew() -> None:
            with self._changed:
                self._deadlines[thread] = (time.monotonic() + seconds, seconds)
                self._changed.notify()

        with self._changed:
            outer = self._deadlines.get(thread)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch, name="answer-log-watchdog", daemon=True
                )
                self._thread.start()
        renew()
        try:
            yield renew
        finally:
            with self._changed:
                if outer is None:
                    self._deadlines.pop(thread, None)
                else:
                    self._deadlines[thread] = outer

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while not self._stopped:
                moment = time.monotonic()
                overrun = [t for t, (at, _) in self._deadlines.items() if at <= moment]
                if overrun:
                    for thread in overrun:  # and again, should it still wait that long
                        seconds = self._deadlines[thread][1]
                        self._deadlines[thread] = (moment + seconds, seconds)
                    self._changed.release()
                    try:
                        self._expire()
                    except Exception:
                        log.exception("answer log: a deadline's action failed")
                    finally:
                        self._changed.acquire()
                    continue
                soonest = min((at for at, _ in self._deadlines.values()), default=None)
                self._changed.wait(None if soonest is None else soonest - moment)


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
