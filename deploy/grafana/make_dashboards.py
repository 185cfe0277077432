"""qpbot's Grafana dashboards as code: `python deploy/grafana/make_dashboards.py` writes
deploy/grafana/dashboards/*.json (grafana-foundation-sdk builds them).

Four dashboards over the one Prometheus job that scrapes the answer service's /metrics
(which also carries the asset graph's numbers): the service's latency and errors, answers
and feedback, ingestion and the index, the learning loop. Every panel picks its Prometheus
through the `datasource` variable, so one import works against any Prometheus data source.
Every replica reports the same platform numbers (one QPBOT_HOME): those panels take the max
over instances, never the sum.
tests/test_monitoring.py runs every panel's query against a real Prometheus.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"  # Grafana's window for rate(): at least four scrapes
API = '{endpoint!~"/metrics|/healthz|/readyz"}'  # the API's requests, not the probes'


@dataclass(frozen=True)
class Graph:
    """One panel: a title, its queries as (PromQL, legend), a unit, and a kind."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat": the latest value, large
    description: str = ""


SECTIONS: dict[str, tuple[str, dict[str, list[Graph]]]] = {
    "qpbot-service": (
        "qpbot: service latency and errors",
        {
            "Health": [
                Graph("Scrape up", (('up{job="qpbot"}', "{{instance}}"),), kind="stat"),
                Graph("Ready", (("qpbot_ready", "{{instance}}"),), kind="stat"),
                Graph(
                    "Served index age",
                    (("time() - qpbot_index_promoted_timestamp_seconds", "{{instance}}"),),
                    unit="s",
                    kind="stat",
                ),
            ],
            "Requests": [
                Graph(
                    "Requests per second by endpoint",
                    (
                        (
                            f"sum by (endpoint) (rate(qpbot_request_seconds_count{API}[{RATE}]))",
                            "{{endpoint}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Graph(
                    "Requests per second by status",
                    (
                        (
                            f"sum by (status) (rate(qpbot_request_seconds_count{API}[{RATE}]))",
                            "{{status}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Graph(
                    "Share of 5xx responses",
                    (
                        (
                            "(sum(rate(qpbot_request_seconds_count"
                            f'{{status=~"5..", endpoint!~"/metrics|/healthz|/readyz"}}[{RATE}]))'
                            f" or vector(0)) / sum(rate(qpbot_request_seconds_count{API}[{RATE}]))",
                            "5xx",
                        ),
                    ),
                    unit="percentunit",
                    description="Alert QpbotErrorRatioHigh above 5 %.",
                ),
            ],
            "Latency": [
                Graph(
                    "p99 latency by endpoint",
                    (
                        (
                            "histogram_quantile(0.99, sum by (endpoint, le) "
                            f"(rate(qpbot_request_seconds_bucket{API}[{RATE}])))",
                            "{{endpoint}}",
                        ),
                    ),
                    unit="s",
                    description="Objectives: /v1/answer 10 s, search, feedback, document "
                    "status 1 s (alerts QpbotAnswerLatencyHigh, QpbotRequestLatencyHigh).",
                ),
                Graph(
                    "p50 latency by endpoint",
                    (
                        (
                            "histogram_quantile(0.5, sum by (endpoint, le) "
                            f"(rate(qpbot_request_seconds_bucket{API}[{RATE}])))",
                            "{{endpoint}}",
                        ),
                    ),
                    unit="s",
                ),
                Graph(
                    "p95 latency of answer stages",
                    (
                        (
                            "histogram_quantile(0.95, sum by (stage, le) "
                            f"(rate(qpbot_stage_seconds_bucket[{RATE}])))",
                            "{{stage}}",
                        ),
                    ),
                    unit="s",
                ),
            ],
        },
    ),
    "qpbot-answers": (
        "qpbot: answers and feedback",
        {
            "Answers": [
                Graph(
                    "Answers per second by mode",
                    (
                        (
                            f"sum by (answer_mode) (rate(qpbot_answers_total[{RATE}]))",
                            "{{answer_mode}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Graph(
                    "Fallbacks per second by reason",
                    (
                        (
                            f"sum by (reason) (rate(qpbot_answer_fallbacks_total[{RATE}]))",
                            "{{reason}}",
                        ),
                    ),
                    unit="reqps",
                    description="generator_unavailable and deadline: the generator is down "
                    "or slow (alert QpbotGeneratorFailing).",
                ),
                Graph(
                    "Grounded share of answers",
                    (
                        (
                            f'sum(rate(qpbot_answers_total{{grounded="true"}}[{RATE}]))'
                            f" / sum(rate(qpbot_answers_total[{RATE}]))",
                            "grounded",
                        ),
                    ),
                    unit="percentunit",
                ),
                Graph(
                    "Generated words per second",
                    ((f"sum(rate(qpbot_generated_words_total[{RATE}]))", "words"),),
                ),
            ],
            "Feedback": [
                Graph(
                    "Ratings in the last hour",
                    (("sum by (rating) (increase(qpbot_feedback_total[1h]))", "{{rating}}"),),
                ),
                Graph(
                    "Thumbs-up rate (the learning loop's window)",
                    (
                        ("max(qpbot_feedback_up_rate)", "thumbs-up rate"),
                        ("max(qpbot_feedback_min_up_rate)", "retraining below"),
                    ),
                    unit="percentunit",
                ),
            ],
            "Answer log": [
                Graph(
                    "Rows waiting",
                    (
                        ("qpbot_answer_log_queued_rows", "queued {{instance}}"),
                        ("qpbot_answer_log_spooled_rows", "spooled {{instance}}"),
                        ("qpbot_answer_log_held_rows", "held in memory {{instance}}"),
                    ),
                ),
                Graph(
                    "Dead letters and lost rows",
                    (
                        ("qpbot_answer_log_dead_letters", "dead letters {{instance}}"),
                        ("qpbot_answer_log_lost_rows_total", "lost {{instance}}"),
                    ),
                ),
            ],
        },
    ),
    "qpbot-ingestion": (
        "qpbot: ingestion and the index",
        {
            "The index": [
                Graph(
                    "Served index age",
                    (("time() - qpbot_index_promoted_timestamp_seconds", "{{instance}}"),),
                    unit="s",
                    description="Freshness objective 24 h (alert QpbotIndexStale).",
                ),
                Graph(
                    "Documents",
                    (
                        ("qpbot_index_documents", "in the served index"),
                        ("max(qpbot_documents_live)", "known to the asset graph"),
                    ),
                ),
                Graph("Chunks in the served index", (("qpbot_index_chunks", "chunks"),)),
            ],
            "Ingestion": [
                Graph(
                    "Documents ingested and quarantined per hour",
                    (
                        ("max(increase(qpbot_ingested_documents_total[1h]))", "ingested"),
                        (
                            "max(increase(qpbot_ingest_quarantined_documents_total[1h]))",
                            "quarantined",
                        ),
                    ),
                ),
                Graph(
                    "The latest ingestion run",
                    (
                        ("max(qpbot_last_ingest_documents)", "documents"),
                        ("max(qpbot_last_ingest_quarantined)", "quarantined"),
                    ),
                    kind="stat",
                ),
                Graph(
                    "Quarantined documents by kind",
                    (("max by (kind) (qpbot_documents_quarantined)", "{{kind}}"),),
                ),
            ],
            "Dagster runs": [
                Graph(
                    "Finished runs in the last hour",
                    (
                        (
                            "max by (dagster_job, status) (increase(qpbot_dagster_runs_total[1h]))",
                            "{{dagster_job}} {{status}}",
                        ),
                    ),
                ),
                Graph(
                    "Age of the asset graph's metrics",
                    (("time() - qpbot_platform_metrics_timestamp_seconds", "{{instance}}"),),
                    unit="s",
                    description="Written by platform_metrics_sensor every 30 s: a growing age "
                    "means the Dagster daemon is down.",
                ),
            ],
        },
    ),
    "qpbot-learning": (
        "qpbot: the learning loop",
        {
            "Signals": [
                Graph(
                    "Drift share by side",
                    (
                        ("max by (side) (qpbot_drift_share)", "{{side}}"),
                        ("max(qpbot_drift_threshold)", "retraining at"),
                    ),
                    unit="percentunit",
                ),
                Graph(
                    "Thumbs-up rate",
                    (
                        ("max(qpbot_feedback_up_rate)", "thumbs-up rate"),
                        ("max(qpbot_feedback_min_up_rate)", "retraining below"),
                    ),
                    unit="percentunit",
                ),
                Graph(
                    "Rated answers in the window",
                    (("max(qpbot_feedback_window_ratings)", "ratings"),),
                    kind="stat",
                ),
            ],
            "Gates and retraining": [
                Graph(
                    "Gate decisions",
                    (
                        (
                            "max by (gate, decision) (qpbot_gate_decisions_total)",
                            "{{gate}} {{decision}}",
                        ),
                    ),
                ),
                Graph(
                    "Refusals in a row",
                    (("max by (gate) (qpbot_gate_refusals_in_a_row)", "{{gate}}"),),
                    description="Alert QpbotGateRefusingRepeatedly at 3.",
                ),
                Graph(
                    "Retraining runs",
                    (
                        (
                            "max by (dagster_job, status) (qpbot_dagster_runs_total"
                            '{dagster_job=~"retrain_embedder|retrain_llm_adapter"})',
                            "{{dagster_job}} {{status}}",
                        ),
                    ),
                ),
            ],
        },
    ),
}


def panel(graph: Graph, panel_id: int):
    builder = (stat.Panel() if graph.kind == "stat" else timeseries.Panel()).title(graph.title)
    builder = builder.id(panel_id)
    builder = builder.datasource(DATASOURCE).unit(graph.unit).height(8).span(8)
    if graph.description:
        builder = builder.description(graph.description)
    for ref, (expr, legend) in zip("ABCDEFGH", graph.queries, strict=False):
        builder = builder.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
        )
    return builder


def dashboard(uid: str, title: str, rows: dict[str, list[Graph]]) -> Dashboard:
    built = (
        Dashboard(title)
        .uid(uid)
        .tags(["qpbot"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    ids = iter(range(1, 1000))  # unique within a dashboard: links and "view panel" use them
    for row_title, graphs in rows.items():
        built = built.with_row(Row(row_title).id(next(ids)))
        for graph in graphs:
            built = built.with_panel(panel(graph, next(ids)))
    return built


def write_dashboards(folder: Path = OUT) -> list[Path]:
    """Writes one JSON file per dashboard into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = JSONEncoder(sort_keys=True, indent=2)
    paths = []
    for uid, (title, rows) in SECTIONS.items():
        path = folder / f"{uid}.json"
        path.write_text(encoder.encode(dashboard(uid, title, rows).build()) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_dashboards(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(written)
