"""The evaluation assets on the ingested sample documents: real LanceDB, the real model,
real SQLite feedback rows written by the service's AnswerLog, a real MLflow store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from qpbot_assets.defs.evaluation.assets import (
    FEEDBACK_SET,
    answer_evaluation,
    feedback_metrics,
    retrieval_evaluation,
)
from qpbot_assets.defs.feedback.assets import feedback_events
from qpbot_assets.defs.resources import (
    AnswerGeneratorResource,
    BeirSetConfig,
    EmbeddingModelResource,
    EvaluationResource,
    FeedbackDatabaseResource,
    MlflowResource,
    SearchIndexResource,
)
from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.runtime.runs import ingest_paths, load_definitions
from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.retrieval import Retriever
from qpbot_serving.settings import QpbotSettings

SAMPLE_QUESTIONS = Path(__file__).resolve().parents[1] / "examples" / "sample_questions.jsonl"


def resources_for(
    settings: QpbotSettings,
    beir_sets: list[BeirSetConfig] = (),
    qa_sets: list[Path] = (),
    generator_url: str | None = None,
    feedback_home: Path | None = None,
) -> dict:
    return {
        "index": SearchIndexResource(home=str(settings.home)),
        "embedding_model": EmbeddingModelResource.from_settings(settings),
        "evaluation": EvaluationResource(
            home=str(settings.home),
            beir_sets=list(beir_sets),
            qa_sets=[str(path) for path in qa_sets],
        ),
        "feedback_db": FeedbackDatabaseResource(
            database_url=settings.feedback_database_url,
            home=str(feedback_home or settings.home),
        ),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri, artifacts_dir=str(settings.mlflow_artifacts_dir)
        ),
        # An Ollama-style server that always answers "The answer is 42." (conftest).
        "answer_generator": AnswerGeneratorResource(
            home=str(settings.home),
            kind="ollama",
            model="fixed",
            url=generator_url,
            timeout_s=5,
            answer_mode="auto",
        ),
    }


def metadata_of(result: dg.ExecuteInProcessResult, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {key: value.value for key, value in event.metadata.items()}


@pytest.fixture(scope="module")
def home(tmp_path_factory, sample_documents):
    """The sample documents ingested once, and three answers logged by the service's
    AnswerLog: two today (one rated up with a judged source, one rated down), one yesterday."""
    root = tmp_path_factory.mktemp("evaluation") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QPBOT_HOME", str(root))
        patch.delenv("DAGSTER_HOME", raising=False)
        patch.delenv("QPBOT_DAGSTER_PG_URL", raising=False)
        settings = QpbotSettings()
        assert ingest_paths(settings, [sample_documents], quiet=True)["success"]
        retriever = Retriever.open(settings.home)
        questions = [json.loads(line) for line in SAMPLE_QUESTIONS.read_text().splitlines()]
        log = AnswerLog(settings.feedback_database_url, settings.home / "spool.jsonl")
        for number, (question, answer, rating, when) in enumerate(
            [
                (questions[0]["question"], "150 minutes [1].", "up", None),
                (questions[1]["question"], "I do not know.", "down", None),
                (questions[2]["question"], "Battery temperature [2].", None, timedelta(days=1)),
            ]
        ):
            hits = retriever.search(question, k=3)
            row = {
                "answer_id": f"answer-{number}",
                "query": question,
                "mode": "hybrid",
                "retrieved": [
                    {"chunk_id": h.chunk_id, "document_id": h.document_id, "score": h.score}
                    for h in hits
                ],
                "index_version": retriever.promoted.label,
                "answer": answer,
                "latency_ms": {"retrieval": 10.0 * (number + 1), "generation": 1000.0},
            }
            if when:
                row["created_at"] = datetime.now(UTC) - when
            log.record_answer(row)
            if rating:
                log.record_feedback(
                    {
                        "feedback_id": f"feedback-{number}",
                        "answer_id": row["answer_id"],
                        "rating": rating,
                        "source_judgments": {hits[0].chunk_id: "relevant"}
                        if rating == "up"
                        else None,
                    }
                )
        log.close()
        yield settings


@pytest.fixture(scope="module")
def beir_set(home, sample_documents, tmp_path_factory) -> BeirSetConfig:
    """The sample questions as a BEIR set: each one's relevant document is its source file."""
    folder = tmp_path_factory.mktemp("beir")
    questions = [json.loads(line) for line in SAMPLE_QUESTIONS.read_text().splitlines()]
    queries = folder / "queries.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"_id": f"q{i}", "text": item["question"]}) + "\n"
            for i, item in enumerate(questions)
        )
    )
    qrels = folder / "qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(
            f"q{i}\t{document_id_for((sample_documents / item['document']).resolve().as_uri())}\t1\n"
            for i, item in enumerate(questions)
        )
    )
    return BeirSetConfig(name="samples", queries=str(queries), qrels=str(qrels))


def test_the_evaluation_assets_are_in_the_graph():
    defs = load_definitions()
    graph = defs.resolve_asset_graph()
    for key in ("retrieval_evaluation", "answer_evaluation", "feedback_metrics"):
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == "evaluation"
    assert graph.get(dg.AssetKey("feedback_metrics")).partitions_def is not None
    dg.Definitions.validate_loadable(defs)


