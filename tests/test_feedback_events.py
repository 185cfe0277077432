"""feedback_events against the real feedback databases (SQLite and PostgreSQL), and its
copies on object storage (moto's S3 server, as in tests/test_object_storage.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import dagster as dg
import pandas as pd
import pytest
from test_object_storage import STORAGE_URL, s3, stored_keys  # noqa: F401 (s3: a fixture)

from qpbot_assets.defs.feedback.assets import feedback_events, training_pairs
from qpbot_assets.defs.resources import (
    FeedbackDatabaseResource,
    RetrainingPolicyResource,
    SearchIndexResource,
)
from qpbot_assets.learning.feedback import rated_answers, read_table, sync_feedback_events
from qpbot_assets.learning.feedback_metrics import daily_metrics, daily_series
from qpbot_assets.learning.lora import build_examples
from qpbot_assets.learning.pairs import build_training_pairs
from qpbot_serving.answer_log import AnswerLog, engine_for, now
from qpbot_serving.object_store import cached_file
from qpbot_serving.state import TRAINING_PAIRS, StateStore


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
    state = StateStore(tmp_path)
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

    synced = sync_feedback_events(engine_for(database_url), state)
    assert synced.new_rows == {"answers": 1, "feedback": 1}
    assert sorted(p.name for p in (tmp_path / "feedback").iterdir()) == [
        "answers.parquet",
        "feedback.parquet",
    ]  # an existing home's copies, where they always were
    again = sync_feedback_events(engine_for(database_url), state)
    assert again.new_rows == {"answers": 0, "feedback": 0}  # nothing twice

    # A row replayed from the service's spool keeps its older answer time.
    late = answer_row("What does error E4 mean?", created_at=now() - timedelta(minutes=20))
    log.record_answer(late)
    thumbs_only = {
        "feedback_id": str(uuid.uuid4()),
        "answer_id": late["answer_id"],
        "rating": "down",
    }
    log.record_feedback(thumbs_only)
    assert log.flush()
    log.close()
    synced = sync_feedback_events(engine_for(database_url), state)
    assert synced.new_rows == {"answers": 1, "feedback": 1}
    assert synced.total_rows == {"answers": 2, "feedback": 2}

    answers = read_table(state, "answers")
    assert sorted(answers["answer_id"]) == sorted([first["answer_id"], late["answer_id"]])
    rated = rated_answers(state).set_index("answer_id")
    assert rated.loc[first["answer_id"], "source_judgments"] == {"c1": "relevant"}
    assert rated.loc[first["answer_id"], "retrieved"][0]["chunk_id"] == "c1"
    assert rated.loc[late["answer_id"], "rating"] == "down"
    assert rated.loc[late["answer_id"], "source_judgments"] is None


def test_an_answers_latest_rating_is_the_one_that_counts(database_url, tmp_path):
    """A changed mind counts once, as its latest feedback row whole (never merged with the
    earlier ones): in rated answers, training pairs, LoRA examples, daily figures and the
    feedback sensor."""
    from qpbot_assets.defs.feedback.sensors import feedback_sensor

    state = StateStore(tmp_path)
    log = AnswerLog(database_url, tmp_path / "spool.jsonl")
    retrieved = [{"chunk_id": c, "document_id": "d1", "score": 0.9} for c in ("c1", "c2")]
    changed = answer_row("How long does the battery last?", retrieved=retrieved)
    liked = answer_row("What does error E4 mean?")
    yesterday = now() - timedelta(days=1)

    def rate(answer: dict, rating: str, when, judgments=None) -> None:
        log.record_feedback(
            {
                "feedback_id": str(uuid.uuid4()),
                "answer_id": answer["answer_id"],
                "created_at": when,
                "rating": rating,
                "source_judgments": judgments,
            }
        )

    log.record_answer(changed)
    log.record_answer(liked)
    rate(changed, "up", yesterday, {"c1": "relevant"})
    rate(liked, "up", yesterday)
    rate(changed, "down", now())  # changed their mind, judged nothing this time
    rate(changed, "down", now())  # and clicked twice
    assert log.flush()
    log.close()
    sync_feedback_events(engine_for(database_url), state)

    rated = rated_answers(state)
    by_id = rated.set_index("answer_id")
    assert len(rated) == 2 and by_id.loc[changed["answer_id"], "rating"] == "down"
    assert by_id.loc[changed["answer_id"], "source_judgments"] is None  # not yesterday's
    pairs = build_training_pairs(rated, lambda chunk_ids: {c: f"text of {c}" for c in chunk_ids})
    assert pairs["positive_chunk_id"].tolist() == ["c1"]  # liked's top source, not changed's
    assert pairs["query"].tolist() == [liked["query"]]
    assert build_examples(rated)[1]["not thumbs up"] == 1

    answers, feedback = read_table(state, "answers"), read_table(state, "feedback")
    before = daily_metrics(answers, feedback, yesterday.date())
    assert (before["up"], before["down"]) == (1, 0)  # changed's up was replaced
    today = daily_metrics(answers, feedback, now().date())
    assert (today["up"], today["down"]) == (0, 1)
    series = daily_series(answers, feedback, now().date(), days=2)
    assert (series["up"].sum(), series["down"].sum()) == (1, 1)

    # The last two rated answers: one up, one down (not the last two rows: down, down).
    context = dg.build_sensor_context(
        resources={
            "feedback_db": FeedbackDatabaseResource(database_url=database_url, home=str(tmp_path)),
            "retraining": RetrainingPolicyResource(
                feedback_window=2, feedback_min_up_rate=0.5, retrain_min_new_pairs=100
            ),
        }
    )
    assert isinstance(feedback_sensor(context), dg.SkipReason)


def test_with_a_storage_url_the_copies_live_on_s3_and_nothing_under_the_home(
    s3,  # noqa: F811 (the fixture)
    tmp_path,
):
    """QPBOT_STORAGE_URL: the copies and the training pairs are objects under
    `<storage>/feedback/`, read back from there (a second copy adds only new rows, another
    machine reads the same pairs); the home holds only the feedback database."""
    home = tmp_path / "home"
    database_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    log = AnswerLog(database_url, tmp_path / "spool.jsonl")
    first = answer_row("How long does the battery last?")
    log.record_answer(first)
    log.record_feedback(
        {"feedback_id": str(uuid.uuid4()), "answer_id": first["answer_id"], "rating": "up"}
    )
    assert log.flush()
    resources = {
        "feedback_db": FeedbackDatabaseResource(
            database_url=database_url, home=str(home), storage_url=STORAGE_URL
        ),
        "index": SearchIndexResource(home=str(home), storage_url=STORAGE_URL),
    }
    result = dg.materialize([feedback_events, training_pairs], resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("feedback_events")[0].metadata
    assert meta["folder"].value == f"{STORAGE_URL}/feedback"

    log.record_answer(answer_row("What does error E4 mean?"))
    assert log.flush()
    log.close()
    again = dg.materialize([feedback_events], resources=resources)
    copied = again.asset_materializations_for_node("feedback_events")[0].metadata
    assert (copied["new_answers"].value, copied["answers"].value) == (1, 2)  # read from S3

    state = StateStore(STORAGE_URL)
    assert len(read_table(state, "answers")) == 2
    assert rated_answers(state)["answer_id"].tolist() == [first["answer_id"]]
    pairs = state.read(TRAINING_PAIRS)
    key = f"feedback/training_pairs/{pairs.version}.parquet"
    assert pairs.path == f"{STORAGE_URL}/{key}"
    assert stored_keys(s3, "feedback/") == {
        "platform/feedback/answers.parquet",
        "platform/feedback/feedback.parquet",
        f"platform/{key}",
        f"platform/{TRAINING_PAIRS.key}",
    }
    # Another machine reads the pairs the pointer names, through its cache.
    elsewhere = cached_file(pairs.path, tmp_path / "replica" / "cache")
    assert len(pd.read_parquet(elsewhere)) == pairs.pairs
    assert not (home / "feedback").exists() and not list(home.rglob("*.parquet"))
