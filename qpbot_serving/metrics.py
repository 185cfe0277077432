"""Prometheus metrics of the answer service, on a registry of its own per app, and of the
asset graph: the platform snapshot its sensor writes under QPBOT_HOME, read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.answering import FALLBACK_KINDS
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import PLATFORM_METRICS, PromotedIndex, StateStore

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "qpbot_request_seconds",
            "Request latency by endpoint.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "qpbot_stage_seconds",
            "Latency of answer stages (retrieval, generation; from the question).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "qpbot_generated_words", "Words of generated answers.", registry=self.registry
        )
        self.answers = Counter(
            "qpbot_answers",
            "Answers by what made them (generative, extractive, declined) and grounding.",
            ["answer_mode", "grounded"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "qpbot_answer_fallbacks",
            "Generated answers replaced by the quoted evidence, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "qpbot_feedback", "Feedback received, by rating.", ["rating"], registry=self.registry
        )
        # Known label values start at zero, so that the first fallback or rating already
        # shows as an increase (a series that appears at 1 has no increase to rate).
        for reason in FALLBACK_KINDS:
            self.fallbacks.labels(reason)
        for rating in ("up", "down"):
            self.feedback.labels(rating)
        self.index_info = Gauge(
            "qpbot_index_version",
            "The served index (1 for the current one).",
            ["table", "version"],
            registry=self.registry,
        )
        self.index_promoted_at = Gauge(
            "qpbot_index_promoted_timestamp_seconds",
            "When the served index was promoted (age = time() - this).",
            registry=self.registry,
        )
        self.index_documents = Gauge(
            "qpbot_index_documents", "Documents in the served index.", registry=self.registry
        )
        self.index_chunks = Gauge(
            "qpbot_index_chunks", "Chunks in the served index.", registry=self.registry
        )

    def watch_answer_log(self, answer_log: AnswerLog) -> None:
        """Reports `answer_log.status()` at every scrape (call once per app)."""
        self.registry.register(AnswerLogCollector(answer_log))

    def watch_platform(self, settings: QpbotSettings, ready: Callable[[], bool]) -> None:
        """Reports readiness (`ready()`) and the asset graph's snapshot at every scrape (call
        once per app)."""
        self.registry.register(PlatformCollector(settings, ready))

    def set_index(self, promoted: PromotedIndex) -> None:
        self.index_info.clear()
        self.index_info.labels(promoted.table, str(promoted.version)).set(1)
        self.index_promoted_at.set(datetime.fromisoformat(promoted.promoted_at).timestamp())
        self.index_documents.set(promoted.documents)
        self.index_chunks.set(promoted.chunks)


class AnswerLogCollector:
    """The answer log's backlog, dead letters, lost rows, spool and writer, read when /metrics
    is scraped."""

    def __init__(self, answer_log: AnswerLog) -> None:
        self.answer_log = answer_log

    def collect(self) -> Iterator[Metric]:
        status = self.answer_log.status()
        yield GaugeMetricFamily(
            "qpbot_answer_log_queued_rows",
            "Answer and feedback rows accepted, not yet written or spooled.",
            value=status.queued_rows,
        )
        yield GaugeMetricFamily(
            "qpbot_answer_log_spooled_rows",
            "Rows in the spool file, waiting for the feedback database.",
            value=status.spooled_rows,
        )
        yield GaugeMetricFamily(
            "qpbot_answer_log_held_rows",
            "Rows held in memory, waiting for the spool (it cannot be written) or the database.",
            value=status.held_rows,
        )
        yield GaugeMetricFamily(
            "qpbot_answer_log_spool_failing",
            "1 while rows wait on a spool file that cannot be written (see /readyz spool_error).",
            value=int(status.spool_error is not None),
        )
        yield CounterMetricFamily(
            "qpbot_answer_log_lost_rows",
            "Rows dropped: more than the memory holds while the spool failed, or a dead letter"
            " that could not be written.",
            value=status.lost_rows,
        )
        yield GaugeMetricFamily(
            "qpbot_answer_log_dead_letters",
            "Rows and spool lines set aside in the dead-letter file (refused or unreadable).",
            value=status.dead_letters,
        )
        yield GaugeMetricFamily(
            "qpbot_answer_log_writer_alive",
            "1 while the answer log's writer thread runs.",
            value=int(status.writer_alive),
        )
        yield CounterMetricFamily(
            "qpbot_answer_log_writer_restarts",
            "Times the answer log's writer failed or was gone and was started again.",
            value=status.writer_restarts,
        )


# The asset graph's numbers (state.PlatformMetrics), written by its
# `platform_metrics_sensor` and read here: the service's /metrics is the one place
# Prometheus scrapes.
GATES = ("embedder", "llm_adapter")
RUN_STATUSES = ("success", "failure", "canceled")


def read_platform_metrics(state: StateStore) -> dict:
    """The snapshot the asset graph last wrote as a dict; empty when no sensor has run or
    it cannot be read (a scrape must not fail for it)."""
    try:
        snapshot = state.read(PLATFORM_METRICS)
    except Exception:  # StateError, or object storage away
        return {}
    return snapshot.model_dump() if snapshot else {}


class PlatformCollector:
    """Readiness, the thresholds the learning loop acts on, and the asset graph's snapshot
    (runs, ingestion, quarantine, drift, gates, feedback), read when /metrics is scraped.
    Without a snapshot its timestamp is 0, so that staleness alerts fire."""

    def __init__(self, settings: QpbotSettings, ready: Callable[[], bool]) -> None:
        self.settings = settings
        self.state = StateStore.from_settings(settings)
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "qpbot_ready", "1 while the service is ready (/readyz 200).", value=int(self.ready())
        )
        yield GaugeMetricFamily(
            "qpbot_drift_threshold",
            "Drift share that starts retraining (QPBOT_DRIFT_THRESHOLD).",
            value=self.settings.drift_threshold,
        )
        yield GaugeMetricFamily(
            "qpbot_feedback_min_up_rate",
            "Thumbs-up rate below which retraining starts (QPBOT_FEEDBACK_MIN_UP_RATE).",
            value=self.settings.feedback_min_up_rate,
        )
        snapshot = read_platform_metrics(self.state)
        yield GaugeMetricFamily(
            "qpbot_platform_metrics_timestamp_seconds",
            "When the asset graph's sensor last wrote its snapshot (0: never).",
            value=snapshot.get("written_at", 0),
        )
        if not snapshot:
            return
        yield from _run_metrics(snapshot)
        yield from _document_metrics(snapshot)
        yield from _learning_metrics(snapshot)


def _run_metrics(snapshot: dict) -> Iterator[Metric]:
    # `dagster_job`, not `job`: Prometheus's own `job` label names the scrape target.
    runs = CounterMetricFamily(
        "qpbot_dagster_runs",
        "Finished Dagster runs by job and status.",
        labels=["dagster_job", "status"],
    )
    for job, counts in sorted(snapshot.get("runs", {}).items()):
        for status in RUN_STATUSES:
            runs.add_metric([job, status], counts.get(status, 0))
    yield runs
    yield CounterMetricFamily(
        "qpbot_ingested_documents",
        "Documents that ingestion runs processed (each run counts its documents).",
        value=snapshot.get("ingested_documents", 0),
    )
    yield CounterMetricFamily(
        "qpbot_ingest_quarantined_documents",
        "Documents that ingestion runs left quarantined.",
        value=snapshot.get("quarantined_documents", 0),
    )
    last = snapshot.get("last_ingest") or {}
    if last:
        for name, help_text, key in (
            ("qpbot_last_ingest_documents", "Documents of the latest ingestion run.", "documents"),
            (
                "qpbot_last_ingest_quarantined",
                "Documents the latest ingestion run left quarantined.",
                "quarantined",
            ),
            (
                "qpbot_last_ingest_timestamp_seconds",
                "When the latest ingestion run ended.",
                "ended_at",
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=last.get(key) or 0)


def _document_metrics(snapshot: dict) -> Iterator[Metric]:
    documents = snapshot.get("documents", {})
    yield GaugeMetricFamily(
        "qpbot_documents_live",
        "Documents known to the asset graph (partitions).",
        value=documents.get("live", 0),
    )
    quarantined = GaugeMetricFamily(
        "qpbot_documents_quarantined",
        "Live documents quarantined now, by kind of problem.",
        labels=["kind"],
    )
    # A zero series when none is, so that the quarantine can be graphed and compared.
    for kind, count in sorted((documents.get("quarantined") or {"none": 0}).items()):
        quarantined.add_metric([kind], count)
    yield quarantined


def _learning_metrics(snapshot: dict) -> Iterator[Metric]:
    drift = snapshot.get("drift", {})
    if drift:
        share = GaugeMetricFamily(
            "qpbot_drift_share",
            "Share of embedding dimensions that drifted in the latest report, by side.",
            labels=["side"],
        )
        at = GaugeMetricFamily(
            "qpbot_drift_report_timestamp_seconds",
            "When the drift share of a side was last computed.",
            labels=["side"],
        )
        for side, report in sorted(drift.items()):
            share.add_metric([side], report["share"])
            at.add_metric([side], report["at"])
        yield share
        yield at
    gates = snapshot.get("gates", {})
    decisions = CounterMetricFamily(
        "qpbot_gate_decisions",
        "Evaluation gate decisions on candidates, by gate and decision.",
        labels=["gate", "decision"],
    )
    in_a_row = GaugeMetricFamily(
        "qpbot_gate_refusals_in_a_row",
        "Candidates the gate refused since it last passed one.",
        labels=["gate"],
    )
    for gate in GATES:
        counts = gates.get(gate, {})
        decisions.add_metric([gate, "passed"], counts.get("passed", 0))
        decisions.add_metric([gate, "refused"], counts.get("refused", 0))
        in_a_row.add_metric([gate], counts.get("refused_in_a_row", 0))
    yield decisions
    yield in_a_row
    feedback = snapshot.get("feedback", {})
    yield GaugeMetricFamily(
        "qpbot_feedback_window_ratings",
        "Rated answers the thumbs-up rate is taken over (at most QPBOT_FEEDBACK_WINDOW).",
        value=feedback.get("ratings", 0),
    )
    if feedback.get("up_rate") is not None:
        yield GaugeMetricFamily(
            "qpbot_feedback_up_rate",
            "Thumbs-up rate over the last rated answers (an answer's latest rating counts).",
            value=feedback["up_rate"],
        )
