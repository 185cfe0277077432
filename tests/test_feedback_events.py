"""feedback_events against the real feedback databases: SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from qpbot_assets.learning.feedback import rated_answers, read_table, sync_feedback_events
from qpbot_serving.answer_log import AnswerLog, engine_for, now


def answer_row(query: str, **extra) -> dict:
    return {
        "answer_id": str(uuid.uuid4()),
        "query": query,
        "mode": "hybrid",
        "retrieved": [{"chunk_id": "c1", "document_id": "d1", "score": 0.9}],
        "answer": "An answer [1].",
        "latency_ms": {"retrieval": 10.0},
        **extra,
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_database")


def test_copies_each_row_once_and_picks_up_late_rows(database_url, tmp_path):
    folder = tmp_path / "feedback"
    log = AnswerLog(database_url, tmp_path / "spool.jsonl")
    first = answer_row("How long does the battery last?")
    log.record_answer(first)
    log.record_feedback(
        {
            "feedback_id": str(uuid.uuid4()),
            "answer_id": first["answer_id"],
            "rating": "up",
            "source_judgments": {"c1": "relevant"},
        }
    )
    assert log.flush()

    synced = sync_feedback_events(engine_for(database_url), folder)
    assert synced.new_rows == {"answers": 1, "feedback": 1}
    again = sync_feedback_events(engine_for(database_url), folder)
    assert again.new_rows == {"answers": 0, "feedback": 0}  # nothing twice

    # A row replayed from the service's spool keeps its older answer time.
    late = answer_row("What does error E4 mean?", created_at=now() - timedelta(minutes=20))
    log._write([("answers", late)])
    thumbs_only = {
        "feedback_id": str(uuid.uuid4()),
        "answer_id": late["answer_id"],
        "rating": "down",
    }
    log.record_feedback(thumbs_only)
    assert log.flush()
    log.close()
    synced = sync_feedback_events(engine_for(database_url), folder)
    assert synced.new_rows == {"answers": 1, "feedback": 1}
    assert synced.total_rows == {"answers": 2, "feedback": 2}

    answers = read_table(folder, "answers")
    assert sorted(answers["answer_id"]) == sorted([first["answer_id"], late["answer_id"]])
    rated = rated_answers(folder).set_index("answer_id")
    assert rated.loc[first["answer_id"], "source_judgments"] == {"c1": "relevant"}
    assert rated.loc[first["answer_id"], "retrieved"][0]["chunk_id"] == "c1"
    assert rated.loc[late["answer_id"], "rating"] == "down"
    assert rated.loc[late["answer_id"], "source_judgments"] is None
