"""Feedback events: an incremental copy of the service's answer and feedback rows.

The service writes to the feedback database (answer_log.py). `sync_feedback_events` copies
rows newer than a cursor into Parquet files under `feedback/` of the state store
(QPBOT_STORAGE_URL, else QPBOT_HOME), so everything downstream reads files, not the live
database. Each file is rewritten whole (a PUT on object storage, a rename on local disk), so
a reader sees the old copy or the new one:

- `answers.parquet`: answer_id, created_at (UTC), query, mode, retrieved (JSON list of
  {chunk_id, document_id, score}), prompt_version, model_version, index_version, answer,
  error, latency_ms (JSON object of stage -> ms), answer_mode, grounded, evidence (JSON list
  of the prompt's evidence units)
- `feedback.parquet`: feedback_id, answer_id, created_at (UTC), rating ("up" | "down"),
  comment, source_judgments (JSON object chunk_id -> "relevant" | "irrelevant")

An answer can be rated any number of times (a user changes their mind, or clicks twice).
Its latest feedback row is the one that counts, whole: rating, comment and source
judgments together, never merged with earlier rows (`latest_feedback`). Everything that
reads ratings keeps that rule: rated answers and so the training pairs, the golden set and
the LoRA examples, the daily figures, the feedback sensor.

Rows are keyed by their primary key, so reading a row twice never duplicates it. The cursor
steps back by `LOOKBACK` because a row replayed from the service's spool keeps the time it
was answered, which can be earlier than rows already copied.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd
import sqlalchemy as sa

from qpbot_serving.answer_log import TABLES, add_missing_columns, metadata
from qpbot_serving.state import FEEDBACK_DIR, StateStore

LOOKBACK = timedelta(hours=1)
KEYS = {"answers": "answer_id", "feedback": "feedback_id"}
JSON_COLUMNS = {
    "answers": ["retrieved", "latency_ms", "evidence"],
    "feedback": ["source_judgments"],
}


@dataclass(frozen=True)
class SyncResult:
    new_rows: dict[str, int]  # table -> rows not seen before
    total_rows: dict[str, int]
    cursor: dict[str, str | None]


def sync_feedback_events(engine: sa.Engine, state: StateStore) -> SyncResult:
    """Copies answer and feedback rows into Parquet on `state`: those created since the
    newest row copied before, minus LOOKBACK (rows committed late), are fetched and the
    unseen ones added. The copies are their own cursor, so copy and cursor never part."""
    metadata.create_all(engine)  # a service that never answered has not created them yet
    add_missing_columns(engine)
    new_rows, total_rows, new_cursor = {}, {}, {}
    for name, table in TABLES.items():
        existing = read_table(state, name, parse_json=False)
        since = existing["created_at"].max() if not existing.empty else None
        query = sa.select(table)
        if since is not None:
            query = query.where(table.c.created_at >= since.to_pydatetime() - LOOKBACK)
        with engine.connect() as connection:
            fetched = pd.DataFrame(connection.execute(query).mappings().all())
        if not fetched.empty:
            fetched["created_at"] = pd.to_datetime(fetched["created_at"], utc=True)
            for column in JSON_COLUMNS[name]:
                fetched[column] = fetched[column].map(_to_json)
        key = KEYS[name]
        known = set(existing[key]) if not existing.empty else set()
        fresh = fetched[~fetched[key].isin(known)] if not fetched.empty else fetched
        combined = pd.concat([existing, fresh], ignore_index=True) if not fresh.empty else existing
        if not fresh.empty:
            combined = combined.sort_values(["created_at", key], ignore_index=True)
            state.put_file(_table_key(name), combined.to_parquet(index=False))
        new_rows[name] = len(fresh)
        total_rows[name] = len(combined)
        latest = combined["created_at"].max() if not combined.empty else None
        new_cursor[name] = latest.isoformat() if latest is not None else None
    return SyncResult(new_rows, total_rows, new_cursor)


def read_table(state: StateStore, name: str, parse_json: bool = True) -> pd.DataFrame:
    """One of the tables ("answers" or "feedback") copied to `state`; empty when nothing was
    copied. With `parse_json`, the JSON columns are Python lists and dicts."""
    data = state.get_file(_table_key(name))
    if data is None:
        return pd.DataFrame(columns=[column.name for column in TABLES[name].columns])
    frame = pd.read_parquet(io.BytesIO(data))
    for column in TABLES[name].columns:  # copied before a qpbot that added the column
        if column.name not in frame.columns:
            frame[column.name] = None
    if parse_json:
        for column in JSON_COLUMNS[name]:
            # pandas 3 reads a missing string as NaN, not None
            frame[column] = frame[column].map(
                lambda text: json.loads(text) if isinstance(text, str) and text else None
            )
    return frame


def latest_feedback(feedback: pd.DataFrame) -> pd.DataFrame:
    """The feedback row that counts for each answer: its latest (on equal times, the
    greatest feedback_id, so the choice never changes). Takes and returns feedback rows."""
    ordered = feedback.sort_values(["created_at", "feedback_id"], kind="stable")
    # Not groupby().last(): it takes each column's last non-null value, which would pair
    # a later rating with an earlier row's judgments.
    return ordered.drop_duplicates("answer_id", keep="last")


def rated_answers(state: StateStore) -> pd.DataFrame:
    """Answers joined with their latest feedback row (`latest_feedback`), from the copies
    on `state`: one row per rated answer, newest rating last.

    Columns: those of answers, plus rating, source_judgments, rated_at.
    """
    answers = read_table(state, "answers")
    feedback = read_table(state, "feedback")
    if answers.empty or feedback.empty:
        return pd.DataFrame(columns=[*answers.columns, "rating", "source_judgments", "rated_at"])
    latest = latest_feedback(feedback)[
        ["answer_id", "rating", "source_judgments", "created_at"]
    ].rename(columns={"created_at": "rated_at"})
    return answers.merge(latest, on="answer_id").sort_values("rated_at", ignore_index=True)


def _to_json(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _table_key(name: str) -> str:
    """Where the copy of table `name` ("answers" or "feedback") lives on the state store."""
    return f"{FEEDBACK_DIR}/{name}.parquet"
