"""The gate before an adapter serves: it must not answer the held-out thumbs-up questions
worse than what serves today (the base model, or the promoted adapter)."""

import dagster as dg

from qpbot_assets.defs.generation.assets import llm_adapter
from qpbot_assets.defs.resources import SearchIndexResource
from qpbot_assets.learning.lora import judge_adapter
from qpbot_serving.state import ADAPTER_CANDIDATE


@dg.asset_check(asset=llm_adapter, blocking=True)
def adapter_not_worse_than_serving(index: SearchIndexResource) -> dg.AssetCheckResult:
    """Held-out loss per answer token of the adapter <= that of the base model and of the
    promoted adapter, measured by llm_adapter on the same held-out questions."""
    candidate = index.state.read(ADAPTER_CANDIDATE)
    if candidate is None or candidate.version is None:
        # Nothing was trained, so nothing can be promoted; a warning, not a failed run.
        reason = candidate.reason if candidate else "no adapter has been trained"
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"no candidate adapter: {reason}",
            metadata={"reason": reason},
        )
    report = candidate.report
    passed, why = judge_adapter(report)
    losses = {
        key: round(report[key], 4)
        for key in ("base_validation_loss", "adapter_validation_loss", "champion_validation_loss")
        if report.get(key) is not None
    }
    return dg.AssetCheckResult(
        passed=passed,
        description=why,
        metadata={
            "version": candidate.version,
            "validation_examples": report["validation_examples"],
            "champion": candidate.champion or "none",
            **losses,
        },
    )
