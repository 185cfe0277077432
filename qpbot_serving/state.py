"""Every pointer and cursor that passes between domains, in one module.

A pointer is a small JSON record at a fixed key under the state root (`QPBOT_HOME`): which
index version the service reads, which embedder ingestion uses, which LoRA adapter the
generator applies, where a cursor stands. Each has a record type (below) and exactly one
writing module (`Pointer.writer`, held to by tests/test_state.py); every reader, on either
side, goes through `StateStore.read`, and no other module opens a pointer's file.

Writes are atomic: the record goes to a temporary file that is flushed and renamed over the
old one, so a reader sees the old record or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class StateError(ValueError):
    """A pointer's file holds something that is not its record (edited by hand, or torn by
    a copy that did not rename)."""


class Record(BaseModel):
    """A pointer's content. Unknown fields are ignored, so an older release reads a record
    a newer one wrote."""

    model_config = ConfigDict(frozen=True, extra="ignore")


R = TypeVar("R", bound=Record)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# The layout of a home: QpbotSettings' paths and the pointers' keys are made from these.
INDEX_DIR = "index"  # LanceDB and the index's pointers
MODELS_DIR = "models"  # fine-tuned embedders, LoRA adapters, ONNX exports
FEEDBACK_DIR = "feedback"  # copies of the answer log, metrics, training pairs
MONITORING_DIR = "monitoring"  # drift reports, the platform's figures


# --- the records --------------------------------------------------------------------------


class IndexSnapshot(Record):
    """A LanceDB table at a fixed version, and how its vectors were made."""

    table: str
    version: int
    embedding_model: str
    dimension: int
    chunks: int
    documents: int
    embedding_backend: str = "torch"  # written before backends existed: torch

    @property
    def label(self) -> str:
        return f"{self.table}@v{self.version}"


class PromotedIndex(IndexSnapshot):
    """What the service serves: a checked snapshot, and when it was promoted."""

    promoted_at: str

    @property
    def snapshot(self) -> IndexSnapshot:
        return IndexSnapshot(**self.model_dump(exclude={"promoted_at"}))


class FineTunedEmbedder(Record):
    """A fine-tune of the configured embedding model, registered in MLflow."""

    model: str  # its folder
    base_model: str  # the configured model it was trained from
    mlflow_version: str
    mlflow_run_id: str | None = None
    pairs_version: str | None = None
    trained_at: str | None = None


class IndexCandidate(Record):
    """The challenger's index, built beside the promoted one for the gate to judge."""

    snapshot: IndexSnapshot
    embedder: FineTunedEmbedder
    built_from: str  # the promoted index's label it re-embedded


class Promotion(Record):
    """One promotion of a fine-tuned embedder, with what it replaced (for a rollback)."""

    promoted_at: str
    embedder: FineTunedEmbedder
    snapshot: IndexSnapshot
    previous_embedder: FineTunedEmbedder | None
    previous_pointer: PromotedIndex | None


class TrainingPairsVersion(Record):
    """The current training pairs: a Parquet file versioned by its content."""

    version: str
    path: str
    pairs: int
    train_pairs: int
    validation_pairs: int
    queries: int
    with_hard_negative: int
    new_pairs: int
    previous_version: str | None = None


class AdapterCandidate(Record):
    """The LoRA adapter the gate judges; `version` is None when none was trained (`reason`)."""

    version: str | None
    reason: str | None = None
    base_model: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    run_id: str | None = None
    champion: str | None = None  # the promoted adapter it was compared with
    report: dict[str, Any] | None = None  # learning.lora.LoraReport's fields


class PromotedAdapter(Record):
    """The adapter the local generator applies to `base_model`."""

    version: str  # its folder under models/adapters/
    base_model: str
    registered_model: str
    registered_version: str
    run_id: str
    validation_loss: float | None = None
    promoted_at: str


class DriftWindow(Record):
    reference_until: str | None = None  # ISO time (UTC); None: no report computed drift yet


class DriftWindows(Record):
    """Where each side's reference window ends (monitoring's `split_windows`)."""

    documents: DriftWindow = DriftWindow()
    queries: DriftWindow = DriftWindow()


class CorpusMarker(Record):
    """Which BEIR corpus (a digest of its file and the vectors) the promoted index holds."""

    digest: str
    index: str  # the PromotedIndex label it was built as


class PlatformMetrics(Record):
    """The asset graph's figures for the service's /metrics (qpbot_serving.metrics):
    runs per job and status, documents through ingestion, the latest ingestion run, live
    and quarantined documents, the latest drift per side, gate verdicts, feedback rate."""

    written_at: float = 0.0
    runs_seen_until: str | None = None
    runs: dict[str, dict[str, int]] = {}
    ingested_documents: int = 0
    quarantined_documents: int = 0
    last_ingest: dict[str, Any] | None = None
    documents: dict[str, Any] = {}
    drift: dict[str, dict[str, Any]] = {}
    gates: dict[str, dict[str, Any]] = {}
    feedback: dict[str, Any] = {}


# --- the pointers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pointer(Generic[R]):
    key: str  # its path under the state root
    record: type[R]
    writer: str  # the one module that writes it


@dataclass(frozen=True)
class Log(Generic[R]):
    """An append-only history of records (JSON lines)."""

    key: str
    record: type[R]
    writer: str