def test_nothing_to_evaluate_is_said_not_failed(qpbot_home, home, tmp_path):
    settings = QpbotSettings()  # an empty home: no promoted index
    result = dg.materialize(
        [retrieval_evaluation, answer_evaluation], resources=resources_for(settings)
    )
    assert "no promoted index" in metadata_of(result, retrieval_evaluation)["skipped"]
    assert "no promoted index" in metadata_of(result, answer_evaluation)["skipped"]

    # An index, but no configured set and no judged feedback.
    result = dg.materialize(
        [retrieval_evaluation, answer_evaluation],
        resources=resources_for(home, feedback_home=tmp_path / "no-feedback"),
    )
    assert "no evaluation set" in metadata_of(result, retrieval_evaluation)["skipped"]
    assert "QPBOT_EVAL_QA_SETS" in metadata_of(result, answer_evaluation)["skipped"]


def test_retrieval_evaluation_scores_configured_and_feedback_sets(home, beir_set):
    result = dg.materialize(
        [feedback_events, retrieval_evaluation], resources=resources_for(home, [beir_set])
    )
    metadata = metadata_of(result, retrieval_evaluation)
    assert metadata["sets"] == 2
    # Twenty questions, each about one of five documents: hybrid finds most at rank 1.
    assert metadata["samples/hybrid/ndcg@10"] > 0.8
    # The judged answer's source is what the same retriever ranks first.
    assert metadata[f"{FEEDBACK_SET}/hybrid/ndcg@10"] == 1.0
    assert "| samples | keyword | 20 |" in metadata["results"]
    assert metadata["plot"].startswith("![nDCG@10 by set and mode](data:image/png;base64,")
    assert Path(metadata["plot_path"]).read_bytes().startswith(b"\x89PNG")

    client = resources_for(home)["mlflow"].client()
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.data.tags["index_version"] == metadata["index_version"]
    assert run.data.tags["evaluation"] == "retrieval"
    metrics = run.data.metrics
    assert metrics["samples.hybrid.ndcg_at_10"] == pytest.approx(metadata["samples/hybrid/ndcg@10"])
    assert {f"{FEEDBACK_SET}.{mode}.mrr_at_10" for mode in ("dense", "keyword", "hybrid")} <= set(
        metrics
    )
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "qpbot-evaluation"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [
        Path(metadata["plot_path"]).name
    ]


def test_answer_evaluation_on_the_sample_questions(home, streaming_server):
    url = f"http://127.0.0.1:{streaming_server.server_address[1]}"
    result = dg.materialize(
        [answer_evaluation],
        resources=resources_for(home, qa_sets=[SAMPLE_QUESTIONS], generator_url=url),
        run_config=dg.RunConfig({"answer_evaluation": {"config": {"max_questions": 4}}}),
    )
    metadata = metadata_of(result, answer_evaluation)
    assert metadata["generator"] == "fixed"
    # The sample questions have short answers written in the documents.
    assert metadata["sample_questions/context_holds_answer"] >= 0.75
    assert len(streaming_server.requests) == 4

    [rows_file] = (home.home / "evaluation").glob("answers-sample_questions-*.jsonl")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    # "The answer is 42." rests on no evidence: the pipeline that serves quotes it instead.
    assert len(rows) == 4 and {row["answer_mode"] for row in rows} == {"extractive"}
    assert all(row["grounded"] and "42" not in row["generated"] for row in rows)

    run = resources_for(home)["mlflow"].client().get_run(metadata["mlflow_run_id"])
    assert run.data.metrics["sample_questions.questions"] == 4
    assert run.data.metrics["sample_questions.contains_reference"] >= 0.75
    assert run.data.tags["generator"] == "fixed"


def test_feedback_metrics_per_day_and_their_automation(home):
    instance = dg.DagsterInstance.ephemeral()
    resources = resources_for(home)
    defs = dg.Definitions(assets=[feedback_events, feedback_metrics], resources=resources)
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)

    # Nothing copied yet: nothing to compute.
    ticked = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert ticked.get_num_requested(feedback_metrics.key) == 0
    dg.materialize([feedback_events], instance=instance, resources=resources)
    # New events refresh today and yesterday (late rows of the day before), not older days.
    ticked = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=ticked.cursor)
    assert ticked.get_requested_partitions(feedback_metrics.key) == {
        today.isoformat(),
        yesterday.isoformat(),
    }

    result = dg.materialize(
        [feedback_metrics], instance=instance, resources=resources, partition_key=today.isoformat()
    )
    metadata = metadata_of(result, feedback_metrics)
    assert (metadata["answers"], metadata["ratings"], metadata["thumbs_up_rate"]) == (2, 2, 0.5)
    assert "| retrieval | 15.0 | 19.0 | 19.9 |" in metadata["latency_ms"]
    assert metadata["plot"].startswith("![answers per day, thumbs-up rate](data:image/png;base64,")
    figures = json.loads((home.home / "feedback" / "metrics" / f"{today}.json").read_text())
    good = figures["top_documents"]["good"]
    assert len(good) == 1 and good[0][1] == 1  # the up-rated answer cites only [1]
    assert len(figures["top_documents"]["bad"]) >= 1  # no markers: all its sources count

    result = dg.materialize(
        [feedback_metrics],
        instance=instance,
        resources=resources,
        partition_key=yesterday.isoformat(),
    )
    assert metadata_of(result, feedback_metrics)["answers"] == 1
