"""The resources of every domain (typed `dg.ConfigurableResource` classes), and the
definitions that configure them from the environment through QpbotSettings."""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import TypeAdapter

from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.indexing.embedding_process import ChildProcessEmbedder, child_embedder
from qpbot_serving import index as search_index
from qpbot_serving.embedding import Embedder, index_embedder, resolve_backend
from qpbot_serving.retrieval import Retriever
from qpbot_serving.settings import QpbotSettings, SqlSource
from qpbot_serving.state import (
    EVALUATION_DIR,
    PROMOTED_INDEX,
    PromotedIndex,
    StateStore,
    serving_embedding_model,
)

if TYPE_CHECKING:
    from qpbot_assets.documents.extraction import DocumentLimits


def _default(setting: str):
    """A resource field's default is the setting's: QpbotSettings is their one home."""
    return QpbotSettings.model_fields[setting].default


def home_paths(
    home: str | Path, storage_url: str | None = None, database_url: str | None = None
) -> QpbotSettings:
    """The settings of `home` (and the storage and database URLs) with no other setting
    read, for the paths they derive (`inbox_dir`, `models_dir`, the state store, ...):
    resources keep only `home`, `storage_url` and `database_url`."""
    return QpbotSettings.model_construct(
        home=Path(home), storage_url=storage_url, database_url=database_url
    )


class StorageResource(dg.ConfigurableResource):
    """Where a domain keeps what it shares: the state store (every pointer and cursor) under
    QPBOT_STORAGE_URL (on object storage) or QPBOT_HOME, and local caches under QPBOT_HOME."""

    home: str
    storage_url: str | None = None  # QpbotSettings.storage_url

    @property
    def state(self) -> StateStore:
        """The pointers (qpbot_serving.state), where the settings keep them."""
        return StateStore.from_settings(home_paths(self.home, self.storage_url))

    @property
    def cache_dir(self) -> Path:
        """Local copies of what lives on object storage (QpbotSettings.cache_dir)."""
        return home_paths(self.home).cache_dir


class DocumentStoreResource(StorageResource):
    """The document store and source settings (blobs and vectors under the storage URL,
    records in QPBOT_DATABASE_URL), and how much one document may hold
    (QPBOT_MAX_DOCUMENT_MB, QPBOT_MAX_UNPACKED_MB, QPBOT_MAX_COMPRESSION_RATIO,
    QPBOT_MAX_CHUNKS_PER_DOCUMENT)."""

    database_url: str | None = None  # QpbotSettings.database_url: the records in PostgreSQL
    pdf_passwords: list[str] = []
    max_document_mb: int = _default("max_document_mb")
    max_unpacked_mb: int = _default("max_unpacked_mb")
    max_compression_ratio: int = _default("max_compression_ratio")
    max_chunks_per_document: int = _default("max_chunks_per_document")

    @property
    def store(self) -> DocumentStore:
        return DocumentStore(home_paths(self.home, self.storage_url, self.database_url))

    @property
    def inbox_url(self) -> str | None:
        """The inbox on S3 (`QpbotSettings.inbox_url`), or None for the local folder."""
        return home_paths(self.home, self.storage_url).inbox_url

    @property
    def inbox_dir(self) -> Path:
        return home_paths(self.home).inbox_dir

    @property
    def max_document_bytes(self) -> int:
        return self.max_document_mb * 1024 * 1024

    @property
    def limits(self) -> "DocumentLimits":
        """What extraction checks; imported here, since the extractors take 0.7 s to import."""
        from qpbot_assets.documents.extraction import DocumentLimits

        return DocumentLimits(
            max_bytes=self.max_document_bytes,
            max_unpacked_bytes=self.max_unpacked_mb * 1024 * 1024,
            max_compression_ratio=self.max_compression_ratio,
        )


