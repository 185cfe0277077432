"""What the learning loop makes, on object storage (QPBOT_STORAGE_URL=s3://...): fine-tuned
embedders and LoRA adapters under `<storage>/models/`, MLflow's artifacts under
`<storage>/mlflow/`, evaluation and drift reports under `<storage>/evaluation/` and
`<storage>/monitoring/drift/`. The worker that made them keeps only caches in its
QPBOT_HOME; a replica with an empty QPBOT_HOME loads the promoted embedder and adapter.

The S3 server is moto's (the `object_store` fixture; see tests/test_object_storage.py).
"""

# ruff: noqa: F811 (the fixtures imported from the other object-storage and adapter tests)
import json
from pathlib import Path

import dagster as dg
import pandas as pd
from conftest import ingest_into, service_client
from test_llm_adapter import (  # noqa: F401 (smollm2_tokenizer and tiny_base: fixtures)
    FAST,
    log_thumbs_up,
    queries,
    smollm2_tokenizer,
    tiny_base,
)
from test_object_storage import STORAGE_URL, s3, search, stored_keys  # noqa: F401

from qpbot_assets.defs.evaluation.assets import retrieval_evaluation
from qpbot_assets.defs.feedback.assets import feedback_events
from qpbot_assets.defs.generation.asset_checks import adapter_not_worse_than_serving
from qpbot_assets.defs.generation.assets import LlmAdapterConfig, llm_adapter, promoted_adapter
from qpbot_assets.defs.monitoring.assets import DRIFT_DIR, prune_reports
from qpbot_assets.defs.resources import (
    FeedbackDatabaseResource,
    MlflowResource,
    SearchIndexResource,
)
from qpbot_assets.defs.training.assets import (
    candidate_index,
    fine_tuned_embedder,
    promoted_candidate,
)
from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.runtime.runs import load_definitions
from qpbot_serving import index as contract
from qpbot_serving.generation import build_generator
from qpbot_serving.retrieval import Retriever
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import (
    CHALLENGER_EMBEDDER,
    PROMOTED_ADAPTER,
    PROMOTED_INDEX,
    TRAINING_PAIRS,
    StateStore,
    TrainingPairsVersion,
)

REPO = Path(__file__).resolve().parents[1]


def outside_cache(home: Path, *names: str) -> list[Path]:
    """Files or folders named `names` anywhere under `home` except its cache."""
    return [
        p for p in home.rglob("*") if p.name in names and "cache" not in p.relative_to(home).parts
    ]


def sample_pairs(settings: QpbotSettings, folder: Path) -> TrainingPairsVersion:
    """Training pairs from the sample questions (each with its best hit as the positive),
    written the way the training_pairs asset writes them."""
    retriever = Retriever.from_settings(settings)
    questions = [
        json.loads(line)["question"] for line in open(REPO / "examples" / "sample_questions.jsonl")
    ]
    rows = [
        {
            "query": q,
            "positive": retriever.search(q, k=1)[0].text,
            "negative": None,
            "split": "train",
        }
        for q in questions
    ]
    path = folder / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return TrainingPairsVersion(
        version="test", path=str(path), pairs=len(rows), train_pairs=len(rows),
        validation_pairs=0, queries=len(rows), with_hard_negative=0, new_pairs=len(rows),
    )  # fmt: skip


