"""The drift sensor: a drift report over QPBOT_DRIFT_THRESHOLD starts the retraining job; the
platform metrics sensor: the asset graph's numbers, where the answer service's /metrics
reads them."""

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from qpbot_assets.defs.feedback.sensors import recent_ratings
from qpbot_assets.defs.generation.asset_checks import adapter_not_worse_than_serving
from qpbot_assets.defs.resources import (
    DocumentStoreResource,
    FeedbackDatabaseResource,
    RetrainingPolicyResource,
    SearchIndexResource,
)
from qpbot_assets.defs.training.asset_checks import candidate_at_least_as_good_as_champion
from qpbot_assets.defs.training.jobs import RETRAIN_JOB_NAME
from qpbot_serving.answer_log import metadata
from qpbot_serving.state import PLATFORM_METRICS, PlatformMetrics, StateError, StateStore

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
def drift_sensor(
    context: dg.SensorEvaluationContext,
    asset_event: dg.EventLogEntry,
    retraining: RetrainingPolicyResource,
):
    materialization = asset_event.asset_materialization
    metadata = {key: value.value for key, value in (materialization.metadata or {}).items()}
    threshold = retraining.drift_threshold
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


# --- the platform's numbers for Prometheus ---------------------------------------------------
# The asset graph has no server of its own to scrape, and its facts live in the Dagster
# instance (runs, materializations, check evaluations) and the document store. This sensor
# folds them into one small snapshot under QPBOT_HOME, which the answer service's /metrics
# reads at scrape time (qpbot_serving.metrics): one scrape target for the whole platform,
# and the read side still never touches Dagster. The snapshot carries its own time, so a
# stopped daemon shows as a stale snapshot (alert QpbotPlatformMetricsStale).
# Per shard of a run: raw_document counts the documents fetched anew ("recomputed"), and
# chunks, the last stage every document passes, those of them that stopped anywhere.
INGESTED = dg.AssetKey("raw_document")
STOPPED = dg.AssetKey("chunks")
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
RUNS_PER_TICK = 200  # finished runs folded in per tick; a backlog catches up over ticks


def _gate_checks() -> dict[dg.AssetCheckKey, str]:
    return {
        next(iter(candidate_at_least_as_good_as_champion.check_keys)): "embedder",
        next(iter(adapter_not_worse_than_serving.check_keys)): "llm_adapter",
    }


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes the platform's numbers (runs, ingestion, quarantine, drift, gates, "
    "thumbs-up rate) to the PLATFORM_METRICS pointer (in the state store) for the answer "
    "service's /metrics. Starts no run.",
)
def platform_metrics_sensor(
    context: dg.SensorEvaluationContext,
    documents: DocumentStoreResource,
    feedback_db: FeedbackDatabaseResource,
    retraining: RetrainingPolicyResource,
    index: SearchIndexResource,
):
    snapshot = write_platform_snapshot(
        context.instance,
        index.state,
        documents,
        feedback_db,
        retraining.feedback_policy.window,
        jobs=context.repository_def.job_names if context.repository_def else [],
    )
    return dg.SkipReason(
        f"platform metrics written: {sum(sum(c.values()) for c in snapshot['runs'].values())} "
        f"finished runs, {snapshot['documents']['live']} documents"
    )


def write_platform_snapshot(
    instance: dg.DagsterInstance,
    state: StateStore,
    documents: DocumentStoreResource,
    feedback_db: FeedbackDatabaseResource,
    window: int,
    jobs: Sequence[str] = (),
) -> dict:
    """Folds the runs finished since the last snapshot into it, recounts documents,
    quarantine and the recent thumbs-up rate, and writes it (atomically); returns it.
    The snapshot is its own cursor (`runs_seen_until`), so counts and cursor never part.
    `jobs` start at zero runs, so that a job's first failure already counts as an increase."""
    try:
        snapshot = (state.read(PLATFORM_METRICS) or PlatformMetrics()).model_dump()
    except StateError:  # figures only: start them again rather than stop counting
        snapshot = PlatformMetrics().model_dump()
    for job in jobs:
        snapshot["runs"].setdefault(job, {})
    seen_until = snapshot.get("runs_seen_until")
    records = instance.get_run_records(
        dg.RunsFilter(
            statuses=FINISHED,
            updated_after=datetime.fromisoformat(seen_until) if seen_until else None,
        ),
        limit=RUNS_PER_TICK,
        order_by="update_timestamp",
        ascending=True,
    )
    gates = _gate_checks()
    for record in records:
        fold_run(snapshot, run_outcome(instance, record, gates))
        snapshot["runs_seen_until"] = record.update_timestamp.isoformat()

    kinds = Counter(record["kind"] for record in documents.store.quarantined())
    snapshot["documents"] = {"live": documents.store.live_count(), "quarantined": dict(kinds)}
    snapshot["feedback"] = feedback_up_rate(feedback_db, window)
    snapshot["written_at"] = time.time()
    state.write(PLATFORM_METRICS, PlatformMetrics(**snapshot))
    return snapshot


