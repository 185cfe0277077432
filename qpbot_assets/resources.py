"""Resources shared by the asset graph; built from QpbotSettings in defs/resources.py."""

from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from qpbot_assets.documents.store import DocumentStore
from qpbot_serving import index as search_index
from qpbot_serving.embedding import Embedder


class DocumentStoreResource(dg.ConfigurableResource):
    """The document store and source settings under QPBOT_HOME."""

    home: str
    pdf_passwords: list[str] = []
    max_document_mb: int = 200

    @property
    def store(self) -> DocumentStore:
        return DocumentStore(Path(self.home))

    @property
    def inbox_dir(self) -> Path:
        return Path(self.home) / "inbox"

    @property
    def max_document_bytes(self) -> int:
        return self.max_document_mb * 1024 * 1024


class SearchIndexResource(dg.ConfigurableResource):
    """The LanceDB database and the promoted-index pointer."""

    home: str

    @property
    def index_dir(self) -> Path:
        return Path(self.home) / "index"

    def connect(self):
        return search_index.connect(self.index_dir)


class EmbeddingModelResource(dg.ConfigurableResource):
    """The embedding model, loaded at most once per run and only when a stage needs it."""

    model_name: str
    batch_size: int = 32

    _embedder: Embedder | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._embedder = Embedder(self.model_name)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # used outside a run (tests, scripts)
            self._embedder = Embedder(self.model_name)
        return self._embedder


class S3SourceResource(dg.ConfigurableResource):
    """The bucket and prefix the S3 source sensor watches; no bucket means the source is off."""

    bucket: str | None = None
    prefix: str = ""


class FeedbackDatabaseResource(dg.ConfigurableResource):
    """The database the answer service logs answers and feedback to, and the folder where the
    feedback assets keep their copies (events, metrics, training pairs)."""

    database_url: str
    feedback_dir: str

    def engine(self):
        from qpbot_serving.answer_log import engine_for

        return engine_for(self.database_url)

    @property
    def folder(self) -> Path:
        return Path(self.feedback_dir)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and the model registry; artifacts stay under QPBOT_HOME."""

    tracking_uri: str
    artifacts_dir: str

    def start_run(self, experiment: str, run_name: str | None = None):
        """An active MLflow run in `experiment` (created on first use); use as a context."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        found = mlflow.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else mlflow.create_experiment(
                experiment, artifact_location=(Path(self.artifacts_dir) / experiment).as_uri()
            )
        )
        return mlflow.start_run(experiment_id=experiment_id, run_name=run_name)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
