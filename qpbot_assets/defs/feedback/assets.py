"""What users said: answer and feedback rows copied from the feedback database, and the
training pairs made from them."""

import dagster as dg

from qpbot_assets.learning.feedback import sync_feedback_events
from qpbot_assets.resources import FeedbackDatabaseResource

FEEDBACK = {"group_name": "feedback"}


@dg.asset(**FEEDBACK, kinds={"sql", "parquet"})
def feedback_events(
    context: dg.AssetExecutionContext, feedback_db: FeedbackDatabaseResource
) -> dg.MaterializeResult:
    """Answers and feedback rows newer than the last copy, appended to Parquet files under
    `$QPBOT_HOME/feedback/` (each row once, by primary key). Reads SQLite or PostgreSQL,
    whichever QPBOT_DATABASE_URL names."""
    engine = feedback_db.engine()
    try:
        result = sync_feedback_events(engine, feedback_db.folder)
    finally:
        engine.dispose()
    context.log.info(f"feedback_events: new rows {result.new_rows}")
    return dg.MaterializeResult(
        metadata={
            "new_answers": result.new_rows["answers"],
            "new_feedback": result.new_rows["feedback"],
            "answers": result.total_rows["answers"],
            "feedback": result.total_rows["feedback"],
            "cursor": dg.MetadataValue.json(result.cursor),
            "folder": dg.MetadataValue.path(str(feedback_db.folder)),
        }
    )
