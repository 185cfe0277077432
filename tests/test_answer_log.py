"""The answer log on real SQLite and PostgreSQL, including a database that is down and comes back."""

from __future__ import annotations

import os
import time
import uuid

import psycopg2
import sqlalchemy as sa

from qpbot_serving.answer_log import AnswerLog, answers, feedback


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


def rows(engine, table) -> list[dict]:
    with engine.connect() as connection:
        return [dict(r._mapping) for r in connection.execute(sa.select(table))]


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


def test_a_database_blip_neither_blocks_nor_loses_rows(postgres_database, tmp_path):
    # A database that does not exist yet: connections fail until it is created.
    name = f"qpbot_blip_{uuid.uuid4().hex[:8]}"
    url = postgres_database.rsplit("/", 1)[0] + f"/{name}"
    log = AnswerLog(url, tmp_path / "spool.jsonl")
    log.retry_seconds = 0.2
    admin = psycopg2.connect(
        host="127.0.0.1", user=os.environ.get("PGUSER", "postgres"), dbname="postgres"
    )
    admin.autocommit = True
    try:
        started = time.monotonic()
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for answer_id in ids:
            log.record_answer(sample_answer(answer_id))
        # Answering never waits for the database: three blocking writes would take at least
        # three connect timeouts (2 s each); the bound is loose for loaded machines.
        assert time.monotonic() - started < 1.5
        assert log.flush()
        assert log.spooled == 3

        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        deadline = time.monotonic() + 20
        while log.spooled and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log.spooled == 0
        assert sorted(r["answer_id"] for r in rows(log.engine, answers)) == sorted(ids)
    finally:
        log.close()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
