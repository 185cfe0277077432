"""The answer log on real SQLite and PostgreSQL, including a database that is down and comes
back, rows it refuses, a torn spool file and a writer thread that is killed."""

from __future__ import annotations

import ctypes
import json
import math
import os
import time
import uuid
from datetime import UTC, datetime

import psycopg2
import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from qpbot_serving.answer_log import TORN_LINE, AnswerLog, InvalidRow, answers, feedback
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
            "qpbot_answer_log_dead_letters 1.0",
            "qpbot_answer_log_writer_alive 1.0",
            "qpbot_answer_log_writer_restarts_total 0.0",
        ):
            assert line in text.splitlines(), line
    finally:
        log.close()
