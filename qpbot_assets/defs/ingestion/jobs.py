"""Jobs the source sensors and `qpbot ingest` launch."""

import dagster as dg

from qpbot_assets.defs.partitions import document_shards

# Everything from the raw bytes to the promoted pointer, for a range of document shards.
ingest_documents_job = dg.define_asset_job(
    "ingest_documents",
    selection=dg.AssetSelection.groups("ingestion", "indexing"),
    partitions_def=document_shards,
    description="Ingest the documents of a range of shards and promote the refreshed index.",
)

# After documents are deleted: drop their chunks, re-check and promote.
refresh_index_job = dg.define_asset_job(
    "refresh_index",
    selection=dg.AssetSelection.assets("search_index", "promoted_index"),
    description="Remove chunks of deleted documents, check the index and promote it.",
)
