"""The feedback sensor: starts retraining when users' ratings call for it."""

import json
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from qpbot_assets.defs.resources import FeedbackDatabaseResource, RetrainingPolicyResource
from qpbot_assets.defs.training.jobs import RETRAIN_JOB_NAME
from qpbot_assets.learning.signals import retraining_reason
from qpbot_serving.answer_log import feedback as feedback_table
from qpbot_serving.answer_log import metadata


def recent_ratings(connection: sa.Connection, window: int) -> list[str]:
    """The ratings ("up"/"down") of the last `window` rated answers, oldest first; an
    answer's latest feedback row is the one that counts (feedback.latest_feedback)."""
    newest_first = (feedback_table.c.created_at.desc(), feedback_table.c.feedback_id.desc())
    ranked = sa.select(
        feedback_table.c.rating,
        feedback_table.c.created_at,
        feedback_table.c.feedback_id,
        sa.func.row_number()
        .over(partition_by=feedback_table.c.answer_id, order_by=newest_first)
        .label("newness"),
    ).subquery()
    recent = connection.execute(
        sa.select(ranked.c.rating)
        .where(ranked.c.newness == 1)
        .order_by(ranked.c.created_at.desc(), ranked.c.feedback_id.desc())
        .limit(window)
    )
    return list(recent.scalars())[::-1]


@dg.sensor(
    job_name=RETRAIN_JOB_NAME,
    minimum_interval_seconds=30,
    # On by default so the loop closes by itself; switch it off in the UI to retrain by hand.
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts retrain_embedder when the thumbs-up rate over the last rated answers "
    "falls or enough new training pairs have come in since the last retraining (an answer's "
    "latest rating counts).",
)
def feedback_sensor(
    context: dg.SensorEvaluationContext,
    feedback_db: FeedbackDatabaseResource,
    retraining: RetrainingPolicyResource,
):
    cursor = json.loads(context.cursor) if context.cursor else {}
    policy = retraining.feedback_policy
    engine = feedback_db.engine()
    try:
        metadata.create_all(engine)
        with engine.connect() as connection:
            recent = recent_ratings(connection, policy.window)
            query = sa.select(
                feedback_table.c.feedback_id,
                feedback_table.c.answer_id,
                feedback_table.c.created_at,
                feedback_table.c.rating,
                feedback_table.c.source_judgments,
            ).order_by(feedback_table.c.created_at, feedback_table.c.feedback_id)
            if cursor:
                since = datetime.fromisoformat(cursor["created_at"])
                query = query.where(feedback_table.c.created_at > since)
            new_rows = connection.execute(query).all()
    finally:
        engine.dispose()
    # An answer's latest row is always among the new rows when any of its rows is.
    latest_new = {row.answer_id: row for row in new_rows}.values()
    reason = retraining_reason(
        recent, [(row.rating, row.source_judgments) for row in latest_new], policy
    )
    if reason is None:
        return dg.SkipReason(
            f"{len(new_rows)} feedback rows since the last retraining: no reason to retrain"
        )
    latest = new_rows[-1]
    context.update_cursor(json.dumps({"created_at": latest.created_at.isoformat()}))
    # The run key names the newest feedback row: the same signal never retrains twice.
    return dg.RunRequest(
        run_key=f"feedback-{latest.feedback_id}", tags={"qpbot/retrain-reason": reason[:200]}
    )