def test_a_fine_tune_lives_on_s3_and_a_replica_with_an_empty_home_serves_with_it(
    s3, sample_documents, tmp_path, monkeypatch
):
    monkeypatch.setenv("QPBOT_STORAGE_URL", STORAGE_URL)
    home = ingest_into(tmp_path / "writer", sample_documents)
    monkeypatch.setenv("QPBOT_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    beir = tmp_path / "beir"
    beir.mkdir()
    question = json.loads(open(REPO / "examples" / "sample_questions.jsonl").readline())
    document = document_id_for((sample_documents / question["document"]).resolve().as_uri())
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": question["question"]}))
    (beir / "qrels.tsv").write_text(f"query-id\tcorpus-id\tscore\n1\t{document}\t1\n")
    beir_set = {
        "name": "tiny",
        "queries": str(beir / "queries.jsonl"),
        "qrels": str(beir / "qrels.tsv"),
    }
    monkeypatch.setenv("QPBOT_EVAL_BEIR_SETS", json.dumps([beir_set]))
    settings = QpbotSettings()
    state = StateStore.from_settings(settings)
    state.write(TRAINING_PAIRS, sample_pairs(settings, tmp_path))

    # Fine-tune (a learning rate too small to change the model: the index must still work),
    # the candidate index, its promotion (the gate is tests/test_learning_loop.py's), then
    # the evaluation of what is promoted.
    config = {"epochs": 1, "batch_size": 8, "min_pairs": 5, "learning_rate": 1e-9}
    resources = load_definitions().resources
    result = dg.materialize(
        [fine_tuned_embedder, candidate_index, promoted_candidate],
        resources=resources,
        run_config={"ops": {"fine_tuned_embedder": {"config": config}}},
    )
    assert result.success
    evaluated = dg.materialize([retrieval_evaluation], resources=resources)
    assert evaluated.success
    challenger = state.read(CHALLENGER_EMBEDDER)
    name = challenger.model.rsplit("/", 1)[-1]
    assert challenger.model == f"{STORAGE_URL}/models/embedders/{name}"
    model_keys = stored_keys(s3, f"models/embedders/{name}/")
    assert f"platform/models/embedders/{name}/config.json" in model_keys
    assert stored_keys(s3, "mlflow/qpbot-embedder/")  # MLflow's copy, through AWS_ENDPOINT_URL

    # The index names the model by its URI, the same on every machine; a sane table name.
    promoted = state.read(PROMOTED_INDEX)
    assert promoted.embedding_model == challenger.model
    vectors = contract.vectors_key(challenger.model, promoted.embedding_backend)
    assert promoted.table == contract.table_name_for(vectors)
    assert promoted.table.startswith(f"chunks__{name}")

    evaluation = evaluated.asset_materializations_for_node("retrieval_evaluation")[0].metadata
    plot = evaluation["plot_path"].value
    assert plot == f"{STORAGE_URL}/evaluation/retrieval-{promoted.label.replace('@', '-')}.png"
    assert f"platform/evaluation/{plot.rsplit('/', 1)[-1]}" in stored_keys(s3, "evaluation/")
    assert stored_keys(s3, "mlflow/qpbot-evaluation/")

    # The writer keeps the model only as a cache, no MLflow artifacts, no reports.
    assert outside_cache(home, name, "mlartifacts", "evaluation") == []
    assert (home / "cache" / "s3" / "qpbot" / "platform" / "models" / "embedders" / name).is_dir()

    replica_home = tmp_path / "replica"
    with service_client(QpbotSettings(home=replica_home, answer_mode="extractive")) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["index_version"] == promoted.label
        assert client.app.state.retriever.embedder.model_name == challenger.model
        assert (
            search(client, "battery runtime in Eco mode")[0]["title"] == "Kestrel K2 User Handbook"
        )
    copy = replica_home / "cache" / "s3" / "qpbot" / "platform" / "models" / "embedders" / name
    assert (copy / "config.json").is_file()
    assert outside_cache(replica_home, name) == []


def test_a_lora_adapter_lives_on_s3_and_a_replica_with_an_empty_home_applies_it(
    s3,
    qpbot_home,
    tiny_base,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("QPBOT_STORAGE_URL", STORAGE_URL)
    settings = QpbotSettings()
    log_thumbs_up(settings, queries("train", 8) + queries("validation", 3))
    resources = {
        "feedback_db": FeedbackDatabaseResource(
            database_url=settings.feedback_database_url,
            home=str(settings.home),
            storage_url=STORAGE_URL,
        ),
        "index": SearchIndexResource(home=str(settings.home), storage_url=STORAGE_URL),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri,
            artifacts_dir=str(settings.mlflow_artifacts_dir),
            storage_url=STORAGE_URL,
        ),
    }
    config = LlmAdapterConfig(base_model=str(tiny_base), min_examples=4, **FAST)
    result = dg.materialize(
        [feedback_events, llm_adapter, adapter_not_worse_than_serving, promoted_adapter],
        resources=resources,
        run_config=dg.RunConfig(ops={"llm_adapter": config}),
    )
    assert result.success
    state = StateStore(STORAGE_URL)
    version = state.read(PROMOTED_ADAPTER).version
    meta = result.asset_materializations_for_node("llm_adapter")[0].metadata
    assert meta["adapter_dir"].value == f"{STORAGE_URL}/models/adapters/{version}"
    assert f"platform/models/adapters/{version}/adapter_config.json" in stored_keys(
        s3, "models/adapters/"
    )
    assert stored_keys(s3, "mlflow/qpbot-llm-adapter/")
    home = settings.home
    assert outside_cache(home, version, "mlartifacts") == []
    assert not (home / "feedback").exists()  # the copies llm_adapter read are on S3
    assert "platform/feedback/answers.parquet" in stored_keys(s3, "feedback/")

    replica_home = tmp_path / "replica"
    replica = QpbotSettings(home=replica_home, generator_model=str(tiny_base))
    generator = build_generator(replica)
    assert generator.model_name == f"{tiny_base}+{version}"
    assert Path(generator.adapter["path"]).is_relative_to(replica_home / "cache")
    generator.load()
    assert isinstance("".join(generator.stream([{"role": "user", "content": "Hi"}], 3)), str)
    assert outside_cache(replica_home, version) == []


def test_drift_report_folders_are_stored_listed_and_pruned_on_s3(s3):
    state = StateStore(STORAGE_URL)
    for stamp in ("20260101T000000Z-a", "20260102T000000Z-b", "20260103T000000Z-c"):
        with state.new_folder(f"{DRIFT_DIR}/{stamp}") as folder:
            (folder / "documents.html").write_text("<html>drift</html>")
    with state.new_folder(f"{DRIFT_DIR}/20260104T000000Z-empty"):
        pass  # an empty folder stores nothing
    assert state.folders(DRIFT_DIR) == [
        "20260101T000000Z-a",
        "20260102T000000Z-b",
        "20260103T000000Z-c",
    ]
    prune_reports(state, keep=2)
    assert stored_keys(s3, f"{DRIFT_DIR}/") == {
        f"platform/{DRIFT_DIR}/20260102T000000Z-b/documents.html",
        f"platform/{DRIFT_DIR}/20260103T000000Z-c/documents.html",
    }
