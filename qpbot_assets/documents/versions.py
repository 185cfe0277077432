"""Versions of the per-document stages, and what a document's indexed rows were made with.

Kept apart from the assets so that `qpbot ingest` can tell an unchanged document without
importing the extractors.
"""

from qpbot_assets.documents.store import fingerprint

# Bump a stage's version when its logic changes, so the next run recomputes it.
# Extractor 2: PDF tables as one block, a line per row, cells joined by " | "; 3: limits on
# what a document unpacks to (decompression bombs), reasons name the uploaded file.
EXTRACTOR_VERSION = 3
CLEANER_VERSION = 1
METADATA_VERSION = 2  # 2: language from the first 1,000 characters
# Chunker 2: tokenized a batch at a time, a cap on chunks per document; 3: long blocks cut
# only between table rows (a continued table repeats its header row), and between sentences
# or list items where the window allows.
CHUNKER_VERSION = 3
INDEX_ROWS_VERSION = 2  # 2: page numbers only for formats that have pages (PDF)
# What a document's indexed rows were made with; `qpbot ingest` skips documents whose source
# and pipeline are both unchanged since they were indexed.
PIPELINE_VERSION = fingerprint(
    EXTRACTOR_VERSION, CLEANER_VERSION, METADATA_VERSION, CHUNKER_VERSION, INDEX_ROWS_VERSION
)


def raw_fingerprint(uri: str, version: dict | None) -> str:
    return fingerprint(uri, version)
