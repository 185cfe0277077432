"""The learning loop end to end on the sample documents: answers and judgments in the real
feedback database, the feedback sensor, the retraining job (real fine-tune, real LanceDB,
real MLflow), the gate passing and refusing, promotion, ingestion after promotion, rollback.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from qpbot_assets.cli import main as qpbot
from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.learning.gate import GateSet, compare_retrievers
from qpbot_assets.learning.pairs import build_training_pairs, pairs_version
from qpbot_assets.learning.signals import FeedbackPolicy, retraining_reason
from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.retrieval import Retriever, SearchHit
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import CHAMPION_EMBEDDER, INDEX_CANDIDATE, PROMOTED_INDEX, StateStore

REPO = Path(__file__).resolve().parents[1]


# --- pure ------------------------------------------------------------------------------
def test_retraining_reason_counts_pairs_and_a_low_rate_once_per_window():
    policy = FeedbackPolicy(window=4, min_up_rate=0.5, min_new_pairs=3)
    judged = [("up", {"c1": "relevant", "c2": "relevant"}), ("up", None)]
    assert "3 new training pairs" in retraining_reason(["up"] * 4, judged, policy)
    assert retraining_reason(["up"] * 4, judged[:1], policy) is None
    downs = [("down", {"c1": "irrelevant"})] * 4
    assert "thumbs-up rate 0.25" in retraining_reason(["down", "down", "down", "up"], downs, policy)
    # A low rate over a window mostly seen before the last retraining does not count again.
    assert retraining_reason(["down", "down", "down", "up"], downs[:2], policy) is None


def rated(query, rating, retrieved, judgments=None):
    return {
        "query": query,
        "rating": rating,
        "retrieved": [{"chunk_id": c, "document_id": c[0], "score": 1.0} for c in retrieved],
        "source_judgments": judgments,
    }


def test_training_pairs_pool_judgments_and_never_use_a_positive_as_negative():
    frame = pd.DataFrame(
        [
            rated(
                "How long is the battery?",
                "up",
                ["a1", "b1"],
                {"a1": "relevant", "b1": "irrelevant"},
            ),
            rated("how long is the  BATTERY?", "down", ["b1", "a1", "c1"]),  # same query
            rated("Warranty period?", "up", ["w1", "x1"]),  # no judgments: top source
            rated("Gone?", "up", ["z9"], {"z9": "relevant"}),  # its chunk left the index
        ]
    )
    texts = {c: f"text of {c}" for c in ["a1", "b1", "c1", "w1", "x1"]}
    pairs = build_training_pairs(frame, lambda ids: {i: texts[i] for i in ids if i in texts})
    as_tuples = {
        (positive, negative if isinstance(negative, str) else None)
        for positive, negative in zip(
            pairs["positive_chunk_id"], pairs["negative_chunk_id"], strict=True
        )
    }
    assert as_tuples == {("a1", "b1"), ("w1", None)}
    battery = pairs[pairs["positive_chunk_id"] == "a1"].iloc[0]
    assert battery["positive"] == "text of a1" and battery["negative"] == "text of b1"
    assert pairs_version(pairs) == pairs_version(pairs.copy())
    assert pairs_version(pairs) != pairs_version(pairs.iloc[:1])


class RankedRetriever:
    """Answers each query with a fixed ranking of document ids (pure gate logic only)."""

    def __init__(self, rankings):
        self.rankings = rankings

    def search(self, query, k, mode):
        return [
            SearchHit(d, d, None, None, None, None, "", None, 1.0) for d in self.rankings[query]
        ][:k]


class DenseWorse(RankedRetriever):
    """Ranks like `hybrid` in hybrid mode and like `dense` in dense mode."""

    def __init__(self, dense, hybrid):
        super().__init__(hybrid)
        self.dense_rankings = dense

    def search(self, query, k, mode):
        if mode == "dense":
            return RankedRetriever(self.dense_rankings).search(query, k, mode)
        return super().search(query, k, mode)


def test_gate_compares_both_modes_beyond_noise_and_refuses_without_queries():
    queries = {f"q{i}": f"question {i}" for i in range(10)}
    gate_set = GateSet("s", queries, {f"q{i}": {f"d{i}": 1} for i in range(10)})
    right = {f"question {i}": [f"d{i}", "x"] for i in range(10)}
    # Worse on half the queries: the relevant document drops to the second place.
    worse = {f"question {i}": ["x", f"d{i}"] if i % 2 else [f"d{i}", "x"] for i in range(10)}
    # Worse on one query of ten: within the noise of ten queries.
    slightly = {**right, "question 0": ["x", "d0"]}
    good, bad = RankedRetriever(right), RankedRetriever(worse)
    assert compare_retrievers(good, good, [gate_set])["passed"]
    refused = compare_retrievers(good, bad, [gate_set])
    assert not refused["passed"] and refused["reason"].startswith("refused")
    assert refused["difference"]["hybrid"] < -refused["allowed_drop"]["hybrid"]
    assert compare_retrievers(bad, good, [gate_set])["passed"]
    assert compare_retrievers(good, RankedRetriever(slightly), [gate_set])["passed"]
    assert not compare_retrievers(good, DenseWorse(worse, right), [gate_set])["passed"]
    empty = compare_retrievers(good, good, [])
    assert not empty["passed"] and "no evaluation query" in empty["reason"]


# --- the loop on real components -------------------------------------------------------
def use_remote_state(request, monkeypatch) -> None:
    """What a deployment with nothing durable on its workers sets: state, the index, the
    documents' content and the learning loop's artifacts on S3 (moto's server), the
    document records and feedback, Dagster's runs and events, and MLflow's tracking each in
    a PostgreSQL database."""
    from conftest import S3_KEY, S3_SECRET, s3_client

    endpoint = request.getfixturevalue("object_store")
    databases = request.getfixturevalue("make_postgres_database")
    s3_client(endpoint).create_bucket(Bucket="qpbot")
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "QPBOT_STORAGE_URL": "s3://qpbot/platform",
        "QPBOT_DATABASE_URL": databases(),
        "QPBOT_DAGSTER_PG_URL": databases(),
        "QPBOT_MLFLOW_TRACKING_URI": databases(),
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def judged_home(request, qpbot_home, sample_documents, tmp_path, monkeypatch):
    """Sample documents ingested, every sample question asked and judged, an evaluation
    set of those questions configured. Parametrized indirectly with "remote", the same on
    S3 and PostgreSQL (`use_remote_state`)."""
    from qpbot_assets.runtime.runs import ingest_paths

    if getattr(request, "param", "local") == "remote":
        use_remote_state(request, monkeypatch)

    questions = [json.loads(line) for line in open(REPO / "examples" / "sample_questions.jsonl")]
    expected = {
        q["question"]: document_id_for((sample_documents / q["document"]).resolve().as_uri())
        for q in questions
    }
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": str(i), "text": q}) + "\n" for i, q in enumerate(expected))
    )
    (eval_dir / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{i}\t{d}\t1\n" for i, d in enumerate(expected.values()))
    )
    beir_set = {
        "name": "samples",
        "queries": str(eval_dir / "queries.jsonl"),
        "qrels": str(eval_dir / "qrels.tsv"),
    }
    monkeypatch.setenv("QPBOT_EVAL_BEIR_SETS", json.dumps([beir_set]))
    monkeypatch.setenv("QPBOT_RETRAIN_MIN_NEW_PAIRS", "10")
    settings = QpbotSettings()
    assert ingest_paths(settings, [sample_documents], quiet=True)["success"]

    retriever = Retriever.from_settings(settings)
    log = AnswerLog(settings.feedback_database_url, settings.home / "spool.jsonl")
    for question, document_id in expected.items():
        hits = retriever.search(question, k=5)
        answer_id = str(uuid.uuid4())
        log.record_answer(
            {
                "answer_id": answer_id,
                "query": question,
                "mode": "hybrid",
                "retrieved": [
                    {"chunk_id": h.chunk_id, "document_id": h.document_id, "score": h.score}
                    for h in hits
                ],
                "answer": "an answer",
            }
        )
        judgments = {
            h.chunk_id: "relevant" if h.document_id == document_id else "irrelevant"
            for h in hits[:3]
        }
        good = "relevant" in judgments.values()
        log.record_feedback(
            {
                "feedback_id": str(uuid.uuid4()),
                "answer_id": answer_id,
                "rating": "up" if good else "down",
                "source_judgments": judgments,
            }
        )
    assert log.flush()
    log.close()
    return settings


def retrain(settings, **fine_tune):
    """What the daemon does: evaluate the feedback sensor, launch the run it asks for."""
    from qpbot_assets.defs.feedback.sensors import feedback_sensor
    from qpbot_assets.runtime.instance import get_instance
    from qpbot_assets.runtime.runs import load_definitions

    defs = load_definitions()
    instance = get_instance(settings)
    context = dg.build_sensor_context(instance=instance, resources=defs.resources)
    request = feedback_sensor(context)
    assert isinstance(request, dg.RunRequest), request
    config = {"epochs": 1, "batch_size": 8, "min_pairs": 5, **fine_tune}
    result = defs.resolve_job_def("retrain_embedder").execute_in_process(
        instance=instance,
        run_config={"ops": {"fine_tuned_embedder": {"config": config}}},
        tags=request.tags,
        raise_on_error=False,
    )
    gate = result.get_asset_check_evaluations()
    return result, gate, context.cursor


def uri_id(path: Path) -> str:
    return document_id_for(path.resolve().as_uri())


def durable_files(home: Path) -> list[str]:
    """Files under a home other than caches (local copies of what lives on object storage,
    model exports) and Dagster's compute logs (each run's stdout and stderr)."""
    found = (p.relative_to(home) for p in home.rglob("*") if p.is_file())
    return sorted(
        str(path)
        for path in found
        if path.parts[0] != "cache"
        and path.parts[:2] != ("models", "onnx")
        and "compute_logs" not in path.parts
    )


@pytest.mark.parametrize("judged_home", ["local", "remote"], indirect=True)
def test_feedback_retrains_gates_promotes_and_rolls_back(judged_home, sample_documents, tmp_path):
    from mlflow import MlflowClient

    settings = judged_home
    state = StateStore.from_settings(settings)
    before = state.read(PROMOTED_INDEX)

    # An as-good candidate (a learning rate too small to change it) passes the gate.
    result, gate, cursor = retrain(settings, learning_rate=1e-9)
    assert [check.passed for check in gate] == [True], gate
    promoted = state.read(PROMOTED_INDEX)
    assert promoted.table != before.table and "-ft-" in promoted.embedding_model
    assert Retriever.from_settings(settings).embedder.model_name == promoted.embedding_model
    client = MlflowClient(settings.tracking_uri)
    champion = client.get_model_version_by_alias("qpbot-embedder", "champion")
    assert champion.tags["gate"] == "passed"

    # The same feedback does not start a second retraining.
    from qpbot_assets.defs.feedback.sensors import feedback_sensor
    from qpbot_assets.runtime.instance import get_instance
    from qpbot_assets.runtime.runs import load_definitions

    resources = load_definitions().resources
    again = dg.build_sensor_context(get_instance(settings), cursor=cursor, resources=resources)
    assert isinstance(feedback_sensor(again), dg.SkipReason)

    # Ingestion now embeds with the promoted model, and only the new document.
    from qpbot_assets.runtime.runs import ingest_paths

    extra = tmp_path / "more"
    shutil.copytree(sample_documents, extra)
    (extra / "extra-note.md").write_text("# Loading dock\n\nThe loading dock opens at 6 am.\n")
    assert ingest_paths(settings, [extra], quiet=True)["success"]
    after_ingest = state.read(PROMOTED_INDEX)
    assert after_ingest.table == promoted.table and after_ingest.chunks > promoted.chunks
    hits = Retriever.from_settings(settings).search("When does the loading dock open?", k=1)
    assert "6 am" in hits[0].text

    # An edited and a deleted document of that folder.
    policy = extra / "travel-and-expense-policy.md"
    policy.write_text(policy.read_text().replace("45 EUR", "52 EUR"))
    (extra / "release-notes.html").unlink()
    assert ingest_paths(settings, [extra], quiet=True)["removed"] == 1
    after_edit = state.read(PROMOTED_INDEX)
    assert after_edit.documents == after_ingest.documents - 1
    rows = Retriever.from_settings(settings).table.search().limit(None).to_list()
    edited = " ".join(r["text"] for r in rows if r["document_id"] == uri_id(policy))
    assert "52 EUR" in edited and "45 EUR" not in edited
    assert not any(r["document_id"] == uri_id(extra / "release-notes.html") for r in rows)

    # Rollback: the base model's table serves again, with the new document synced into it.
    assert qpbot(["rollback", "--json"]) == 0
    restored = state.read(PROMOTED_INDEX)
    assert restored.table == before.table and restored.embedding_model == before.embedding_model
    assert restored.chunks == after_edit.chunks
    assert state.read(CHAMPION_EMBEDDER) is None
    assert (
        not MlflowClient(settings.tracking_uri)
        .get_registered_model("qpbot-embedder")
        .aliases.get("champion")
    )

    if settings.storage_url:
        # Nothing durable on this worker's disk; a fresh one carries on from the shared state.
        assert durable_files(settings.home) == []
        fresh = settings.model_copy(update={"home": tmp_path / "fresh-worker"})
        from qpbot_assets.documents.store import DocumentStore
        from qpbot_assets.runtime.runs import index_status

        assert index_status(fresh)["chunks"] == restored.chunks
        chunks = DocumentStore(fresh).stage_output(uri_id(policy), "chunks")
        assert any("52 EUR" in chunk["text"] for chunk in chunks)
        hits = Retriever.from_settings(fresh).search("When does the loading dock open?", k=1)
        assert "6 am" in hits[0].text


def test_the_gate_refuses_a_candidate_trained_on_shuffled_pairs(judged_home):
    settings = judged_home
    before = StateStore(settings.home).read(PROMOTED_INDEX)
    # Shuffled pairs at a learning rate high enough to wreck the model in a few steps.
    result, gate, _ = retrain(settings, shuffle_labels=True, learning_rate=1e-2, epochs=2)
    assert [check.passed for check in gate] == [False], gate
    assert StateStore(settings.home).read(PROMOTED_INDEX) == before  # the pointer did not move
    from mlflow import MlflowClient

    assert gate[0].description.startswith("refused")
    candidate = StateStore(settings.home).read(INDEX_CANDIDATE)
    version = MlflowClient(settings.tracking_uri).get_model_version(
        "qpbot-embedder", candidate.embedder.mlflow_version
    )
    assert version.tags["gate"] == "refused" and version.tags["gate_reason"].startswith("refused")
