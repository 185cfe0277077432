"""One dynamic partition per document; the key is `sources.document_id_for(uri)`."""

import dagster as dg

documents_partitions = dg.DynamicPartitionsDefinition(name="documents")


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run cover the documents first..last (as a backfill would)."""
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }
