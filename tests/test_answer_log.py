"""The answer log on real SQLite and PostgreSQL, including a database that is down and comes
back, a database that is frozen (answers nothing, fails nothing), a spool that cannot be
written, rows the database refuses, a torn spool file and a writer thread that is killed."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg2
import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from qpbot_serving.answer_log import (
    TORN_LINE,
    AnswerLog,
    InvalidRow,
    answers,
    engine_for,
    feedback,
    now,
)
from qpbot_serving.metrics import ServiceMetrics


def sample_answer(answer_id: str) -> dict:
    return {
        "answer_id": answer_id,
        "query": "How long does the battery last?",
        "mode": "hybrid",
        "retrieved": [{"chunk_id": "c1", "document_id": "d1", "score": 0.9}],
        "prompt_version": "answer-v1",
        "model_version": "SmolLM2-135M-Instruct",
        "index_version": "chunks__all-minilm-l6-v2@v3",
        "answer": "Up to 150 minutes [1].",
        "latency_ms": {"retrieval": 12.0, "generation": 800.0},
    }


def sample_feedback(answer_id: str, rating: str = "up") -> dict:
    return {"feedback_id": str(uuid.uuid4()), "answer_id": answer_id, "rating": rating}


def rows(engine, table) -> list[dict]:
    with engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(sa.select(table))]


def ids(engine, table, key: str) -> list[str]:
    return sorted(row[key] for row in rows(engine, table))


def dead_letters(log: AnswerLog) -> list[dict]:
    return [json.loads(line) for line in log.dead_letter_path.read_text().splitlines()]


def spool_line(table: str, row: dict) -> str:
    """A spool line as any qpbot writes it, including those that did not check rows."""
    stamped = {"created_at": {"__datetime__": datetime.now(UTC).isoformat()}, **row}
    return json.dumps({"table": table, "row": stamped}) + "\n"


def wait_until_replayed(log: AnswerLog, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while log.status().spooled_rows and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.status().spooled_rows == 0, log.status()


def wait_until(condition, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def metric_lines(log: AnswerLog) -> list[str]:
    metrics = ServiceMetrics()
    metrics.watch_answer_log(log)
    return generate_latest(metrics.registry).decode().splitlines()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(AnswerLog, "retry_seconds", 0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def absent_database(postgres_database):
    """(url, create): a PostgreSQL database that refuses connections until `create()`."""
    name = f"qpbot_blip_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(
        host="127.0.0.1", user=os.environ.get("PGUSER", "postgres"), dbname="postgres"
    )
    admin.autocommit = True
    try:
        yield (
            postgres_database.rsplit("/", 1)[0] + f"/{name}",
            lambda: admin.cursor().execute(f'CREATE DATABASE "{name}"'),
        )
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable_database(request, tmp_path):
    """(url, bring_back): a database that cannot be reached until `bring_back()`."""
    if request.param == "sqlite":
        path = tmp_path / "db" / "feedback.db"
        path.mkdir(parents=True)  # SQLite cannot open a directory
        return f"sqlite:///{path}", path.rmdir
    return request.getfixturevalue("absent_database")


def break_spool(path) -> None:
    """Makes `path` a spool the log cannot write, as the red team did (as good as a disk
    that is full or read-only): a directory in its place. `path.rmdir()` mends it."""
    path.mkdir(parents=True)


@pytest.fixture
def broken_spool(tmp_path):
    """A spool path that cannot be written from the start (see `break_spool`)."""
    path = tmp_path / "spool" / "answer_log.jsonl"
    break_spool(path)
    return path


class FreezableProxy:
    """A TCP proxy on loopback in front of PostgreSQL that can stop forwarding while it holds
    every connection open: to a client, a server that is stopped (kill -STOP) or hung. The
    client's packets are acknowledged, so no socket timeout of its own fires; nothing fails
    and nothing answers. What was sent while frozen is delivered on thaw, as a stopped
    server reads it once it goes on."""

    def __init__(self, upstream_port: int):
        self.requests, self.replies = threading.Event(), threading.Event()  # set: flowing
        self.thaw()
        self._replies_frozen_after: bytes | None = None
        self._upstream = ("127.0.0.1", upstream_port)
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.requests.clear()
        self.replies.clear()

    def freeze_replies_after(self, marker: bytes) -> None:
        """The next request holding `marker` reaches the server, which does the work; its
        reply, and every reply after it, is held: the client never hears."""
        self._replies_frozen_after = marker

    def thaw(self) -> None:
        self.requests.set()
        self.replies.set()

    def close(self) -> None:
        self.thaw()
        for sock in [self._listener, *self._sockets]:
            # Shut down first: a socket closed under a thread's recv or accept stays open.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self.requests.wait()  # while frozen, a new connection is accepted and left waiting
        try:
            server = socket.create_connection(self._upstream)
        except OSError:
            client.close()
            return
        self._sockets.append(server)
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        self._pump(server, client, False)

    def _pump(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        flowing = self.requests if is_request else self.replies
        try:
            while data := source.recv(65536):
                marker = self._replies_frozen_after
                if is_request and marker and marker in data:
                    self._replies_frozen_after = None
                    self.replies.clear()
                flowing.wait()
                target.sendall(data)
            flowing.wait()
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # either side closed


@pytest.fixture
def freezable_postgres(postgres_database):
    """A FreezableProxy in front of a fresh PostgreSQL database: `.url` through the proxy,
    `.direct_url` around it."""
    proxy = FreezableProxy(5432)
    proxy.direct_url = postgres_database
    proxy.url = postgres_database.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    assert proxy.url != postgres_database
    yield proxy
    proxy.close()


@pytest.fixture
def quick_deadlines(monkeypatch):
    # statement_timeout 1 s on the server; the log's own deadline a second later.
    monkeypatch.setattr(AnswerLog, "database_timeout_seconds", 1.0)


def exercise(log: AnswerLog) -> None:
    answer_id = str(uuid.uuid4())
    log.record_answer(sample_answer(answer_id))
    log.record_feedback(
        {
            "feedback_id": str(uuid.uuid4()),
            "answer_id": answer_id,
            "rating": "up",
            "comment": "spot on",
            "source_judgments": {"c1": "relevant"},
        }
    )
    assert log.flush()
    [answer] = rows(log.engine, answers)
    assert answer["retrieved"][0]["chunk_id"] == "c1" and answer["latency_ms"]["retrieval"] == 12.0
    [thumb] = rows(log.engine, feedback)
    assert thumb["answer_id"] == answer_id and thumb["source_judgments"] == {"c1": "relevant"}
    assert log.answer_exists(answer_id) is True and log.answer_exists("nope") is False
    status = log.status()
    assert (status.backlog, status.dead_letters, status.writer_alive) == (0, 0, True)


def test_sqlite_answer_log(tmp_path):
    log = AnswerLog(f"sqlite:///{tmp_path / 'feedback.db'}", tmp_path / "spool.jsonl")
    try:
        exercise(log)
    finally:
        log.close()


def test_postgres_answer_log(postgres_database, tmp_path):
    log = AnswerLog(postgres_database, tmp_path / "spool.jsonl")
    try:
        exercise(log)
    finally:
        log.close()


def test_validate_names_what_the_table_cannot_hold():
    answer = sample_answer(str(uuid.uuid4()))
    AnswerLog.validate("answers", answer)  # created_at is filled in by record_answer
    thumb = sample_feedback(str(uuid.uuid4()))
    refusals = {
        "feedback.answer_id: 64 characters, the column holds at most 36": {
            **thumb,
            "answer_id": "a" * 64,
        },
        "feedback.rating is required": {**thumb, "rating": None},
        "feedback has no column 'stars'": {**thumb, "stars": 5},
        "feedback.rating: expected text, got int": {**thumb, "rating": 1},
        "feedback.comment: contains a NUL character": {**thumb, "comment": "a\x00b"},
        "feedback.created_at: expected a datetime, got str": {**thumb, "created_at": "today"},
    }
    for message, row in refusals.items():
        with pytest.raises(InvalidRow) as refused:
            AnswerLog.validate("feedback", row)
        assert str(refused.value) == message
        assert isinstance(refused.value, ValueError)  # what the API turns into a 422
    with pytest.raises(InvalidRow, match="answers.latency_ms: not plain JSON"):
        AnswerLog.validate("answers", {**answer, "latency_ms": {"retrieval": math.nan}})


def test_an_invalid_row_is_set_aside_at_once_never_spooled(absent_database, tmp_path):
    url, _ = absent_database
    log = AnswerLog(url, tmp_path / "spool.jsonl")
    try:
        answer_id = str(uuid.uuid4())
        log.record_answer(sample_answer(answer_id))
        log.record_feedback(sample_feedback("x" * 64))
        assert log.flush()
        status = log.status()
        assert (status.spooled_rows, status.dead_letters) == (1, 1)
        [letter] = dead_letters(log)
        assert letter["table"] == "feedback" and letter["row"]["answer_id"] == "x" * 64
        assert "at most 36" in letter["reason"]
    finally:
        log.close()


def test_an_over_long_spooled_row_is_set_aside_and_the_rows_behind_it_replayed(
    database_url, tmp_path
):
    # A spool left by a qpbot that spooled rows unchecked: one feedback row among many
    # carries an id longer than the column (PostgreSQL refused it, forever, before).
    answer_ids = [str(uuid.uuid4()) for _ in range(2)]
    thumbs = [sample_feedback(answer_ids[0]) for _ in range(4)]
    over_long = sample_feedback("y" * 64)
    spool = tmp_path / "spool.jsonl"
    spool.write_text(
        spool_line("answers", sample_answer(answer_ids[0]))
        + "".join(spool_line("feedback", row) for row in thumbs[:2])
        + spool_line("feedback", over_long)
        + "".join(spool_line("feedback", row) for row in thumbs[2:])
        + spool_line("answers", sample_answer(answer_ids[1]))
    )
    log = AnswerLog(database_url, spool)
    try:
        wait_until_replayed(log)
        assert ids(log.engine, answers, "answer_id") == sorted(answer_ids)
        assert ids(log.engine, feedback, "feedback_id") == sorted(r["feedback_id"] for r in thumbs)
        [letter] = dead_letters(log)
        assert letter["row"]["feedback_id"] == over_long["feedback_id"]
        assert letter["reason"] == "feedback.answer_id: 64 characters, the column holds at most 36"
        assert log.status().dead_letters == 1 and not spool.exists()
    finally:
        log.close()


def test_a_row_the_database_refuses_is_set_aside(database_url, tmp_path):
    # A feedback table narrower than qpbot's: rows that pass validation are refused by the
    # database itself (PostgreSQL: value too long; SQLite: the CHECK constraint).
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE feedback (feedback_id VARCHAR(36) PRIMARY KEY, "
                "answer_id VARCHAR(8) NOT NULL CHECK (length(answer_id) <= 8), "
                "created_at TIMESTAMP WITH TIME ZONE NOT NULL, rating VARCHAR(8) NOT NULL)"
            )
        )
    engine.dispose()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    refused = sample_feedback(first)
    spool = tmp_path / "spool.jsonl"
    spool.write_text(
        spool_line("answers", sample_answer(first))
        + spool_line("feedback", refused)
        + spool_line("answers", sample_answer(second))
    )
    log = AnswerLog(database_url, spool)
    try:
        wait_until_replayed(log)
        assert ids(log.engine, answers, "answer_id") == sorted([first, second])
        # Written straight away too: the refused row waits for nothing and holds nothing.
        log.record_feedback(sample_feedback(second))
        third = str(uuid.uuid4())
        log.record_answer(sample_answer(third))
        assert log.flush()
        assert third in ids(log.engine, answers, "answer_id")
        assert rows(log.engine, feedback) == []
        letters = dead_letters(log)
        assert [letter["row"]["answer_id"] for letter in letters] == [first, second]
        assert all(letter["reason"].startswith("refused by the database: ") for letter in letters)
    finally:
        log.close()


def test_a_torn_last_line_neither_kills_the_writer_nor_holds_rows_back(database_url, tmp_path):
    # A crash cut the last write short: half a line, no newline.
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    spool = tmp_path / "spool.jsonl"
    torn = spool_line("answers", sample_answer(str(uuid.uuid4())))[:70]
    spool.write_text(spool_line("answers", sample_answer(first)) + torn)
    log = AnswerLog(database_url, spool)
    try:
        wait_until_replayed(log)
        log.record_answer(sample_answer(second))
        assert log.flush()
        assert ids(log.engine, answers, "answer_id") == sorted([first, second])
        [letter] = dead_letters(log)
        assert letter == {"at": letter["at"], "reason": TORN_LINE, "line": torn}
        assert log.status().writer_alive
    finally:
        log.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_killed_writer_is_started_again(tmp_path):
    log = AnswerLog(f"sqlite:///{tmp_path / 'feedback.db'}", tmp_path / "spool.jsonl")
    try:
        writer = log._writer
        # Raises SystemExit inside the writer thread: not an error it catches, it ends it.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(writer.ident), ctypes.py_object(SystemExit)
        )
        writer.join(timeout=10)
        assert not writer.is_alive()
        answer_id = str(uuid.uuid4())
        log.record_answer(sample_answer(answer_id))
        assert log.flush()
        assert ids(log.engine, answers, "answer_id") == [answer_id]
        status = log.status()
        assert status.writer_alive and status.writer_restarts == 1
    finally:
        log.close()


def test_a_database_blip_neither_blocks_nor_loses_rows(absent_database, tmp_path):
    url, create = absent_database
    log = AnswerLog(url, tmp_path / "spool.jsonl")
    try:
        started = time.monotonic()
        answer_ids = [str(uuid.uuid4()) for _ in range(3)]
        for answer_id in answer_ids:
            log.record_answer(sample_answer(answer_id))
        # Answering never waits for the database: three blocking writes would take at least
        # three connect timeouts (2 s each); the bound is loose for loaded machines.
        assert time.monotonic() - started < 1.5
        assert log.flush()
        assert log.status().spooled_rows == 3

        create()
        wait_until_replayed(log)
        assert ids(log.engine, answers, "answer_id") == sorted(answer_ids)
    finally:
        log.close()


def test_an_outage_then_return_replays_everything_else(absent_database, tmp_path):
    """What the database gets after an outage: every row but those it should not get, each
    set aside with its reason, whatever the spool held before."""
    url, create = absent_database
    kept = str(uuid.uuid4())
    kept_thumb, over_long = sample_feedback(kept), sample_feedback("z" * 64)
    spool = tmp_path / "spool.jsonl"
    torn = spool_line("answers", sample_answer(str(uuid.uuid4())))[:50]
    spool.write_text(
        spool_line("answers", sample_answer(kept))
        + spool_line("feedback", over_long)
        + spool_line("feedback", kept_thumb)
        + torn
    )
    log = AnswerLog(url, spool)
    try:
        later = [str(uuid.uuid4()) for _ in range(2)]
        later_thumb, made_up = sample_feedback(later[0]), sample_feedback(str(uuid.uuid4()))
        log.record_answer(sample_answer(later[0]))
        log.record_feedback(later_thumb)
        log.record_feedback(made_up)  # the API cannot tell it is unknown while the db is down
        log.record_answer(sample_answer(later[1]))
        assert log.flush()
        assert log.status().spooled_rows == 8  # the torn line too, until it is read

        create()
        wait_until_replayed(log)
        assert ids(log.engine, answers, "answer_id") == sorted([kept, *later])
        assert ids(log.engine, feedback, "feedback_id") == sorted(
            [kept_thumb["feedback_id"], later_thumb["feedback_id"]]
        )
        reasons = [letter["reason"] for letter in dead_letters(log)]
        assert reasons == [
            "feedback.answer_id: 64 characters, the column holds at most 36",
            TORN_LINE,
            f"no answer {made_up['answer_id']} in the database",
        ]
        status = log.status()
        assert (status.backlog, status.dead_letters, status.writer_alive) == (0, 3, True)
    finally:
        log.close()


def test_metrics_report_the_backlog_and_dead_letters(absent_database, tmp_path):
    url, _ = absent_database
    log = AnswerLog(url, tmp_path / "spool.jsonl")
    try:
        metrics = ServiceMetrics()
        metrics.watch_answer_log(log)
        log.record_answer(sample_answer(str(uuid.uuid4())))
        log.record_feedback(sample_feedback("w" * 40))
        assert log.flush()
        text = generate_latest(metrics.registry).decode()
        for line in (
            "qpbot_answer_log_queued_rows 0.0",
            "qpbot_answer_log_spooled_rows 1.0",
            "qpbot_answer_log_held_rows 0.0",
            "qpbot_answer_log_spool_failing 0.0",
            "qpbot_answer_log_lost_rows_total 0.0",
            "qpbot_answer_log_dead_letters 1.0",
            "qpbot_answer_log_writer_alive 1.0",
            "qpbot_answer_log_writer_restarts_total 0.0",
        ):
            assert line in text.splitlines(), line
    finally:
        log.close()


def test_rows_are_held_in_memory_while_the_spool_cannot_be_written(unreachable_database, tmp_path):
    """The database is away and the spool cannot be written: the rows wait in memory, and
    say so, until the spool takes them; then the database gets each of them once."""
    url, bring_back = unreachable_database
    broken_spool = tmp_path / "spool" / "answer_log.jsonl"
    log = AnswerLog(url, broken_spool)
    try:
        break_spool(broken_spool)  # while the service runs
        answer_ids = [str(uuid.uuid4()) for _ in range(3)]
        thumb = sample_feedback(answer_ids[0])
        for answer_id in answer_ids:
            log.record_answer(sample_answer(answer_id))
        log.record_feedback(thumb)
        assert log.flush()
        status = log.status()
        assert (status.held_rows, status.spooled_rows, status.backlog) == (4, 0, 4)
        assert (status.lost_rows, status.dead_letters) == (0, 0)
        assert status.spool_error == "cannot write the spool: Is a directory"
        lines = metric_lines(log)
        assert "qpbot_answer_log_held_rows 4.0" in lines
        assert "qpbot_answer_log_spool_failing 1.0" in lines

        broken_spool.rmdir()  # the spool is mended: the held rows go to it, in order
        wait_until(lambda: log.status().held_rows == 0)
        status = log.status()
        assert (status.spooled_rows, status.spool_error) == (4, None)

        bring_back()
        wait_until_replayed(log)
        assert ids(log.engine, answers, "answer_id") == sorted(answer_ids)
        assert ids(log.engine, feedback, "feedback_id") == [thumb["feedback_id"]]
        status = log.status()
        assert (status.backlog, status.lost_rows, status.dead_letters) == (0, 0, 0)
    finally:
        log.close()


def test_rows_past_the_memory_bound_are_counted_lost(
    unreachable_database, broken_spool, monkeypatch
):
    monkeypatch.setattr(AnswerLog, "held_rows_limit", 3)
    url, bring_back = unreachable_database
    log = AnswerLog(url, broken_spool)  # starts with a spool it cannot read or write
    try:
        answer_ids = [str(uuid.uuid4()) for _ in range(5)]
        for answer_id in answer_ids:
            log.record_answer(sample_answer(answer_id))
        assert log.flush()
        status = log.status()
        assert (status.held_rows, status.lost_rows, status.backlog) == (3, 2, 3)
        assert "qpbot_answer_log_lost_rows_total 2.0" in metric_lines(log)

        bring_back()  # the database is back, the spool still broken: held rows go straight in
        wait_until(lambda: log.status().held_rows == 0)
        assert ids(log.engine, answers, "answer_id") == sorted(answer_ids[:3])
        status = log.status()
        assert (status.backlog, status.lost_rows, status.spool_error) == (0, 2, None)
    finally:
        log.close()


def test_rows_still_held_at_close_are_set_aside_not_dropped(unreachable_database, broken_spool):
    url, _ = unreachable_database
    log = AnswerLog(url, broken_spool)
    answer_id = str(uuid.uuid4())
    log.record_answer(sample_answer(answer_id))
    assert log.flush() and log.status().held_rows == 1
    log.close()
    [letter] = dead_letters(log)
    assert letter["table"] == "answers" and letter["row"]["answer_id"] == answer_id
    assert letter["reason"].startswith("held in memory when the service stopped")


def test_a_feedback_id_sent_twice_is_written_once_not_set_aside(database_url, tmp_path):
    # A client retrying a request it saw time out sends the same feedback_id again: once
    # while the first is still spooled, once after it landed.
    answer_id = str(uuid.uuid4())
    thumb = sample_feedback(answer_id)
    spool = tmp_path / "spool.jsonl"
    spool.write_text(
        spool_line("answers", sample_answer(answer_id))
        + spool_line("feedback", thumb)
        + spool_line("feedback", {**thumb, "rating": "down"})
    )
    log = AnswerLog(database_url, spool)
    try:
        wait_until_replayed(log)
        log.record_feedback(thumb)
        assert log.flush()
        [row] = rows(log.engine, feedback)
        assert (row["feedback_id"], row["rating"]) == (thumb["feedback_id"], "up")  # the first
        assert log.status().dead_letters == 0 and not log.dead_letter_path.exists()
    finally:
        log.close()


def test_a_postgres_engine_bounds_its_waits(postgres_database):
    engine = engine_for(postgres_database, statement_timeout_s=0.5)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "500ms"
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                connection.exec_driver_sql("SELECT pg_sleep(3)")
        with engine.connect() as connection:
            fd = connection.connection.dbapi_connection.fileno()
            with socket.socket(fileno=os.dup(fd)) as sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 5000
        assert engine.pool.timeout() == 2
    finally:
        engine.dispose()
    # Without one, statements run as long as they take: the feedback assets copy whole tables.
    engine = engine_for(postgres_database)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    finally:
        engine.dispose()


def test_answer_known_gives_up_on_a_frozen_database_on_threads_of_its_own(
    freezable_postgres, quick_deadlines, tmp_path
):
    log = AnswerLog(freezable_postgres.url, tmp_path / "spool.jsonl")
    try:
        log.record_answer(sample_answer(str(uuid.uuid4())))  # makes the tables
        assert log.flush()
        known = str(uuid.uuid4())  # written by someone else: the log must ask the database
        with sa.create_engine(freezable_postgres.direct_url).begin() as connection:
            connection.execute(sa.insert(answers).values(**sample_answer(known), created_at=now()))

        def ask(answer_id: str, timeout: float) -> bool | None:
            return asyncio.run(log.answer_known(answer_id, timeout=timeout))

        assert ask(known, 5.0) is True and ask(str(uuid.uuid4()), 5.0) is False

        async def while_frozen():
            started = time.monotonic()
            lookups = asyncio.gather(*(log.answer_known(known, timeout=0.5) for _ in range(64)))
            await asyncio.sleep(0.05)
            # A search's blocking work, on the event loop's default threads, meanwhile: more
            # lookups than those threads would have left it none.
            searched = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.01) for _ in range(64)))
            search_seconds = time.monotonic() - searched
            return await lookups, search_seconds, time.monotonic() - started

        freezable_postgres.freeze()
        answered, search_seconds, seconds = asyncio.run(while_frozen())
        assert answered == [None] * 64  # unknown: the feedback is accepted
        assert seconds < 1.5, seconds
        assert search_seconds < 0.5, search_seconds

        freezable_postgres.thaw()
        # The lookup threads are free again (the deadline cut what they waited on).
        assert ask(known, 5.0) is True and ask(str(uuid.uuid4()), 5.0) is False
    finally:
        log.close()


def test_the_writer_spools_rather_than_hangs_on_a_frozen_database(
    freezable_postgres, quick_deadlines, tmp_path
):
    log = AnswerLog(freezable_postgres.url, tmp_path / "spool.jsonl")
    try:
        before = str(uuid.uuid4())
        log.record_answer(sample_answer(before))
        assert log.flush()

        freezable_postgres.freeze()
        started = time.monotonic()
        during = str(uuid.uuid4())
        thumb = sample_feedback(during)
        log.record_answer(sample_answer(during))
        log.record_feedback(thumb)
        assert log.flush(timeout=15)
        # The deadline (2 s), then a fresh connection's connect_timeout (2 s); loose for
        # loaded machines, and far from "never".
        assert time.monotonic() - started < 8
        status = log.status()
        assert (status.spooled_rows, status.writer_alive) == (2, True)

        freezable_postgres.thaw()
        wait_until_replayed(log)
        assert ids(log.engine, answers, "answer_id") == sorted([before, during])
        assert ids(log.engine, feedback, "feedback_id") == [thumb["feedback_id"]]
        assert log.status().dead_letters == 0
    finally:
        log.close()


def test_a_row_committed_after_its_deadline_lands_once(
    freezable_postgres, quick_deadlines, tmp_path
):
    """The database commits a row and the log never hears: it spools the row, and the
    replay finds it written."""
    log = AnswerLog(freezable_postgres.url, tmp_path / "spool.jsonl")
    direct = sa.create_engine(freezable_postgres.direct_url)
    try:
        answer_id = str(uuid.uuid4())
        log.record_answer(sample_answer(answer_id))
        assert log.flush()

        thumb = sample_feedback(answer_id)
        freezable_postgres.freeze_replies_after(b"COMMIT")
        log.record_feedback(thumb)
        assert log.flush(timeout=15)
        assert log.status().spooled_rows == 1  # it did not hear the commit...
        assert ids(direct, feedback, "feedback_id") == [thumb["feedback_id"]]  # ...made

        freezable_postgres.thaw()
        wait_until_replayed(log)
        assert ids(direct, feedback, "feedback_id") == [thumb["feedback_id"]]
        assert log.status().dead_letters == 0
    finally:
        log.close()
        direct.dispose()
