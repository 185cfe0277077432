"""Every pointer and cursor that passes between domains, in one module.

A pointer is a small JSON record at a fixed key under the state root: which index version
the service reads, which embedder ingestion uses, which LoRA adapter the generator applies,
where a cursor stands. Each has a record type (below) and exactly one writing module
(`Pointer.writer`, held to by tests/test_state.py); every reader, on either side, goes
through `StateStore.read`, and no other module opens a pointer's file.

The state root is QPBOT_STORAGE_URL (`s3://bucket/prefix`, any S3-compatible server) or,
by default, QPBOT_HOME on local disk; the LanceDB tables live under it too
(`StateStore.index_uri`). `StateStore.from_settings` is the one place that decides. The
artifacts that pointers name (fine-tuned models, LoRA adapters, training pairs, drift and
evaluation reports) live under it too: written with `StateStore.new_folder` / `put_file`,
named by `StateStore.uri`, and read through `object_store.cached_folder` (or `cached_file`),
which copies a stored folder (or file) once into a machine's cache. Files that are
rewritten in place (the feedback copies) are read whole with `StateStore.get_file`.

Writes are atomic: a reader sees the old record or the new one, never half of either (a
local file is written beside and renamed over; an S3 PUT replaces the object whole). A
writer that must not lose a concurrent update writes conditionally (`read_versioned`, then
`write(..., expected=version)`: If-Match / If-None-Match on S3, a compare under an flock
locally); promotions hold a `lease` built on those conditional writes. The two storage
backends live in `qpbot_serving.object_store`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from qpbot_serving.object_store import (
    LocalObjects,
    S3Objects,
    StateConflict,
    Version,
    copy_path,
    objects_at,
)


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
LANCEDB_DIR = "lancedb"  # under INDEX_DIR: the LanceDB database
MODELS_DIR = "models"  # fine-tuned embedders, LoRA adapters, ONNX exports
FEEDBACK_DIR = "feedback"  # copies of the answer log, metrics, training pairs
MONITORING_DIR = "monitoring"  # drift reports, the platform's figures
EVALUATION_DIR = "evaluation"  # the evaluation assets' reports (plots, answers)
CACHE_DIR = "cache"  # under QPBOT_HOME: local copies of what lives on object storage
LISTINGS_DIR = "listings"  # the source sensors' listings (see SourceListings)


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

    model: str  # its folder: a path, or its s3:// URI (`StateStore.uri`, `cached_folder`)
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


class Deployment(Record):
    """What `qpbot gate` judged would be served: the code, the embedder, the index, the
    prompt, the answers."""

    code: str | None  # git commit, "+dirty" when the checkout has uncommitted changes
    embedding_model: str
    index: str  # table@version
    documents: int
    chunks: int
    prompt_version: str
    prompt_sha256: str  # of the prompt's wording and layout
    answer_mode: str
    generator: str | None  # None when answers are quoted (no model is called)
    answer_policy: dict[str, Any] = {}
    embedding_backend: str | None = None  # torch, onnx, onnx-int8


class EvaluationRecord(Record):
    """How one deployment scored, item by item: {metric: {"set/item": score}}, with the
    questions' texts to name regressions. Keyed by evaluation set and question id (a hash of
    the question's text), never by paths or document ids of one machine, so a record made on
    one machine can judge a candidate built on another (CI)."""

    recorded_at: str
    deployment: Deployment
    scores: dict[str, dict[str, float]]
    questions: dict[str, str]  # "set/item" -> the question's text
    sets: dict[str, list[str]]  # {"retrieval": [set names], "answers": [set names]}
    format: Literal[1] = 1  # another format's scores would not compare: refused


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

# What is deployed now and how it scored: `qpbot gate` compares a candidate with it, and
# `--accept` writes the candidate's record here (unless QPBOT_GATE_CHAMPION names a file).
CHAMPION_SCORES = Pointer(
    f"{INDEX_DIR}/CHAMPION_SCORES.json",
    EvaluationRecord,
    "qpbot_assets.evaluation.deployment_gate",
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
    CHAMPION_SCORES,
)


# --- the source sensors' listings ---------------------------------------------------------
class SourceListings:
    """A source sensor's last listing, {uri: version}, kept as an object named by its content
    (`listings/<sensor>/<digest>.json.gz`, written by qpbot_assets.defs.ingestion.sensors);
    the sensor's Dagster cursor only names it. Dagster keeps a sensor's cursor with every
    tick that changes it, and a listing of a million files is about 80 MB of JSON.

    A tick reads the listing its cursor names and, when the source changed, writes the new
    one; a tick that fails leaves its cursor, so the listing it names must stay: the cursor
    also names the listing before, and only the one before that is deleted."""

    def __init__(self, state: StateStore, sensor: str):
        self.state = state
        self.sensor = sensor

    def read(self, cursor: str | None) -> dict[str, str]:
        """The listing `cursor` names (a cursor of before listings were objects holds the
        listing itself)."""
        named = json.loads(cursor) if cursor else {}
        if "listing" not in named:
            return named
        data = self.state.get_file(self._key(named["listing"]))
        if data is None:
            raise StateError(
                f"the listing {self._key(named['listing'])} that the {self.sensor} sensor's "
                "cursor names is missing; reset the sensor's cursor in the Dagster UI to "
                "list the source anew"
            )
        return json.loads(gzip.decompress(data))

    def write(self, listing: dict[str, str], cursor: str | None) -> str:
        """Stores `listing`; returns the cursor that names it."""
        data = gzip.compress(json.dumps(listing, sort_keys=True).encode(), mtime=0)
        digest = hashlib.sha256(data).hexdigest()[:24]
        if not self.state.has_file(self._key(digest)):
            self.state.put_file(self._key(digest), data)
        named = json.loads(cursor) if cursor else {}
        previous = named.get("listing") if "listing" in named else None
        stale = named.get("before")
        if stale and stale not in (previous, digest):
            self.state.delete_file(self._key(stale))
        return json.dumps({"listing": digest, "before": previous})

    def _key(self, digest: str) -> str:
        return f"{LISTINGS_DIR}/{self.sensor}/{digest}.json.gz"


# --- the store ----------------------------------------------------------------------------


class Lease(Record):
    """Who holds a lease, and until when (a crashed holder's lease expires)."""

    owner: str
    expires_at: float  # time.time()


# Promotions read and write PROMOTED_INDEX, CHAMPION_EMBEDDER and PROMOTIONS together.
PROMOTION_LEASE = f"{INDEX_DIR}/PROMOTION.lease"


class StateStore:
    """The pointers under one state root: a local folder (QPBOT_HOME) or `s3://bucket/prefix`."""

    def __init__(self, root: Path | str):
        self._objects: LocalObjects | S3Objects = objects_at(root)

    @classmethod
    def from_settings(cls, settings) -> StateStore:
        """The store of `settings` (a QpbotSettings): QPBOT_STORAGE_URL, else QPBOT_HOME."""
        return cls(settings.storage_url or settings.home)

    @property
    def url(self) -> str:
        """The state root: a folder's path or `s3://bucket/prefix`."""
        return self._objects.url

    @property
    def index_uri(self) -> str:
        """Where the LanceDB database lives (`qpbot_serving.index.connect` opens it)."""
        return f"{self.url}/{INDEX_DIR}/{LANCEDB_DIR}"

    @property
    def storage_options(self) -> dict[str, str]:
        """LanceDB's storage options for `index_uri` (none on local disk)."""
        return {} if self.is_local else self._objects.storage_options()

    @property
    def is_local(self) -> bool:
        return isinstance(self._objects, LocalObjects)

    def cached_index_table(self, table: str, cache_root: Path) -> StateStore:
        """A local store under `cache_root` whose index holds a copy of `table` of this
        object-storage store, for searches that read local disk. Kept up to date by
        downloading only the files it lacks: Lance never rewrites a file, so one of the same
        name and size is the same (and those gone from the table are removed)."""
        if self.is_local:
            raise ValueError(f"{self.url} is on local disk: open its index where it is")
        cache = StateStore(cache_root)
        key = f"{INDEX_DIR}/{LANCEDB_DIR}/{table}.lance"
        self._objects.mirror(key, cache_root / key)
        return cache

    def location(self, pointer: Pointer | Log) -> str:
        """Where a pointer lives, for messages (read and write through the store)."""
        return f"{self.url}/{pointer.key}"

    # --- artifacts: folders and files beside the pointers (models, adapters, reports) ---
    # A stored folder is never changed: it gets a new key instead (a model's name holds its
    # time), so a local copy of it, once complete, stays right (`cached_folder`).

    def uri(self, key: str) -> str:
        """Where the artifact `key` lives: a path under QPBOT_HOME, or its s3:// URI; what
        records and Dagster metadata name it by, and what `cached_folder` reads."""
        return f"{self.url}/{key}"

    @contextmanager
    def new_folder(self, key: str, cache_root: Path | None = None) -> Iterator[Path]:
        """Yields an empty local folder to write an artifact's files into; when the block
        ends without an error they are stored as the folder `key` (at `uri(key)`), else
        dropped (as is an empty folder). On local disk the folder is renamed into place. On
        object storage its files are uploaded; with `cache_root` (QpbotSettings.cache_dir)
        the folder is then kept as the local copy that `cached_folder` would make, so this
        machine never downloads it."""
        if self.is_local:
            final: Path | None = self._objects.root / key
        else:
            final = copy_path(self.uri(key), cache_root) if cache_root else None
        if final is not None:
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
            partial.mkdir()
        else:
            partial = Path(tempfile.mkdtemp(prefix="qpbot-artifact-"))
        try:
            yield partial
            if any(partial.iterdir()):  # an empty folder stores nothing
                if not self.is_local:
                    self._objects.upload_folder(key, partial)
                if final is not None:
                    os.rename(partial, final)  # fails on a folder already there: keys are new
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def put_file(self, key: str, data: bytes) -> str:
        """Stores `data` whole as the artifact `key` (replacing it); returns its `uri`."""
        self._objects.put(key, data, None)
        return self.uri(key)

    def get_file(self, key: str) -> bytes | None:
        """The artifact file `key` as `put_file` stored it, or None when there is none."""
        found = self._objects.get(key)
        return found[0] if found else None

    def has_file(self, key: str) -> bool:
        return self._objects.exists(key)

    def delete_file(self, key: str) -> None:
        self._objects.delete(key)

    def folders(self, key: str) -> list[str]:
        """The names of the stored folders directly under `key`, sorted."""
        if self.is_local:
            folder = self._objects.root / key
            if not folder.is_dir():
                return []
            # Not the hidden ones: folders `new_folder` is still writing.
            return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")
        return sorted(self._objects.folders(key))

    def remove_folder(self, key: str) -> None:
        """Removes the stored folder `key` and everything in it."""
        self._objects.remove_folder(key)

    def read(self, pointer: Pointer[R]) -> R | None:
        """The pointer's record, or None when it was never written (or was cleared).
        Raises StateError when it holds something else."""
        return self.read_versioned(pointer)[0]

    def read_versioned(self, pointer: Pointer[R]) -> tuple[R | None, Version]:
        """The record (as `read`) and its version, for a conditional `write`."""
        found = self._objects.get(pointer.key)
        if found is None:
            return None, Version(None)
        raw, tag = found
        try:
            return pointer.record.model_validate_json(raw), Version(tag)
        except ValidationError as problem:
            raise StateError(
                f"{self.location(pointer)} is not a {pointer.record.__name__} record "
                f"({problem.error_count()} problems, first: {problem.errors()[0]['msg']}): "
                "restore it or delete it"
            ) from None

    def write(self, pointer: Pointer[R], record: R, expected: Version | None = None) -> R:
        """Writes `record` whole. With `expected` (from `read_versioned`), only if the
        pointer is still that version: else raises StateConflict and writes nothing."""
        if not isinstance(record, pointer.record):
            raise TypeError(f"{pointer.key} holds {pointer.record.__name__}, not {record!r}")
        data = json.dumps(record.model_dump(mode="json"), indent=2).encode()
        self._objects.put(pointer.key, data, expected)
        return record

    def clear(self, pointer: Pointer) -> None:
        self._objects.delete(pointer.key)

    def entries(self, log: Log[R]) -> list[R]:
        found = self._objects.get(log.key)
        if found is None:
            return []
        return [log.record.model_validate_json(line) for line in found[0].decode().splitlines()]

    def append(self, log: Log[R], record: R) -> None:
        self.rewrite(log, [*self.entries(log), record])

    def rewrite(self, log: Log[R], records: list[R]) -> None:
        """Replaces the whole history at once (atomically, like a pointer)."""
        data = "".join(record.model_dump_json() + "\n" for record in records).encode()
        self._objects.put(log.key, data, None)

    @contextmanager
    def lease(self, key: str, ttl_s: float = 60.0, wait_s: float = 30.0) -> Iterator[None]:
        """Holds `key` for one writer at a time, across processes and machines: taken by a
        conditional write (create if absent, or take over an expired lease), released by
        deleting it. Waits up to `wait_s` for another holder, then raises StateConflict.
        `ttl_s` bounds how long a crashed holder blocks the others."""
        me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + wait_s
        while True:
            found = self._objects.get(key)
            held = _lease_of(found[0]) if found else None
            if held is None or held.expires_at < time.time():
                mine = Lease(owner=me, expires_at=time.time() + ttl_s)
                try:
                    self._objects.put(
                        key, mine.model_dump_json().encode(), Version(found[1] if found else None)
                    )
                    break
                except StateConflict:
                    continue  # another writer took it first: look again
            if time.monotonic() > deadline:
                raise StateConflict(f"{self.url}/{key} is held by {held.owner}")
            time.sleep(0.05)
        try:
            yield
        finally:
            found = self._objects.get(key)
            if found and (held := _lease_of(found[0])) and held.owner == me:
                self._objects.delete(key)


def _lease_of(raw: bytes) -> Lease | None:
    try:
        return Lease.model_validate_json(raw)
    except ValidationError:
        return None  # torn or foreign: treated as expired


def serving_embedding_model(state: StateStore, configured_model: str) -> str:
    """The model new chunks are embedded with: the promoted fine-tune of the configured
    model, if one was promoted, else the configured model itself (so changing the configured
    model starts over from it)."""
    champion = state.read(CHAMPION_EMBEDDER)
    if champion is not None and champion.base_model == configured_model:
        return champion.model
    return configured_model
