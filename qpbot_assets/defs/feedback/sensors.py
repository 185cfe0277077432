"""The feedback sensor: starts retraining when users' ratings call for it."""

import json
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from qpbot_assets.defs.training.jobs import RETRAIN_JOB_NAME
from qpbot_assets.learning.signals import retraining_reason
from qpbot_assets.resources import FeedbackDatabaseResource, RetrainingPolicyResource
from qpbot_serving.answer_log import feedback as feedback_table
from qpbot_serving.answer_log import metadata


@dg.sensor(
    job_name=RETRAIN_JOB_NAME,
    minimum_interval_seconds=30,
    # On by default so the loop closes by itself; switch it off in the UI to retrain by hand.
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts retrain_embedder when the thumbs-up rate falls or enough new "
    "training pairs have come in since the last retraining.",
)
def feedback_sensor(
    context: dg.SensorEvaluationContext,
    feedback_db: FeedbackDatabaseResource,
    retraining: RetrainingPolicyResource,
):
    cursor = json.loads(context.cursor) if context.cursor else {}
    policy = retraining.feedback_policy
    engine = feedback_db.engine()
    newest_first = (feedback_table.c.created_at.desc(), feedback_table.c.feedback_id.desc())
    try:
        metadata.create_all(engine)
        with engine.connect() as connection:
            recent = connection.execute(
                sa.select(feedback_table.c.rating).order_by(*newest_first).limit(policy.window)
            )
            recent_ratings = list(recent.scalars())[::-1]
            query = sa.select(
                feedback_table.c.feedback_id,
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
    reason = retraining_reason(
        recent_ratings, [(row.rating, row.source_judgments) for row in new_rows], policy
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
