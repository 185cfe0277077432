"""The drift sensor: a drift report over QPBOT_DRIFT_THRESHOLD starts the retraining job."""

import dagster as dg

from qpbot_assets.defs.training.jobs import RETRAIN_JOB_NAME
from qpbot_serving.settings import QpbotSettings

DRIFT_REPORT = dg.AssetKey("drift_report")


@dg.asset_sensor(
    asset_key=DRIFT_REPORT,
    job_name=RETRAIN_JOB_NAME,
    minimum_interval_seconds=60,
    description="Starts retrain_embedder when a new drift_report's drift share reaches "
    "QPBOT_DRIFT_THRESHOLD; once per drift signal (the run key is the report's signal_id).",
    # Stopped until someone turns it on (Automation in the UI, or `dagster sensor start
    # drift_sensor`): a retraining fine-tunes the embedder and rebuilds a candidate index,
    # minutes of CPU on our machines, and is only useful once users have left feedback to
    # train on. The drift share also depends on how many rows a report compares (the
    # per-dimension tests see more with more rows), so the threshold is best checked against
    # a few real reports of the deployment before the loop is closed.
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def drift_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    materialization = asset_event.asset_materialization
    metadata = {key: value.value for key, value in (materialization.metadata or {}).items()}
    threshold = QpbotSettings().drift_threshold
    share = metadata.get("drift_share")
    if share is None:
        return dg.SkipReason(
            f"drift_report (run {asset_event.run_id[:8]}) computed no drift share, threshold "
            f"{threshold}: {metadata.get('status', 'no status recorded')}"
        )
    side = metadata.get("drift_side", "?")
    if share < threshold:
        return dg.SkipReason(
            f"drift share {share:.3f} ({side}) is below the threshold {threshold}: no retraining"
        )
    signal = metadata.get("signal_id") or f"{asset_event.run_id}:{asset_event.timestamp}"
    context.log.info(f"drift share {share:.3f} ({side}) reached {threshold}: retraining")
    return dg.RunRequest(
        run_key=f"drift:{signal}",
        tags={
            "qpbot/trigger": "drift",
            "qpbot/drift_share": f"{share:.3f}",
            "qpbot/drift_side": side,
            "qpbot/drift_report_run": asset_event.run_id,
        },
    )