PROMOTED_INDEX = Pointer(
    f"{INDEX_DIR}/PROMOTED.json", PromotedIndex, "qpbot_assets.indexing.promotion"
)
# The version search_index last wrote, for the checks; absent while it writes.
INDEX_SNAPSHOT = Pointer(
    f"{INDEX_DIR}/SNAPSHOT.json", IndexSnapshot, "qpbot_assets.defs.indexing.assets"
)
# The promoted fine-tune of the configured embedding model: what new chunks are embedded with.
CHAMPION_EMBEDDER = Pointer(
    f"{INDEX_DIR}/EMBEDDER.json", FineTunedEmbedder, "qpbot_assets.indexing.promotion"
)
PROMOTIONS = Log(f"{INDEX_DIR}/PROMOTIONS.jsonl", Promotion, "qpbot_assets.indexing.promotion")
INDEX_CANDIDATE = Pointer(
    f"{INDEX_DIR}/CANDIDATE.json", IndexCandidate, "qpbot_assets.defs.training.assets"
)
CORPUS_MARKER = Pointer(
    f"{INDEX_DIR}/BEIR_CORPUS.json", CorpusMarker, "qpbot_assets.evaluation.beir"
)
CHALLENGER_EMBEDDER = Pointer(
    f"{MODELS_DIR}/embedders/CHALLENGER.json",
    FineTunedEmbedder,
    "qpbot_assets.defs.training.assets",
)
ADAPTER_CANDIDATE = Pointer(
    f"{MODELS_DIR}/adapters/CANDIDATE.json", AdapterCandidate, "qpbot_assets.defs.generation.assets"
)
PROMOTED_ADAPTER = Pointer(
    f"{MODELS_DIR}/adapters/PROMOTED.json", PromotedAdapter, "qpbot_assets.defs.generation.assets"
)
TRAINING_PAIRS = Pointer(
    f"{FEEDBACK_DIR}/training_pairs/LATEST.json",
    TrainingPairsVersion,
    "qpbot_assets.defs.feedback.assets",
)
DRIFT_WINDOWS = Pointer(
    f"{MONITORING_DIR}/drift/windows.json", DriftWindows, "qpbot_assets.defs.monitoring.assets"
)
PLATFORM_METRICS = Pointer(
    f"{MONITORING_DIR}/platform_metrics.json",
    PlatformMetrics,
    "qpbot_assets.defs.monitoring.sensors",
)

POINTERS: tuple[Pointer | Log, ...] = (
    PROMOTED_INDEX,
    INDEX_SNAPSHOT,
    CHAMPION_EMBEDDER,
    PROMOTIONS,
    INDEX_CANDIDATE,
    CORPUS_MARKER,
    CHALLENGER_EMBEDDER,
    ADAPTER_CANDIDATE,
    PROMOTED_ADAPTER,
    TRAINING_PAIRS,
    DRIFT_WINDOWS,
    PLATFORM_METRICS,
)


# --- the store ----------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes `data` as JSON to a temporary file beside `path`, flushes it to disk and
    renames it over `path`: readers never see half a file, a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=2)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


class StateStore:
    """The pointers of one QPBOT_HOME."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def index_dir(self) -> Path:
        return self.root / INDEX_DIR

    def path(self, pointer: Pointer | Log) -> Path:
        """Where a pointer lives (for messages; read and write through the store)."""
        return self.root / pointer.key

    def read(self, pointer: Pointer[R]) -> R | None:
        """The pointer's record, or None when it was never written (or was cleared).
        Raises StateError when its file holds something else."""
        path = self.path(pointer)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return pointer.record.model_validate_json(raw)
        except ValidationError as problem:
            raise StateError(
                f"{path} is not a {pointer.record.__name__} record ({problem.error_count()} "
                f"problems, first: {problem.errors()[0]['msg']}): restore it or delete it"
            ) from None

    def write(self, pointer: Pointer[R], record: R) -> R:
        if not isinstance(record, pointer.record):
            raise TypeError(f"{pointer.key} holds {pointer.record.__name__}, not {record!r}")
        write_json_atomic(self.path(pointer), record.model_dump(mode="json"))
        return record

    def clear(self, pointer: Pointer) -> None:
        self.path(pointer).unlink(missing_ok=True)

    def entries(self, log: Log[R]) -> list[R]:
        path = self.path(log)
        if not path.is_file():
            return []
        return [log.record.model_validate_json(line) for line in path.read_text().splitlines()]

    def append(self, log: Log[R], record: R) -> None:
        self.rewrite(log, [*self.entries(log), record])

    def rewrite(self, log: Log[R], records: list[R]) -> None:
        """Replaces the whole history at once (atomically, like a pointer)."""
        path = self.path(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            tmp.writelines(record.model_dump_json() + "\n" for record in records)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)


def serving_embedding_model(state: StateStore, configured_model: str) -> str:
    """The model new chunks are embedded with: the promoted fine-tune of the configured
    model, if one was promoted, else the configured model itself (so changing the configured
    model starts over from it)."""
    champion = state.read(CHAMPION_EMBEDDER)
    if champion is not None and champion.base_model == configured_model:
        return champion.model
    return configured_model
