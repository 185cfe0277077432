"""When feedback calls for retraining (no Dagster): a falling thumbs-up rate, or enough new
training signal since the last retraining."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeedbackPolicy:
    """QPBOT_FEEDBACK_WINDOW, QPBOT_FEEDBACK_MIN_UP_RATE and QPBOT_RETRAIN_MIN_NEW_PAIRS."""

    window: int  # the last N rated answers the thumbs-up rate is taken over
    min_up_rate: float
    min_new_pairs: int


def training_signal(rating: str, source_judgments: dict | None) -> int:
    """How many training pairs one feedback row can give: each source judged relevant, or
    the top source of a thumbs-up without judgments."""
    relevant = sum(v == "relevant" for v in (source_judgments or {}).values())
    return relevant or int(rating == "up" and not source_judgments)


def retraining_reason(
    recent_ratings: list[str], new_feedback: list[tuple[str, dict | None]], policy: FeedbackPolicy
) -> str | None:
    """Why retraining should start now, or None.

    `recent_ratings`: the ratings ("up"/"down") of the last `policy.window` rated answers,
    oldest first. `new_feedback`: (rating, source_judgments) of every answer rated since
    the last retraining. Both take an answer's latest feedback row only
    (`feedback.latest_feedback`). A low thumbs-up rate counts only once a full window of
    new ratings came in, so one bad stretch starts one retraining, not one per new rating.
    """
    pairs = sum(training_signal(rating, judged) for rating, judged in new_feedback)
    if pairs >= policy.min_new_pairs:
        return f"{pairs} new training pairs (threshold {policy.min_new_pairs})"
    if len(recent_ratings) >= policy.window and len(new_feedback) >= policy.window:
        rate = recent_ratings.count("up") / len(recent_ratings)
        if rate < policy.min_up_rate:
            return (
                f"thumbs-up rate {rate:.2f} over the last {len(recent_ratings)} answers "
                f"(threshold {policy.min_up_rate})"
            )
    return None