class SearchIndexResource(StorageResource):
    """The state store and the LanceDB database: under QPBOT_HOME, or under
    QPBOT_STORAGE_URL on object storage."""

    @property
    def models_dir(self) -> Path:
        """Fine-tuned embedders, LoRA adapters and the local generator's model cache."""
        return home_paths(self.home).models_dir

    def connect(self):
        return search_index.connect(self.state)

    def promoted_table(self):
        """The table and version the service reads, or None before the first promotion."""
        promoted = self.state.read(PROMOTED_INDEX)
        if promoted is None:
            return None
        table = self.connect().open_table(promoted.table)
        table.checkout(promoted.version)
        return table

    def chunk_texts(self, chunk_ids: list[str]) -> dict[str, str]:
        """chunk_id -> text, from the promoted index (chunks no longer there are left out)."""
        from lancedb.expr import col

        table = self.promoted_table()
        if table is None or not chunk_ids:
            return {}
        texts: dict[str, str] = {}
        for start in range(0, len(chunk_ids), 1000):
            batch = chunk_ids[start : start + 1000]
            rows = (
                table.search()
                .where(col("chunk_id").isin(batch))
                .select(["chunk_id", "text"])
                .limit(None)
                .to_list()
            )
            texts.update({row["chunk_id"]: row["text"] for row in rows})
        return texts


class EmbeddingModelResource(StorageResource):
    """The embedding model new chunks get: the configured one, or its promoted fine-tune
    (see `serving_embedding_model`). It runs in a child process of this one (see
    `embedding_process`), started when a stage first needs it, or by `qpbot ingest` before
    its run, and kept for later runs in this process."""

    configured_model: str
    backend: str  # QpbotSettings.embedding_backend, resolved (`embedding.resolve_backend`)
    exports_dir: str  # QpbotSettings.embedding_exports_dir
    batch_size: int = 32

    @classmethod
    def from_settings(cls, settings: QpbotSettings) -> "EmbeddingModelResource":
        return cls(
            configured_model=settings.embedding_model,
            home=str(settings.home),
            storage_url=settings.storage_url,
            backend=resolve_backend(settings.embedding_backend),
            exports_dir=str(settings.embedding_exports_dir),
        )

    @property
    def embedder(self) -> ChildProcessEmbedder:
        return child_embedder(self.model_name, self.backend, Path(self.exports_dir), self.cache_dir)

    def embedder_for(self, model_name: str) -> Embedder:
        """An embedder of another model (a challenger) in this process, with this backend."""
        return Embedder(
            model_name,
            backend=self.backend,
            cache_dir=Path(self.exports_dir),
            model_cache=self.cache_dir,
        )

    def index_embedder(self, promoted: PromotedIndex) -> Embedder:
        """An embedder (in this process) of the vectors of `promoted`'s index, with this
        backend where it makes them."""
        return index_embedder(
            promoted.embedding_model,
            promoted.embedding_backend,
            self.backend,
            Path(self.exports_dir),
            self.cache_dir,
        )

    def retriever(self, pointer: PromotedIndex | None = None) -> Retriever:
        """A retriever of the promoted index (or of `pointer`'s table and version) whose
        queries are embedded with this backend where the index's vectors allow it. Raises
        IndexNotReady before the first promotion."""
        options = {
            "backend": self.backend,
            "exports_dir": Path(self.exports_dir),
            "cache_dir": self.cache_dir,  # the table and a stored model, on object storage
        }
        if pointer is None:
            return Retriever.open(self.state, **options)
        return Retriever.at(self.state, pointer, **options)

    @property
    def model_name(self) -> str:
        return serving_embedding_model(self.state, self.configured_model)


class S3SourceResource(dg.ConfigurableResource):
    """The bucket and prefix the S3 source sensor watches; no bucket means the source is off."""

    bucket: str | None = None
    prefix: str = ""


class SqlSourcesResource(dg.ConfigurableResource):
    """The tables the SQL source sensor watches: QPBOT_SQL_SOURCES, a JSON list of SqlSource.
    It comes in as the variable's text through dg.EnvVar, so the URLs (and passwords) in it
    never show in the Dagster UI; no tables means the source is off."""

    sources_json: str = "[]"

    @property
    def sources(self) -> list[SqlSource]:
        return TypeAdapter(list[SqlSource]).validate_json(self.sources_json)


