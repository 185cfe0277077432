"""Monitoring: are the documents coming in, or the questions users ask, drifting away from
what came before? evidently reports kept under `monitoring/drift/` of the state root
(`$QPBOT_HOME`, or QPBOT_STORAGE_URL on object storage)."""

from dataclasses import replace
from datetime import UTC, datetime

import dagster as dg
import numpy as np
from pydantic import Field

from qpbot_assets.defs.feedback.assets import feedback_events
from qpbot_assets.defs.indexing.assets import promoted_index
from qpbot_assets.defs.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    FeedbackDatabaseResource,
    SearchIndexResource,
)
from qpbot_assets.documents.store import DocumentStore, Quarantined, fingerprint
from qpbot_assets.learning.drift import (
    DriftSummary,
    Windows,
    embedding_drift,
    sample_rows,
    split_windows,
)
from qpbot_assets.learning.feedback import read_table
from qpbot_serving import state as st
from qpbot_serving.embedding import Embedder

MONITORING = {"group_name": "monitoring"}
DRIFT_DIR = f"{st.MONITORING_DIR}/drift"  # under the state root, beside DRIFT_WINDOWS
KEEP_REPORTS = 50  # report folders kept; each HTML report is about 4 MB (evidently's JS inline)
SIDES = ("documents", "queries")


class DriftReportConfig(dg.Config):
    sample: int = Field(
        300, description="Rows compared on each side at most; evidently is slow on more."
    )
    # The per-dimension tests see more with more rows: against 102 reference rows, a complete
    # change of topic (company policies -> biomedical abstracts) moved 46% of the dimensions
    # with 30 new rows, 60% with 100 and 67% with 300, while same-topic windows (100 vs 300
    # abstracts) moved 4%. 100 keeps the default QPBOT_DRIFT_THRESHOLD of 0.5 within reach.
    min_rows: int = Field(
        100, description="Rows each side needs before drift is computed (chunks or queries)."
    )
    seed: int = Field(0, description="Seed of the sampling, so a report can be repeated.")


