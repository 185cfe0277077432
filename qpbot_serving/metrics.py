"""Prometheus metrics of the answer service, on a registry of its own per app."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.index import PromotedIndex

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

    def watch_answer_log(self, answer_log: AnswerLog) -> None:
        """Reports `answer_log.status()` at every scrape (call once per app)."""
        self.registry.register(AnswerLogCollector(answer_log))

    def set_index(self, promoted: PromotedIndex) -> None:
        self.index_info.clear()
        self.index_info.labels(promoted.table, str(promoted.version)).set(1)
        self.index_promoted_at.set(datetime.fromisoformat(promoted.promoted_at).timestamp())


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
