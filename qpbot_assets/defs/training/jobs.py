"""The retraining job the drift and feedback sensors launch, and the way back."""

import dagster as dg

from qpbot_assets.defs.resources import MlflowResource, SearchIndexResource
from qpbot_assets.defs.training.assets import REGISTERED_EMBEDDER
from qpbot_assets.indexing.promotion import rollback

RETRAIN_JOB_NAME = "retrain_embedder"

# Fresh feedback, new training pairs, a fine-tuned embedder, its candidate index, the gate
# and (only when the gate passes) promotion.
retrain_embedder_job = dg.define_asset_job(
    RETRAIN_JOB_NAME,
    selection=dg.AssetSelection.assets(
        "feedback_events",
        "training_pairs",
        "fine_tuned_embedder",
        "candidate_index",
        "promoted_candidate",
    ),
    description="Fine-tune the embedder on feedback, build and gate a candidate index, promote it.",
)


@dg.op(
    description="Undo the last promotion of a fine-tuned embedder: its embedder, pointer "
    "and MLflow alias go back to what they were."
)
def rollback_promotion(
    context: dg.OpExecutionContext, index: SearchIndexResource, mlflow: MlflowResource
) -> dg.Output[dict]:
    try:
        undone = rollback(index.state)
    except LookupError as nothing:
        raise dg.Failure(str(nothing)) from None
    client = mlflow.client()
    previous = undone.previous_embedder
    if previous is not None:
        client.set_registered_model_alias(REGISTERED_EMBEDDER, "champion", previous.mlflow_version)
    else:
        client.delete_registered_model_alias(REGISTERED_EMBEDDER, "champion")
    restored = undone.previous_pointer.label if undone.previous_pointer else None
    result = {
        "rolled_back": undone.embedder.model,
        "embedding_model": previous.model if previous else None,  # None: the configured one
        "index_version": restored,
    }
    # The pointer moved: show it on the promoted assets' pages.
    for asset in ("promoted_candidate", "promoted_index"):
        context.log_event(
            dg.AssetMaterialization(
                asset, description="rolled back", metadata={k: str(v) for k, v in result.items()}
            )
        )
    return dg.Output(result, metadata={k: str(v) for k, v in result.items()})


@dg.job(
    description="Undo the last promotion of a fine-tuned embedder (`qpbot rollback` runs it); "
    "a refresh_index run then syncs documents ingested since into the restored index."
)
def rollback_embedder():
    rollback_promotion()
