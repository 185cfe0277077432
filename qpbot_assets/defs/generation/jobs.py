"""The retraining job for the answer generator, for sensors or the UI to launch."""

import dagster as dg

RETRAIN_LLM_ADAPTER_JOB_NAME = "retrain_llm_adapter"

# Fresh feedback, a LoRA adapter trained on it, its gate and (only when the gate passes)
# promotion. Hyperparameters come from the run config of llm_adapter (LlmAdapterConfig).
retrain_llm_adapter_job = dg.define_asset_job(
    RETRAIN_LLM_ADAPTER_JOB_NAME,
    selection=dg.AssetSelection.assets("feedback_events") | dg.AssetSelection.groups("generation"),
    description="Train a LoRA adapter of the local generator on thumbs-up answers, gate it, "
    "promote it.",
)
