"""What users said: answer and feedback rows copied from the feedback database, and the
training pairs made from them."""

import dagster as dg

from qpbot_assets.defs.resources import FeedbackDatabaseResource, SearchIndexResource
from qpbot_assets.learning.feedback import rated_answers, sync_feedback_events
from qpbot_assets.learning.pairs import build_training_pairs, pairs_version
from qpbot_serving.state import FEEDBACK_DIR, TRAINING_PAIRS, TrainingPairsVersion

FEEDBACK = {"group_name": "feedback"}


@dg.asset(**FEEDBACK, kinds={"sql", "parquet"})
def feedback_events(
    context: dg.AssetExecutionContext, feedback_db: FeedbackDatabaseResource
) -> dg.MaterializeResult:
    """Answers and feedback rows newer than the last copy, appended to Parquet files under
    `feedback/` of the state store (QPBOT_STORAGE_URL, else QPBOT_HOME; each row once, by
    primary key). Reads SQLite or PostgreSQL, whichever QPBOT_DATABASE_URL names."""
    engine = feedback_db.engine()
    try:
        result = sync_feedback_events(engine, feedback_db.state)
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
            "folder": dg.MetadataValue.path(feedback_db.state.uri(FEEDBACK_DIR)),
        }
    )


# The chunk texts come from the promoted index.
@dg.asset(**FEEDBACK, deps=[feedback_events, "promoted_index"], kinds={"parquet"})
def training_pairs(
    context: dg.AssetExecutionContext,
    feedback_db: FeedbackDatabaseResource,
    index: SearchIndexResource,
) -> dg.MaterializeResult:
    """(query, positive chunk, hard negative) rows from rated answers and judged sources,
    with the chunk texts of the promoted index. Versioned by content: a new version file
    only when the pairs change; the pointer `state.TRAINING_PAIRS` names the current one."""
    state = feedback_db.state
    pairs = build_training_pairs(rated_answers(state), index.chunk_texts)
    version = pairs_version(pairs)
    previous = index.state.read(TRAINING_PAIRS)
    # One file per version (its content hash); the pointer names the current one.
    key = f"{FEEDBACK_DIR}/training_pairs/{version}.parquet"
    if not state.has_file(key):
        state.put_file(key, pairs.to_parquet(index=False))
    path = state.uri(key)
    latest = index.state.write(
        TRAINING_PAIRS,
        TrainingPairsVersion(
            version=version,
            path=path,
            pairs=len(pairs),
            train_pairs=int((pairs["split"] == "train").sum()),
            validation_pairs=int((pairs["split"] == "validation").sum()),
            queries=int(pairs["query_id"].nunique()),
            with_hard_negative=int(pairs["negative_chunk_id"].notna().sum()),
            new_pairs=len(pairs) - (previous.pairs if previous else 0),
            previous_version=previous.version if previous else None,
        ),
    )
    preview = pairs.head(5)[["query", "positive", "negative"]].fillna("")
    table = "\n".join(
        f"| {r.query[:60]} | {r.positive[:60]} | {r.negative[:60]} |".replace("\n", " ")
        for r in preview.itertuples()
    )
    context.log.info(f"training_pairs {version}: {len(pairs)} pairs")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            **latest.model_dump(exclude={"path"}),
            "path": dg.MetadataValue.path(path),
            "preview": dg.MetadataValue.md(
                "| query | positive | hard negative |\n|---|---|---|\n" + table
            ),
        },
    )
