"""Per-document assets: raw bytes -> extracted text -> cleaned text -> metadata -> chunks.

Partitioned by document shard: a shard's materialization runs the stage for each live
document of the shard. Each stage stores its output in the document store with the
fingerprint of its input and is skipped when that input has not changed. A document that
cannot go on is quarantined at the stage that found the problem; the later stages record
that and move on to the next document.
"""

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from qpbot_assets.defs.document_runs import run_for_each_document
from qpbot_assets.defs.partitions import document_shards
from qpbot_assets.defs.resources import DocumentStoreResource, EmbeddingModelResource
from qpbot_assets.documents.chunking import TooManyChunks, chunk_blocks
from qpbot_assets.documents.cleaning import clean_document
from qpbot_assets.documents.extraction import (
    ExtractedDocument,
    TextBlock,
    UnreadableDocument,
    extract_document,
)
from qpbot_assets.documents.metadata import describe_document
from qpbot_assets.documents.sources import local_copy, source_version
from qpbot_assets.documents.store import Quarantined, fingerprint
from qpbot_assets.documents.versions import (
    CHUNKER_VERSION,
    CLEANER_VERSION,
    EXTRACTOR_VERSION,
    METADATA_VERSION,
    raw_fingerprint,
)
from qpbot_serving.document_store import display_name

PER_DOCUMENT = dict(
    partitions_def=document_shards,
    # A backfill of many shards runs as one run: Dagster's per-run overhead is seconds.
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="ingestion",
)


class ChunkingConfig(dg.Config):
    max_tokens: int = Field(
        0, description="Tokens per chunk; 0 fills the embedding model's window."
    )
    overlap_tokens: int = Field(32, description="Tokens shared by the windows of a long block.")


def as_document(record: dict) -> ExtractedDocument:
    return ExtractedDocument(
        format=record["format"],
        blocks=[TextBlock(**block) for block in record["blocks"]],
        page_count=record["page_count"],
        properties=record["properties"],
    )