class FeedbackDatabaseResource(StorageResource):
    """The database the answer service logs answers and feedback to, and the state store
    where the feedback assets keep their copies (events, metrics, training pairs) under
    `feedback/`: QPBOT_STORAGE_URL, else QPBOT_HOME."""

    database_url: str  # QpbotSettings.feedback_database_url

    def engine(self):
        from qpbot_serving.answer_log import engine_for

        return engine_for(self.database_url)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and the model registry. The tracking database is `tracking_uri`
    (QPBOT_MLFLOW_TRACKING_URI); artifacts of new experiments go to `<storage_url>/mlflow/`
    with a storage URL (MLflow's S3 client is boto3's, with the same AWS_* variables as the
    state store), else under `artifacts_dir`."""

    tracking_uri: str
    artifacts_dir: str
    storage_url: str | None = None  # QpbotSettings.storage_url

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.storage_url:
            _mlflow_s3_endpoint(StateStore(self.storage_url).storage_options["endpoint"])

    def start_run(self, experiment: str, run_name: str | None = None):
        """An active MLflow run in `experiment` (created on first use); use as a context."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        found = mlflow.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else mlflow.create_experiment(experiment, artifact_location=self.location(experiment))
        )
        return mlflow.start_run(experiment_id=experiment_id, run_name=run_name)

    def location(self, experiment: str) -> str:
        """Where a new experiment's run artifacts go."""
        if self.storage_url:
            return f"{self.storage_url.rstrip('/')}/mlflow/{experiment}"
        return (Path(self.artifacts_dir) / experiment).as_uri()

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register_challenger(
        self,
        name: str,
        run_id: str,
        artifact_path: str,
        description: str = "",
        tags: dict[str, str] | None = None,
    ) -> str:
        """Registers a folder the run logged as artifacts (plain model files, not an MLflow
        flavor, so by source) as a new version of model `name`, created with `description`
        on first use, and gives it the alias `challenger`. Returns the version number."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description=description)
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        client.set_registered_model_alias(name, "challenger", version.version)
        return str(version.version)


_MLFLOW_ENDPOINT_SET: list[str] = []  # the MLFLOW_S3_ENDPOINT_URL this process set, if any


def _mlflow_s3_endpoint(endpoint: str) -> None:
    """Sets MLFLOW_S3_ENDPOINT_URL to the state store's endpoint (boto3's: AWS_ENDPOINT_URL,
    or AWS's own), unless someone else set it. Without it MLflow's client would find the same
    endpoint through boto3, but MLflow keeps its S3 clients by MLFLOW_S3_ENDPOINT_URL, so
    one made for another endpoint earlier in this process would be used again."""
    current = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if current is None or current in _MLFLOW_ENDPOINT_SET:
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint
        _MLFLOW_ENDPOINT_SET[:] = [endpoint]


class BeirSetConfig(dg.Config):
    """A BEIR-format retrieval set: its name, queries .jsonl and qrels .tsv."""

    name: str
    queries: str
    qrels: str


class EvaluationResource(StorageResource):
    """The configured evaluation sets and where their reports (plots, answers) go:
    `evaluation/` of the state store."""

    beir_sets: list[BeirSetConfig] = []
    qa_sets: list[str] = []

    def save(self, name: str, data: bytes) -> str:
        """Stores the report file `name` whole (replacing it); returns where it is: a path,
        or its s3:// URI."""
        return self.state.put_file(f"{EVALUATION_DIR}/{name}", data)


class AnswerGeneratorResource(dg.ConfigurableResource):
    """The answer generator and answer policy the service uses (QPBOT_GENERATOR*,
    QPBOT_ANSWER_*), for the answer evaluation."""

    home: str
    storage_url: str | None = None  # where the promoted adapter's pointer lives
    kind: str = _default("generator")
    model: str = _default("generator_model")
    url: str | None = None
    api_key: str | None = None
    timeout_s: float = _default("generator_timeout_s")
    answer_mode: str = _default("answer_mode")
    evidence_chunks: int = _default("answer_evidence_chunks")
    context_tokens: int = _default("answer_context_tokens")
    min_evidence_score: float = _default("answer_min_evidence_score")
    min_quote_score: float = _default("answer_min_quote_score")
    max_new_tokens: int = _default("answer_max_new_tokens")
    deadline_s: float = _default("answer_deadline_s")

    def build(self):
        """A new generator (the local one loads its model on first use)."""
        from qpbot_serving.generation import build_generator

        return build_generator(self._settings())

    def policy(self):
        """The answer policy (modes, evidence budget, deadline) the service runs with."""
        from qpbot_serving.answering import AnswerPolicy

        return AnswerPolicy.from_settings(self._settings())

    def _settings(self) -> QpbotSettings:
        return QpbotSettings(
            home=Path(self.home),
            storage_url=self.storage_url,
            generator=self.kind,
            generator_model=self.model,
            generator_url=self.url,
            generator_api_key=self.api_key,
            generator_timeout_s=self.timeout_s,
            answer_mode=self.answer_mode,
            answer_evidence_chunks=self.evidence_chunks,
            answer_context_tokens=self.context_tokens,
            answer_min_evidence_score=self.min_evidence_score,
            answer_min_quote_score=self.min_quote_score,
            answer_max_new_tokens=self.max_new_tokens,
            answer_deadline_s=self.deadline_s,
        )


