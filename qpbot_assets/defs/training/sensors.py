"""After a rollback, the restored index gets the documents ingested since the promotion."""

import dagster as dg

from qpbot_assets.defs.ingestion.jobs import refresh_index_job
from qpbot_assets.defs.training.jobs import rollback_embedder


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[rollback_embedder],
    request_job=refresh_index_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def refresh_after_rollback(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"rollback:{context.dagster_run.run_id}")
