"""The index contract shared by the write side (assets) and the read side (service).

One LanceDB table per embedding model holds every chunk with its vector and a native
full-text index. The table's schema metadata records how its vectors were made, so a query
is always embedded with the same model. The service reads only the promoted pointer
(`PROMOTED.json`): a table name and a LanceDB version, written after the checks pass.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

POINTER_FILE = "PROMOTED.json"
EMBEDDER_FILE = "EMBEDDER.json"  # the promoted fine-tune of the configured embedding model
LANCEDB_DIR = "lancedb"

# Columns besides the vector.
CHUNK_COLUMNS: list[pa.Field] = [
    pa.field("chunk_id", pa.string(), nullable=False),
    pa.field("document_id", pa.string(), nullable=False),
    pa.field("chunk_index", pa.int32()),
    pa.field("text", pa.string()),
    pa.field("title", pa.string()),
    pa.field("section", pa.string()),
    pa.field("page_start", pa.int32()),
    pa.field("page_end", pa.int32()),
    pa.field("source_uri", pa.string()),
    pa.field("format", pa.string()),
    pa.field("author", pa.string()),
    pa.field("language", pa.string()),
]


@dataclass(frozen=True)
class IndexInfo:
    """How the vectors of a table were made; stored in the table's schema metadata."""

    embedding_model: str
    dimension: int

    def to_metadata(self) -> dict[bytes, bytes]:
        return {b"qpbot.index": json.dumps(asdict(self)).encode()}

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> IndexInfo:
        raw = (schema.metadata or {}).get(b"qpbot.index")
        if raw is None:
            raise ValueError(
                "this LanceDB table was not written by qpbot (no qpbot.index metadata)"
            )
        return cls(**json.loads(raw))


def chunk_schema(info: IndexInfo) -> pa.Schema:
    vector = pa.field("vector", pa.list_(pa.float32(), info.dimension))
    return pa.schema([*CHUNK_COLUMNS, vector], metadata=info.to_metadata())


def model_slug(embedding_model: str) -> str:
    """A short, file-safe name for a model (the last part of its name or path)."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(embedding_model).name.lower()).strip("-")
    return slug or "model"


def table_name_for(embedding_model: str) -> str:
    """A table per embedding model, so a new model builds beside the live one."""
    return f"chunks__{model_slug(embedding_model)}"


def serving_embedding_model(index_dir: Path, configured_model: str) -> str:
    """The model new chunks are embedded with: the promoted fine-tune of the configured
    model, if one was promoted, else the configured model itself (so changing the configured
    model starts over from it)."""
    path = Path(index_dir) / EMBEDDER_FILE
    if path.is_file():
        champion = json.loads(path.read_text())
        if champion.get("base_model") == configured_model:
            return champion["model"]
    return configured_model


def connect(index_dir: Path):
    import lancedb

    return lancedb.connect(str(index_dir / LANCEDB_DIR))


@dataclass(frozen=True)
class PromotedIndex:
    """What the service serves: a table at a fixed version."""

    table: str
    version: int
    embedding_model: str
    dimension: int
    chunks: int
    documents: int
    promoted_at: str

    @property
    def label(self) -> str:
        return f"{self.table}@v{self.version}"


def read_promoted(index_dir: Path) -> PromotedIndex | None:
    path = index_dir / POINTER_FILE
    if not path.is_file():
        return None
    return PromotedIndex(**json.loads(path.read_text()))


def write_promoted(index_dir: Path, **fields) -> PromotedIndex:
    """Moves the pointer atomically."""
    promoted = PromotedIndex(promoted_at=datetime.now(UTC).isoformat(timespec="seconds"), **fields)
    atomic_write_json(index_dir / POINTER_FILE, asdict(promoted))
    return promoted


def atomic_write_json(path: Path, data: dict) -> None:
    """Writes a temporary file, then renames it over the old one: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=2)
    os.replace(tmp.name, path)
