"""The retraining job the drift and feedback sensors launch."""

import dagster as dg

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