@dg.asset(
    **MONITORING,
    deps=[promoted_index, feedback_events],
    kinds={"evidently"},
    # What it compares changes only when the served index is promoted or a new copy of the
    # feedback lands, so it runs after either (also before feedback was ever copied: document
    # drift needs none). A report with too few new rows is cheap: it says so and stops.
    automation_condition=dg.AutomationCondition.eager().without(
        ~dg.AutomationCondition.any_deps_missing()
    ),
)
def drift_report(
    context: dg.AssetExecutionContext,
    config: DriftReportConfig,
    documents: DocumentStoreResource,
    index: SearchIndexResource,
    embedding_model: EmbeddingModelResource,
    feedback_db: FeedbackDatabaseResource,
) -> dg.MaterializeResult:
    """evidently's comparison of recent embeddings with a reference window, for the chunks of
    the promoted index (ordered by when their document was ingested) and for the questions
    users asked (embedded with the promoted index's model). Each report compares what arrived
    since the last report that computed drift with everything before it, so the same rows
    never raise a signal twice. Metadata: drift share (share of embedding dimensions that
    drifted, what the drift sensor compares with QPBOT_DRIFT_THRESHOLD) and drift score
    (ROC AUC of a reference-vs-current classifier) per side, with links to the HTML reports."""
    state = index.state.read(st.DRIFT_WINDOWS) or st.DriftWindows()
    promoted = index.state.read(st.PROMOTED_INDEX)
    if promoted is None:
        status = "no promoted index yet: nothing to compare"
        context.log.info(f"drift_report: {status}")
        return dg.MaterializeResult(metadata={"drift_computed": False, "status": status})

    table = index.connect().open_table(promoted.table)
    table.checkout(promoted.version)
    sides = {
        "documents": DocumentRows(table, documents.store),
        "queries": QueryRows(feedback_db.state, embedding_model.index_embedder(promoted)),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_key = f"{DRIFT_DIR}/{stamp}-{context.run_id[:8]}"
    report_uri = index.state.uri(report_key)  # where the reports are stored, for the links
    rng = np.random.default_rng(config.seed)

    metadata: dict = {
        "index_version": promoted.label,
        "embedding_model": promoted.embedding_model,
    }
    summaries: dict[str, DriftSummary] = {}
    windows: dict[str, Windows] = {}
    with index.state.new_folder(report_key) as report_dir:
        for side, rows in sides.items():
            window = split_windows(
                rows.times, getattr(state, side).reference_until, config.min_rows
            )
            windows[side] = window
            metadata[f"{side}/reference_rows"] = int(window.reference.sum())
            metadata[f"{side}/current_rows"] = int(window.current.sum())
            metadata[f"{side}/reference_until"] = window.reference_until or "-"
            if not window.compute:
                metadata[f"{side}/status"] = window.reason
                context.log.info(f"drift_report: {side}: {window.reason}")
                continue
            picked = [
                np.flatnonzero(mask)[sample_rows(int(mask.sum()), config.sample, rng)]
                for mask in (window.reference, window.current)
            ]
            html = report_dir / f"{side}.html"
            summary = embedding_drift(
                rows.vectors(picked[0]),
                rows.vectors(picked[1]),
                sample=config.sample,
                seed=config.seed,
                html_path=html,
                name=side,
            )
            summary = replace(
                summary,
                available_reference=int(window.reference.sum()),
                available_current=int(window.current.sum()),
            )
            summaries[side] = summary
            context.log.info(f"drift_report: {side}: {summary}")
            metadata.update(
                {
                    f"{side}/status": "computed",
                    f"{side}/drift_share": summary.drift_share,
                    f"{side}/drift_score": summary.drift_score,
                    f"{side}/drifted_dimensions": summary.drifted_columns,
                    f"{side}/compared_rows": f"{summary.n_reference} reference, "
                    f"{summary.n_current} current",
                    f"{side}/report": dg.MetadataValue.path(f"{report_uri}/{side}.html"),
                }
            )

    if summaries:
        side = max(summaries, key=lambda s: summaries[s].drift_share)
        # What the signal is about: the windows compared. The drift sensor's run key comes
        # from it, so these rows can never start a second retraining.
        signal = fingerprint(
            {s: [windows[s].reference_until, windows[s].current_until] for s in summaries}
        )
        metadata.update(
            {
                "drift_computed": True,
                "drift_share": summaries[side].drift_share,
                "drift_score": summaries[side].drift_score,
                "drift_side": side,
                "signal_id": signal,
                "report_folder": dg.MetadataValue.path(report_uri),
                "status": ", ".join(
                    f"{s} drift share {summaries[s].drift_share:.3f}" for s in summaries
                ),
                "summary": dg.MetadataValue.md(summary_table(summaries, report_uri)),
            }
        )
    else:
        metadata.update(
            {
                "drift_computed": False,
                "status": "; ".join(f"{s}: {windows[s].reason}" for s in SIDES),
            }
        )

    # Written last: a run that fails before here leaves the windows as they were.
    index.state.write(
        st.DRIFT_WINDOWS,
        st.DriftWindows(
            **{s: st.DriftWindow(reference_until=windows[s].next_cutoff) for s in SIDES}
        ),
    )
    prune_reports(index.state, KEEP_REPORTS)
    return dg.MaterializeResult(metadata=metadata)


class DocumentRows:
    """The promoted table's chunks, each at the time its document was ingested. Chunks of
    documents without an ingestion time (no metadata stage output) are left out."""

    def __init__(self, table, store: DocumentStore):
        self.table = table
        rows = read_columns(table, ["chunk_id", "document_id"])
        ingested = {d: ingested_at(store, d) for d in set(rows.column("document_id").to_pylist())}
        pairs = [
            (chunk_id, ingested[document_id])
            for chunk_id, document_id in zip(
                rows.column("chunk_id").to_pylist(),
                rows.column("document_id").to_pylist(),
                strict=True,
            )
            if ingested[document_id] is not None
        ]
        self.chunk_ids = [chunk_id for chunk_id, _ in pairs]
        self.times = [time for _, time in pairs]

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        wanted = [self.chunk_ids[i] for i in positions]
        quoted = ", ".join("'" + c.replace("'", "''") + "'" for c in wanted)
        found = read_columns(self.table, ["chunk_id", "vector"], where=f"chunk_id IN ({quoted})")
        by_id = dict(
            zip(
                found.column("chunk_id").to_pylist(),
                found.column("vector").to_pylist(),
                strict=True,
            )
        )
        return np.array([by_id[c] for c in wanted], dtype=np.float32)


class QueryRows:
    """The questions of the copied answer log (`feedback_events`), each at the time it was
    asked, embedded on demand with the promoted index's model."""

    def __init__(self, feedback: st.StateStore, embedder: Embedder):
        answers = read_table(feedback, "answers", parse_json=False)
        answers = answers[answers["query"].fillna("").str.strip() != ""]
        self.queries = answers["query"].tolist()
        self.times = answers["created_at"].tolist()
        self.embedder = embedder  # loads the model on first use only

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        return self.embedder.encode([self.queries[i] for i in positions])


def ingested_at(store: DocumentStore, document_id: str) -> str | None:
    try:
        return store.stage_output(document_id, "metadata").get("ingested_at")
    except (LookupError, Quarantined):
        return None


def read_columns(table, columns: list[str], where: str | None = None):
    query = table.search().select(columns).limit(None)
    return (query.where(where) if where else query).to_arrow()


def summary_table(summaries: dict[str, DriftSummary], report_uri: str) -> str:
    lines = [
        "| side | drift share | drift score | drifted dimensions | rows compared | report |",
        "|---|---|---|---|---|---|",
    ]
    for side, s in summaries.items():
        lines.append(
            f"| {side} | {s.drift_share:.3f} | {s.drift_score:.3f} | "
            f"{s.drifted_columns} of {s.columns} | {s.n_reference} vs {s.n_current} "
            f"(of {s.available_reference} vs {s.available_current}) | "
            f"`{report_uri}/{side}.html` |"
        )
    return "\n".join(lines)


def prune_reports(state: st.StateStore, keep: int) -> None:
    """Removes all but the newest `keep` report folders (their names start with a UTC time)."""
    for old in state.folders(DRIFT_DIR)[:-keep]:
        state.remove_folder(f"{DRIFT_DIR}/{old}")