@dg.asset(**PER_DOCUMENT, kinds={"python", "s3"})
def raw_document(
    context: dg.AssetExecutionContext, documents: DocumentStoreResource, s3: S3Resource
) -> dg.MaterializeResult:
    """The document's bytes in a content-addressed store, with sha256, source URI, size and
    modified time (files), ETag (S3) or row version (database rows, read from the snapshot
    their source sensor or `qpbot ingest --sql` took). An unchanged source is not read again."""
    store = documents.store
    clients = {}

    def s3_client():
        return clients.setdefault("s3", s3.get_client())

    def step(document_id: str):
        uri = store.source_uri(document_id)
        version = source_version(uri, s3_client() if uri.startswith("s3://") else None, store)

        def fetch() -> dict:
            if version is None:
                raise Quarantined(f"{uri} no longer exists at its source", "missing")
            if version["size"] > documents.max_document_bytes:
                raise Quarantined(
                    f"the file is {version['size'] / 2**20:.0f} MB, over the "
                    f"{documents.max_document_mb} MB limit; raise QPBOT_MAX_DOCUMENT_MB to accept it",
                    "too_large",
                )
            suffix = Path(display_name(uri)).suffix
            with local_copy(uri, s3_client() if uri.startswith("s3://") else None, store) as path:
                sha256, size = store.put_blob(path, suffix=suffix)
            return {
                "uri": uri,
                "filename": display_name(uri),
                "sha256": sha256,
                "size": size,
                **version,
                "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }

        return store.run_stage(document_id, "raw", raw_fingerprint(uri, version), fetch)

    return run_for_each_document(context, store, step)


@dg.asset(**PER_DOCUMENT, deps=[raw_document], kinds={"python", "pdf"})
def extracted_text(
    context: dg.AssetExecutionContext, documents: DocumentStoreResource
) -> dg.MaterializeResult:
    """Text blocks with page numbers and section headings: pymupdf for PDF, python-docx for
    DOCX, plus plain text, Markdown and HTML. Unreadable files, and files that would unpack
    to more than the limits (decompression bombs), are quarantined with a reason that names
    the uploaded file."""
    store = documents.store
    limits = documents.limits

    def step(document_id: str):
        def extract() -> dict:
            raw = store.stage_output(document_id, "raw")
            blob = store.blob_file(raw["sha256"], suffix=Path(raw["filename"]).suffix)
            try:
                doc = extract_document(
                    blob, name=raw["filename"], passwords=documents.pdf_passwords, limits=limits
                )
            except UnreadableDocument as problem:
                raise Quarantined(problem.reason, problem.kind) from None
            return asdict(doc)

        input_fp = fingerprint(
            EXTRACTOR_VERSION,
            store.output_digest(document_id, "raw", fields=("sha256", "filename")),
            sorted(documents.pdf_passwords),
            asdict(limits),  # a raised limit reads a quarantined document again
        )
        return store.run_stage(document_id, "extracted", input_fp, extract)

    return run_for_each_document(context, store, step)


@dg.asset(**PER_DOCUMENT, deps=[extracted_text], kinds={"python"})
def cleaned_text(
    context: dg.AssetExecutionContext, documents: DocumentStoreResource
) -> dg.MaterializeResult:
    """Unicode-normalized text with hyphenated line breaks joined, whitespace tidied and
    running headers and footers removed."""
    store = documents.store

    def step(document_id: str):
        def clean() -> dict:
            cleaned = clean_document(as_document(store.stage_output(document_id, "extracted")))
            if not cleaned.blocks:
                raise Quarantined("no text is left after cleaning (the document is empty)", "empty")
            return asdict(cleaned)

        input_fp = fingerprint(CLEANER_VERSION, store.output_digest(document_id, "extracted"))
        return store.run_stage(document_id, "cleaned", input_fp, clean)

    return run_for_each_document(context, store, step)


@dg.asset(**PER_DOCUMENT, deps=[cleaned_text, raw_document], kinds={"python"})
def document_metadata(
    context: dg.AssetExecutionContext, documents: DocumentStoreResource
) -> dg.MaterializeResult:
    """Title, author, created and modified dates, pages, language, source and ingestion time."""
    store = documents.store

    def step(document_id: str):
        def describe() -> dict:
            raw = store.stage_output(document_id, "raw")
            cleaned = as_document(store.stage_output(document_id, "cleaned"))
            return {
                **describe_document(cleaned, raw["filename"]),
                "source_uri": raw["uri"],
                "sha256": raw["sha256"],
                "bytes": raw["size"],
                "ingested_at": raw["fetched_at"],
            }

        input_fp = fingerprint(
            METADATA_VERSION,
            store.output_digest(document_id, "raw"),
            store.output_digest(document_id, "cleaned"),
        )
        return store.run_stage(document_id, "metadata", input_fp, describe)

    return run_for_each_document(context, store, step)


@dg.asset(**PER_DOCUMENT, deps=[cleaned_text], kinds={"python"})
def chunks(
    context: dg.AssetExecutionContext,
    config: ChunkingConfig,
    documents: DocumentStoreResource,
    embedding_model: EmbeddingModelResource,
) -> dg.MaterializeResult:
    """Token-based chunks counted with the embedding model's tokenizer; each knows its
    document, page span and section, and its id comes from the document id and its text. A
    document that would make more than QPBOT_MAX_CHUNKS_PER_DOCUMENT chunks is quarantined
    (chunking stops there), so that one file cannot hold up the embedding of the others."""
    store = documents.store
    embedder = embedding_model.embedder
    max_chunks = documents.max_chunks_per_document

    def step(document_id: str):
        def chunk() -> list[dict]:
            cleaned = as_document(store.stage_output(document_id, "cleaned"))
            try:
                pieces = chunk_blocks(
                    cleaned.blocks,
                    document_id,
                    embedder.tokenizer,
                    max_tokens=config.max_tokens or embedder.max_tokens,
                    overlap_tokens=config.overlap_tokens,
                    max_chunks=max_chunks,
                )
            except TooManyChunks:
                filename = store.stage_output(document_id, "raw")["filename"]
                raise Quarantined(
                    f"{filename} makes more than {max_chunks:,} chunks, the limit for one "
                    "document; split it into smaller files or raise "
                    "QPBOT_MAX_CHUNKS_PER_DOCUMENT.",
                    "too_large",
                ) from None
            return [asdict(piece) for piece in pieces]

        input_fp = fingerprint(
            CHUNKER_VERSION,
            store.output_digest(document_id, "cleaned", fields=("blocks",)),
            embedding_model.configured_model,  # a fine-tune keeps its base model's tokenizer
            config.max_tokens,
            config.overlap_tokens,
            max_chunks,
        )
        return store.run_stage(document_id, "chunks", input_fp, chunk)

    return run_for_each_document(context, store, step)
