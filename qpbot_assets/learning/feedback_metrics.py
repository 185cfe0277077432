"""Daily figures of the answer service from the copied feedback events (feedback.py).

For one UTC day:
- answers given that day, answers that failed (`error` set), latency percentiles per stage
  (`latency_ms`: retrieval, generation, first_token, ...);
- ratings given that day: up, down and the thumbs-up rate. Only an answer's latest rating
  counts (`feedback.latest_feedback`), on the day it was given: a changed mind counts
  once, and a day's figures lose a rating that a later day replaced;
- the documents and chunks most often cited in the answers rated up ("good") and down
  ("bad") that day. An answer cites the sources it refers to as [n]; an answer without such
  markers counts all the sources it was shown with (the service lists them all as
  citations).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, timedelta

import numpy as np
import pandas as pd

from qpbot_assets.learning.feedback import latest_feedback

PERCENTILES = (50, 90, 99)
TOP = 5


def day_bounds(day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(day, tz="UTC")
    return start, start + pd.Timedelta(days=1)


def _on_day(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    if frame.empty:
        return frame
    start, end = day_bounds(day)
    created = pd.to_datetime(frame["created_at"], utc=True)
    return frame[(created >= start) & (created < end)]


def cited_sources(answer_text: str | None, retrieved: list[dict] | None) -> list[dict]:
    """The retrieved entries ({chunk_id, document_id, score}) an answer cites: those its
    text refers to as [n] (1-based), else all of them."""
    retrieved = list(retrieved or [])
    text = answer_text if isinstance(answer_text, str) else ""  # a failed answer: NaN
    numbers = {int(n) for n in re.findall(r"\[(\d{1,3})\]", text)}
    cited = [retrieved[n - 1] for n in sorted(numbers) if 1 <= n <= len(retrieved)]
    return cited or retrieved


def daily_metrics(answers: pd.DataFrame, feedback: pd.DataFrame, day: date) -> dict:
    """Figures for `day` (UTC) from the tables `read_table` returns (JSON columns parsed).

    Returns {"day", "answers", "errors", "ratings", "up", "down", "thumbs_up_rate"
    (None without ratings), "latency_ms": {stage: {"p50", "p90", "p99"}}, "top_documents"
    and "top_chunks": {"good": [[id, count], ...], "bad": [...]}}.
    """
    todays_answers = _on_day(answers, day)
    latency: dict[str, dict[str, float]] = {}
    stages: dict[str, list[float]] = {}
    for timings in todays_answers.get("latency_ms", pd.Series(dtype=object)):
        for stage, ms in (timings or {}).items():
            if isinstance(ms, int | float):
                stages.setdefault(stage, []).append(float(ms))
    for stage, values in sorted(stages.items()):
        latency[stage] = {f"p{p}": round(float(np.percentile(values, p)), 1) for p in PERCENTILES}

    todays_feedback = _on_day(latest_feedback(feedback), day)
    up = int((todays_feedback.get("rating", pd.Series(dtype=str)) == "up").sum())
    down = int((todays_feedback.get("rating", pd.Series(dtype=str)) == "down").sum())

    documents = {"good": Counter(), "bad": Counter()}
    chunks = {"good": Counter(), "bad": Counter()}
    if not todays_feedback.empty and not answers.empty:
        rated = todays_feedback[["answer_id", "rating"]].merge(
            answers[["answer_id", "answer", "retrieved"]], on="answer_id"
        )
        for _, row in rated.iterrows():
            verdict = "good" if row["rating"] == "up" else "bad"
            for source in cited_sources(row["answer"], row["retrieved"]):
                documents[verdict][source["document_id"]] += 1
                chunks[verdict][source["chunk_id"]] += 1

    errors = todays_answers["error"].notna().sum() if not todays_answers.empty else 0
    return {
        "day": day.isoformat(),
        "answers": len(todays_answers),
        "errors": int(errors),
        "ratings": up + down,
        "up": up,
        "down": down,
        "thumbs_up_rate": round(up / (up + down), 4) if up + down else None,
        "latency_ms": latency,
        "top_documents": {v: [list(p) for p in c.most_common(TOP)] for v, c in documents.items()},
        "top_chunks": {v: [list(p) for p in c.most_common(TOP)] for v, c in chunks.items()},
    }


def daily_series(answers: pd.DataFrame, feedback: pd.DataFrame, last_day: date, days: int = 30):
    """Answers per day and thumbs-up rate (NaN on days without ratings) for the `days` days
    ending with `last_day`: a DataFrame indexed by date with columns answers, up, down,
    thumbs_up_rate."""
    index = [last_day - timedelta(days=n) for n in range(days - 1, -1, -1)]
    series = pd.DataFrame(index=index, data={"answers": 0, "up": 0, "down": 0})
    if not answers.empty:
        counts = pd.to_datetime(answers["created_at"], utc=True).dt.date.value_counts()
        series["answers"] = [int(counts.get(day, 0)) for day in index]
    if not feedback.empty:
        latest = latest_feedback(feedback)
        latest = latest.assign(day=pd.to_datetime(latest["created_at"], utc=True).dt.date)
        by_day = latest.groupby(["day", "rating"]).size()
        series["up"] = [int(by_day.get((day, "up"), 0)) for day in index]
        series["down"] = [int(by_day.get((day, "down"), 0)) for day in index]
    rated = series["up"] + series["down"]
    series["thumbs_up_rate"] = (series["up"] / rated).where(rated > 0)
    return series