class RetrainingPolicyResource(dg.ConfigurableResource):
    """When feedback or drift starts retraining (QPBOT_FEEDBACK_WINDOW,
    QPBOT_FEEDBACK_MIN_UP_RATE, QPBOT_RETRAIN_MIN_NEW_PAIRS, QPBOT_DRIFT_THRESHOLD)."""

    feedback_window: int = _default("feedback_window")
    feedback_min_up_rate: float = _default("feedback_min_up_rate")
    retrain_min_new_pairs: int = _default("retrain_min_new_pairs")
    drift_threshold: float = _default("drift_threshold")

    @property
    def feedback_policy(self):
        from qpbot_assets.learning.signals import FeedbackPolicy

        return FeedbackPolicy(
            self.feedback_window, self.feedback_min_up_rate, self.retrain_min_new_pairs
        )


@dg.definitions
def resources() -> dg.Definitions:
    settings = QpbotSettings()
    home = str(settings.home)
    return dg.Definitions(
        resources={
            "documents": DocumentStoreResource(
                home=home,
                storage_url=settings.storage_url,
                database_url=settings.database_url,
                pdf_passwords=settings.pdf_passwords,
                max_document_mb=settings.max_document_mb,
                max_unpacked_mb=settings.max_unpacked_mb,
                max_compression_ratio=settings.max_compression_ratio,
                max_chunks_per_document=settings.max_chunks_per_document,
            ),
            "index": SearchIndexResource(home=home, storage_url=settings.storage_url),
            "embedding_model": EmbeddingModelResource.from_settings(settings),
            # Credentials come from the standard AWS environment variables.
            "s3": S3Resource(endpoint_url=settings.s3_endpoint_url),
            "s3_source": S3SourceResource(bucket=settings.s3_bucket, prefix=settings.s3_prefix),
            # Read by the sensor from the variable itself: its URLs may hold passwords.
            "sql_sources": SqlSourcesResource(
                sources_json=dg.EnvVar("QPBOT_SQL_SOURCES") if settings.sql_sources else "[]"
            ),
            "feedback_db": FeedbackDatabaseResource(
                database_url=settings.feedback_database_url,
                home=home,
                storage_url=settings.storage_url,
            ),
            "retraining": RetrainingPolicyResource(
                feedback_window=settings.feedback_window,
                feedback_min_up_rate=settings.feedback_min_up_rate,
                retrain_min_new_pairs=settings.retrain_min_new_pairs,
                drift_threshold=settings.drift_threshold,
            ),
            "mlflow": MlflowResource(
                tracking_uri=settings.tracking_uri,
                artifacts_dir=str(settings.mlflow_artifacts_dir),
                storage_url=settings.storage_url,
            ),
            "evaluation": EvaluationResource(
                home=str(settings.home),
                storage_url=settings.storage_url,
                beir_sets=[
                    BeirSetConfig(name=s.name, queries=str(s.queries), qrels=str(s.qrels))
                    for s in settings.eval_beir_sets
                ],
                qa_sets=[str(path) for path in settings.eval_qa_sets],
            ),
            "answer_generator": AnswerGeneratorResource(
                home=home,
                storage_url=settings.storage_url,
                kind=settings.generator,
                model=settings.generator_model,
                url=settings.generator_url,
                api_key=dg.EnvVar("QPBOT_GENERATOR_API_KEY")
                if settings.generator_api_key
                else None,
                timeout_s=settings.generator_timeout_s,
                answer_mode=settings.answer_mode,
                evidence_chunks=settings.answer_evidence_chunks,
                context_tokens=settings.answer_context_tokens,
                min_evidence_score=settings.answer_min_evidence_score,
                min_quote_score=settings.answer_min_quote_score,
                max_new_tokens=settings.answer_max_new_tokens,
                deadline_s=settings.answer_deadline_s,
            ),
        }
    )