def run_outcome(
    instance: dg.DagsterInstance,
    record,
    gates: dict[dg.AssetCheckKey, str],
) -> dict:
    """What one finished run did: its job and status, the documents it ingested and those
    left quarantined, the drift shares it computed, the gate decisions it made."""
    run = record.dagster_run
    ingested = quarantined = 0
    drift: dict[str, float] = {}
    decisions: list[tuple[str, bool]] = []
    events = instance.all_logs(
        run.run_id,
        of_type={
            dg.DagsterEventType.ASSET_MATERIALIZATION,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
        },
    )
    for entry in events:
        event = entry.dagster_event
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            counts = materialization.metadata
            if materialization.asset_key == INGESTED and "recomputed" in counts:
                ingested += counts["recomputed"].value
            elif materialization.asset_key == STOPPED and "recomputed_quarantined" in counts:
                quarantined += counts["recomputed_quarantined"].value
            elif materialization.asset_key == DRIFT_REPORT:
                for side in ("documents", "queries"):
                    share = materialization.metadata.get(f"{side}/drift_share")
                    if share is not None:
                        drift[side] = float(share.value)
        else:
            evaluation = event.event_specific_data
            if evaluation.asset_check_key in gates:
                decisions.append((gates[evaluation.asset_check_key], evaluation.passed))
    ended = record.end_time or record.update_timestamp.timestamp()
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "status": run.status.value.lower(),
        "ended_at": ended,
        "documents": ingested,
        "quarantined": quarantined,
        "drift": drift,
        "gate_decisions": decisions,
    }


def fold_run(snapshot: dict, outcome: dict) -> None:
    """Adds one run's outcome to the snapshot's counters and latest values."""
    job = snapshot["runs"].setdefault(outcome["job"], {})
    job[outcome["status"]] = job.get(outcome["status"], 0) + 1
    if outcome["documents"]:
        snapshot["ingested_documents"] = (
            snapshot.get("ingested_documents", 0) + outcome["documents"]
        )
        snapshot["quarantined_documents"] = (
            snapshot.get("quarantined_documents", 0) + outcome["quarantined"]
        )
        snapshot["last_ingest"] = {
            key: outcome[key] for key in ("run_id", "ended_at", "documents", "quarantined")
        }
    for side, share in outcome["drift"].items():
        snapshot["drift"][side] = {"share": share, "at": outcome["ended_at"]}
    for gate, passed in outcome["gate_decisions"]:
        counts = snapshot["gates"].setdefault(
            gate, {"passed": 0, "refused": 0, "refused_in_a_row": 0}
        )
        counts["passed" if passed else "refused"] += 1
        counts["refused_in_a_row"] = 0 if passed else counts["refused_in_a_row"] + 1
        counts["last_at"] = outcome["ended_at"]


def feedback_up_rate(feedback_db: FeedbackDatabaseResource, window: int) -> dict:
    """{"ratings", "up_rate"} over the last `window` rated answers, as the feedback sensor
    sees them; no rate while the database cannot be read."""
    engine = feedback_db.engine()
    try:
        metadata.create_all(engine)
        with engine.connect() as connection:
            ratings = recent_ratings(connection, window)
    except sa.exc.SQLAlchemyError:
        return {"ratings": 0, "up_rate": None}
    finally:
        engine.dispose()
    return {
        "ratings": len(ratings),
        "up_rate": ratings.count("up") / len(ratings) if ratings else None,
    }
