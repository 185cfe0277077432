"""Retraining from feedback: a fine-tuned embedder, its candidate index beside the live one,
and the promotion that only happens when the gate (asset_checks.py) passes.

One folder per fine-tuned model under `models/embedders/` of the state root (QPBOT_HOME, or
QPBOT_STORAGE_URL on object storage, with a copy in the worker's cache); the pointers
`state.CHALLENGER_EMBEDDER` (the newest one) and `state.INDEX_CANDIDATE` (its index).
"""

from dataclasses import asdict
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from qpbot_assets.defs.feedback.assets import training_pairs
from qpbot_assets.defs.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    MlflowResource,
    SearchIndexResource,
)
from qpbot_assets.indexing.promotion import promote_candidate
from qpbot_assets.indexing.sync import adopt_table_vectors, reembed_table, snapshot
from qpbot_assets.learning.finetune import FineTuneParams, fine_tune_embedder
from qpbot_serving import index as contract
from qpbot_serving import state as st
from qpbot_serving.object_store import cached_file

TRAINING = {"group_name": "training"}
REGISTERED_EMBEDDER = "qpbot-embedder"


class FineTuneConfig(dg.Config):
    # The training defaults live in FineTuneParams (5 epochs: BENCHMARKS.md, learning loop).
    epochs: int = FineTuneParams.epochs
    batch_size: int = FineTuneParams.batch_size
    learning_rate: float = FineTuneParams.learning_rate
    warmup_ratio: float = FineTuneParams.warmup_ratio
    min_pairs: int = 20
    seed: int = FineTuneParams.seed
    shuffle_labels: bool = False  # for demonstrating the gate: trains on mismatched pairs


EMBEDDERS_DIR = f"{st.MODELS_DIR}/embedders"  # under the state root


def read_upstream(index: SearchIndexResource, pointer: st.Pointer[st.R]) -> st.R:
    """The pointer an upstream asset writes; a Failure that says so when it has not run."""
    record = index.state.read(pointer)
    if record is None:
        raise dg.Failure(
            f"{index.state.location(pointer)} is missing: materialize the upstream asset first"
        )
    return record


@dg.asset(**TRAINING, deps=[training_pairs], kinds={"pytorch", "mlflow"})
def fine_tuned_embedder(
    context: dg.AssetExecutionContext,
    config: FineTuneConfig,
    index: SearchIndexResource,
    embedding_model: EmbeddingModelResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The configured embedding model fine-tuned on the current training pairs
    (MultipleNegativesRankingLoss with the hard negatives), registered in MLflow as a new
    version of `qpbot-embedder` with the alias `challenger`. Always starts from the
    configured model, so a version depends only on its pairs and hyperparameters."""
    latest = read_upstream(index, st.TRAINING_PAIRS)
    pairs = pd.read_parquet(cached_file(latest.path, index.cache_dir))
    train_pairs = int((pairs["split"] == "train").sum())
    if train_pairs < config.min_pairs:
        raise dg.Failure(
            f"only {train_pairs} training pairs (version {latest.version}); fine-tuning "
            f"needs at least {config.min_pairs}: collect more judged feedback"
        )
    base = embedding_model.configured_model
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"{contract.model_slug(base)}-ft-{stamp}{'-shuffled' if config.shuffle_labels else ''}"
    key = f"{EMBEDDERS_DIR}/{name}"
    model_uri = index.state.uri(key)  # what the pointers and the index name the model by
    params = FineTuneParams(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        shuffle_labels=config.shuffle_labels,
    )
    import mlflow as mlflow_api

    with mlflow.start_run("qpbot-embedder", run_name=name) as run:
        mlflow_api.log_params(
            {**asdict(params), "base_model": base, "pairs_version": latest.version}
        )
        # Stored when complete; on object storage this worker keeps its copy as a cache.
        with index.state.new_folder(key, index.cache_dir) as output_dir:
            metrics = fine_tune_embedder(base, pairs, output_dir, params)
            mlflow_api.log_metrics({k: v for k, v in metrics.items() if k != "seconds"})
            mlflow_api.log_metric("train_seconds", metrics["seconds"])
            mlflow_api.log_artifacts(str(output_dir), artifact_path="model")
    version = mlflow.register_challenger(
        REGISTERED_EMBEDDER, run.info.run_id, "model", "Fine-tuned embedding models."
    )
    challenger = index.state.write(
        st.CHALLENGER_EMBEDDER,
        st.FineTunedEmbedder(
            model=model_uri,
            base_model=base,
            mlflow_version=version,
            mlflow_run_id=run.info.run_id,
            pairs_version=latest.version,
            trained_at=stamp,
        ),
    )
    return dg.MaterializeResult(
        metadata={
            **metrics,
            "model": dg.MetadataValue.path(model_uri),
            "mlflow_version": challenger.mlflow_version,
            "pairs_version": latest.version,
            "train_pairs": train_pairs,
        }
    )


@dg.asset(**TRAINING, deps=[fine_tuned_embedder, "promoted_index"], kinds={"lancedb"})
def candidate_index(
    context: dg.AssetExecutionContext,
    documents: DocumentStoreResource,
    index: SearchIndexResource,
    embedding_model: EmbeddingModelResource,
) -> dg.MaterializeResult:
    """The promoted index's chunks embedded again with the challenger, in a table of its
    own beside the live one. The service does not see it until the gate passes."""
    challenger = read_upstream(index, st.CHALLENGER_EMBEDDER)
    champion = index.promoted_table()
    if champion is None:
        raise dg.Failure("no promoted index to build a candidate from: ingest documents first")
    embedder = embedding_model.embedder_for(challenger.model)
    table = reembed_table(champion, index.connect(), embedder)
    from qpbot_assets.defs.indexing.assets import index_record  # the record ingestion keeps

    store = documents.store
    adopted = adopt_table_vectors(store, table, lambda d: index_record(store, d))
    documents_in_table = len(
        set(
            table.search()
            .select(["document_id"])
            .limit(None)
            .to_arrow()
            .column("document_id")
            .to_pylist()
        )
    )
    candidate = index.state.write(
        st.INDEX_CANDIDATE,
        st.IndexCandidate(
            snapshot=snapshot(table, documents_in_table),
            embedder=challenger,
            built_from=index.state.read(st.PROMOTED_INDEX).label,
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "candidate": f"{table.name}@v{table.version}",
            "chunks": table.count_rows(),
            "built_from": candidate.built_from,
            "documents_adopted": adopted,
            "embedding_model": challenger.model,
        }
    )


@dg.asset(
    **TRAINING,
    deps=[candidate_index],
    kinds={"lancedb", "mlflow"},
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def promoted_candidate(index: SearchIndexResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Moves the promoted pointer to the candidate index and makes its model the champion
    (for the service, for ingestion and in MLflow). Runs only after the gate passed;
    `qpbot rollback` undoes it."""
    candidate = read_upstream(index, st.INDEX_CANDIDATE)
    promoted = promote_candidate(index.state, candidate.snapshot, candidate.embedder)
    version = candidate.embedder.mlflow_version
    mlflow.client().set_registered_model_alias(REGISTERED_EMBEDDER, "champion", version)
    return dg.MaterializeResult(
        metadata={
            "index_version": promoted.label,
            "embedding_model": candidate.embedder.model,
            "mlflow_version": version,
            "promoted_at": promoted.promoted_at,
        }
    )
