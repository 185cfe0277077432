"""Prometheus metrics of the answer service, on a registry of its own per app."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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

    def set_index(self, promoted: PromotedIndex) -> None:
        self.index_info.clear()
        self.index_info.labels(promoted.table, str(promoted.version)).set(1)
        self.index_promoted_at.set(datetime.fromisoformat(promoted.promoted_at).timestamp())
