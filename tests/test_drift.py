"""Embedding drift: evidently on real embeddings, the drift_report asset in a home of its own,
and the drift sensor under a test instance."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from qpbot_assets.defs.monitoring.assets import (
    DriftReportConfig,
    drift_report,
)
from qpbot_assets.defs.monitoring.sensors import DRIFT_REPORT, drift_sensor
from qpbot_assets.defs.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    FeedbackDatabaseResource,
    RetrainingPolicyResource,
    SearchIndexResource,
)
from qpbot_assets.defs.training.jobs import RETRAIN_JOB_NAME
from qpbot_assets.documents.extraction import extract_document
from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.indexing.promotion import promote_snapshot
from qpbot_assets.learning.drift import embedding_drift, split_windows
from qpbot_assets.learning.feedback import sync_feedback_events
from qpbot_serving import index as contract
from qpbot_serving.answer_log import answers, engine_for, metadata
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import DRIFT_WINDOWS, IndexSnapshot, StateStore

REPO = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
ROWS = 40  # rows per side: enough for a clear answer, few enough for evidently to be quick


# --- real text, embedded once ---------------------------------------------------------------


@pytest.fixture(scope="session")
def scifact_abstracts(shared_data) -> list[str]:
    texts = []
    with open(shared_data / "scifact" / "corpus.jsonl") as corpus:
        for line in corpus:
            record = json.loads(line)
            texts.append(f"{record['title']}. {record['text']}")
            if len(texts) == 5 * ROWS // 2:
                break
    return texts


@pytest.fixture(scope="session")
def sample_paragraphs(sample_documents) -> list[str]:
    """Paragraphs of the five demo documents (a robot vacuum's handbook, company policies)."""
    return [
        block.text
        for path in sorted(sample_documents.iterdir())
        for block in extract_document(path).blocks
        if len(block.text) >= 40
    ]


@pytest.fixture(scope="session")
def vectors(embedder, scifact_abstracts, sample_paragraphs) -> dict[str, np.ndarray]:
    return {
        "scifact": embedder.encode(scifact_abstracts),
        "samples": embedder.encode(sample_paragraphs),
    }


# --- pure logic -----------------------------------------------------------------------------


def test_shifted_text_drifts_and_same_distribution_text_does_not(vectors, tmp_path):
    scifact, samples = vectors["scifact"], vectors["samples"]
    assert len(samples) >= ROWS

    same = embedding_drift(scifact[:ROWS], scifact[ROWS:], sample=ROWS, seed=0)
    html = tmp_path / "reports" / "shifted.html"
    shifted = embedding_drift(samples, scifact[:ROWS], sample=ROWS, seed=0, html_path=html)

    # Abstracts against other abstracts: about the K-S test's 5% false positives.
    assert same.drift_share < 0.2 and same.drift_score < 0.8
    assert (same.n_reference, same.n_current) == (ROWS, ROWS)
    assert (same.available_reference, same.available_current) == (ROWS, len(scifact) - ROWS)
    # Company policies against biomedical abstracts: many dimensions move, and a classifier
    # tells the two apart almost perfectly.
    assert shifted.drift_share > 0.3 and shifted.drift_share > 3 * same.drift_share
    assert shifted.drift_score > 0.9
    assert shifted.columns == 384 and shifted.drifted_columns == round(shifted.drift_share * 384)
    assert "Drift in embeddings" in html.read_text()
    assert not list(html.parent.glob("*.tmp"))


def test_windows_start_wait_compare_and_move_on():
    day = [f"2026-03-{d:02d}T10:00:00+00:00" for d in range(1, 11)]

    first = split_windows([day[0]] * 5 + [day[1]] * 5, None, min_rows=4)
    assert not first.compute and "first report" in first.reason
    assert first.next_cutoff == datetime.fromisoformat(day[1]).isoformat()

    # Three newer rows of four needed: wait, and keep the cutoff so they add up.
    waiting = split_windows([day[0]] * 5 + [day[2]] * 3, day[1], min_rows=4)
    assert not waiting.compute and "waiting" in waiting.reason
    assert waiting.next_cutoff == day[1] and waiting.current.sum() == 3

    ready = split_windows([day[0]] * 5 + [day[2]] * 3 + [day[3]], day[1], min_rows=4)
    assert ready.compute and ready.reason == ""
    assert ready.reference.tolist() == [True] * 5 + [False] * 4
    assert (ready.reference_until, ready.next_cutoff) == (day[1], ready.current_until)

    # Too little history to compare with: everything so far becomes the reference.
    thin = split_windows([day[0]] * 2 + [day[5]] * 9, day[1], min_rows=4)
    assert not thin.compute and thin.next_cutoff == thin.current_until

    empty = split_windows([], day[1], min_rows=4)
    assert not empty.compute and empty.next_cutoff == day[1]


# --- the asset, in a home of its own --------------------------------------------------------


class Home:
    """A QPBOT_HOME with a promoted LanceDB table, document metadata and an answer log, written
    through the same contract the pipeline and the service use."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True)
        self.store = DocumentStore(QpbotSettings(home=root))
        self.index_dir = root / "index"
        self.engine = engine_for(f"sqlite:///{root / 'feedback.db'}")
        metadata.create_all(self.engine)
        info = contract.IndexInfo(embedding_model=MODEL, dimension=384)
        db = contract.connect(StateStore(root))
        self.table = db.create_table(
            contract.table_name_for(MODEL), schema=contract.chunk_schema(info)
        )
        self.documents = 0

    def ingest(self, texts: list[str], vectors: np.ndarray, ingested_at: str, per_document=1):
        """Adds documents of `per_document` chunks each to the table (not promoted yet)."""
        rows = []
        for start in range(0, len(texts), per_document):
            document_id = uuid.uuid4().hex[:16]
            record = {"title": document_id, "format": "txt", "ingested_at": ingested_at}
            self.store.run_stage(document_id, "metadata", ingested_at, lambda r=record: r)
            for offset in range(min(per_document, len(texts) - start)):
                i = start + offset
                rows.append(
                    {
                        "chunk_id": f"{document_id}-{offset}",
                        "document_id": document_id,
                        "chunk_index": offset,
                        "text": texts[i],
                        "title": document_id,
                        "vector": vectors[i].tolist(),
                    }
                )
            self.documents += 1
        self.table.add(pa.Table.from_pylist(rows, schema=self.table.schema))

    def promote(self) -> None:
        snapshot = IndexSnapshot(
            table=self.table.name,
            version=self.table.version,
            embedding_model=MODEL,
            dimension=384,
            chunks=self.table.count_rows(),
            documents=self.documents,
        )
        promote_snapshot(StateStore(self.root), snapshot, MODEL)

    def ask(self, queries: list[str], created_at: str) -> None:
        """Logs answers to `queries` and copies the log, as feedback_events does."""
        when = datetime.fromisoformat(created_at)
        with self.engine.begin() as connection:
            connection.execute(
                answers.insert(),
                [
                    {
                        "answer_id": str(uuid.uuid4()),
                        "created_at": when,
                        "query": q,
                        "retrieved": [],
                    }
                    for q in queries
                ],
            )
        sync_feedback_events(self.engine, StateStore(self.root))

    def resources(self) -> dict:
        return {
            "documents": DocumentStoreResource(home=str(self.root)),
            "index": SearchIndexResource(home=str(self.root)),
            "embedding_model": EmbeddingModelResource.from_settings(QpbotSettings(home=self.root)),
            "feedback_db": FeedbackDatabaseResource(
                database_url=f"sqlite:///{self.root / 'feedback.db'}", home=str(self.root)
            ),
        }


def materialize_report(home: Home, instance) -> dict:
    config = DriftReportConfig(sample=ROWS, min_rows=15, seed=0)
    result = dg.materialize(
        [drift_report],
        instance=instance,
        resources=home.resources(),
        run_config=dg.RunConfig(ops={"drift_report": config}),
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def tick(instance, cursor=None):
    # The threshold as the definitions build it: from QPBOT_DRIFT_THRESHOLD.
    retraining = RetrainingPolicyResource(drift_threshold=QpbotSettings().drift_threshold)
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"retraining": retraining}
    )
    return drift_sensor.evaluate_tick(context)


def test_drift_report_compares_new_documents_and_queries_and_the_sensor_retrains_once(
    tmp_path, monkeypatch, shared_data, vectors, scifact_abstracts, sample_paragraphs
):
    monkeypatch.setenv("QPBOT_DRIFT_THRESHOLD", "0.3")
    home = Home(tmp_path / "home")
    questions = [
        json.loads(line)["question"] for line in open(REPO / "examples/sample_questions.jsonl")
    ]
    claims = [
        json.loads(line)["text"] for line in open(shared_data / "scifact" / "queries-train.jsonl")
    ][:30]
    old, new = "2026-03-01T09:00:00+00:00", "2026-04-01T09:00:00+00:00"

    with dg.instance_for_test() as instance:
        # Nothing promoted yet: the report says so and does not fail.
        assert materialize_report(home, instance)["drift_computed"] is False

        # The handbook and policies, and questions about them: the reference windows.
        home.ingest(sample_paragraphs, vectors["samples"], old, per_document=4)
        home.promote()
        home.ask(questions, old)
        first = materialize_report(home, instance)
        assert first["drift_computed"] is False
        assert first["documents/status"].startswith("first report")
        assert first["documents/reference_rows"] == len(sample_paragraphs)
        assert first["queries/reference_rows"] == len(questions)
        windows = StateStore(home.root).read(DRIFT_WINDOWS)
        assert windows.documents.reference_until.startswith("2026-03-01T09:00:00")

        # New abstracts in the table but not promoted: the report reads the promoted version.
        home.ingest(scifact_abstracts[:ROWS], vectors["scifact"][:ROWS], new)
        unpromoted = materialize_report(home, instance)
        assert unpromoted["drift_computed"] is False
        assert unpromoted["documents/current_rows"] == 0

        home.promote()
        home.ask(claims, new)
        report = materialize_report(home, instance)
        assert report["drift_computed"] is True
        for side, current in [("documents", ROWS), ("queries", len(claims))]:
            assert report[f"{side}/status"] == "computed"
            assert report[f"{side}/current_rows"] == current
            assert report[f"{side}/drift_share"] > 0.3 and report[f"{side}/drift_score"] > 0.9
            html = Path(report[f"{side}/report"])
            assert html.is_relative_to(home.root / "monitoring" / "drift") and html.stat().st_size
        assert report["drift_share"] == max(
            report["documents/drift_share"], report["queries/drift_share"]
        )

        # The sensor starts retraining for this report, with a run key from its signal, and
        # the same report read again (a repeated tick) gives the same key: no second run.
        fired = tick(instance)
        [request] = fired.run_requests
        assert request.run_key == f"drift:{report['signal_id']}"
        assert drift_sensor.job_name == RETRAIN_JOB_NAME
        assert tick(instance).run_requests[0].run_key == request.run_key
        assert "No new materialization" in tick(instance, fired.cursor).skip_message

        # Nothing arrived since: no drift computed, and the sensor skips saying why.
        again = materialize_report(home, instance)
        assert again["drift_computed"] is False and "waiting" in again["documents/status"]
        skipped = tick(instance, fired.cursor)
        assert not skipped.run_requests
        assert "computed no drift share" in skipped.skip_message and "0.3" in skipped.skip_message


# --- the sensor alone -----------------------------------------------------------------------


def report_drift(instance, **metadata) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(DRIFT_REPORT, metadata=metadata))


def test_drift_sensor_fires_once_per_signal_and_skips_below_the_threshold(monkeypatch):
    monkeypatch.setenv("QPBOT_DRIFT_THRESHOLD", "0.5")
    with dg.instance_for_test() as instance:
        assert "No new materialization" in tick(instance).skip_message

        report_drift(
            instance, drift_computed=True, drift_share=0.62, drift_side="documents", signal_id="s1"
        )
        first = tick(instance)
        [request] = first.run_requests
        assert request.run_key == "drift:s1" and request.tags["qpbot/drift_share"] == "0.620"
        assert tick(instance).run_requests[0].run_key == "drift:s1"  # same report, same key
        assert not tick(instance, first.cursor).run_requests  # already seen: nothing new

        # The same windows reported again (a re-executed report): the same run key, which
        # Dagster never launches twice for one sensor.
        report_drift(
            instance, drift_computed=True, drift_share=0.62, drift_side="documents", signal_id="s1"
        )
        assert tick(instance, first.cursor).run_requests[0].run_key == "drift:s1"

        report_drift(
            instance, drift_computed=True, drift_share=0.08, drift_side="queries", signal_id="s2"
        )
        below = tick(instance, first.cursor)
        assert not below.run_requests
        assert "0.080" in below.skip_message and "threshold 0.5" in below.skip_message

        monkeypatch.setenv("QPBOT_DRIFT_THRESHOLD", "0.05")  # read at every tick
        assert tick(instance, first.cursor).run_requests[0].run_key == "drift:s2"


def test_drift_report_and_sensor_are_in_the_code_location():
    from qpbot_assets.runtime.runs import load_definitions

    defs = load_definitions()
    sensor = defs.resolve_sensor_def("drift_sensor")
    assert sensor.job_name == RETRAIN_JOB_NAME
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assets = defs.resolve_assets_def("drift_report")
    assert assets.group_names_by_key[DRIFT_REPORT] == "monitoring"
    assert assets.automation_conditions_by_key[DRIFT_REPORT] is not None
