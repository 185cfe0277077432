"""The per-document assets are partitioned by document shard (`document_store.shard_of`).

A shard's partition is added when it gets its first document and stays; materializing a
shard brings each of its live documents up to date, skipping unchanged ones by their
fingerprints. Which documents are live is the document store's to say, not Dagster's.
"""

from collections.abc import Iterable, Sequence

import dagster as dg

from qpbot_serving.document_store import shard_of

document_shards = dg.DynamicPartitionsDefinition(name="document_shards")

# Changed shards are grouped into runs over contiguous ranges of partitions; past this many
# ranges one run over the whole span is cheaper than many runs (unchanged documents in
# between cost a fingerprint check each).
MAX_RANGES_PER_CHANGE = 8


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run cover the shards first..last (as a backfill would)."""
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def shards_of(document_ids: Iterable[str]) -> list[str]:
    return sorted({shard_of(document_id) for document_id in document_ids})


def contiguous_ranges(ordered_keys: Sequence[str], wanted: Iterable[str]) -> list[tuple[str, str]]:
    """Groups `wanted` into (first, last) runs of neighbours in `ordered_keys`: Dagster
    runs a range of partitions in one run."""
    wanted = set(wanted)
    ranges: list[tuple[str, str]] = []
    start = previous = None
    for key in ordered_keys:
        if key in wanted:
            start = start or key
            previous = key
        elif start is not None:
            ranges.append((start, previous))
            start = None
    if start is not None:
        ranges.append((start, previous))
    return ranges


def shard_ranges(ordered: Sequence[str], changed: Iterable[str]) -> list[tuple[str, str]]:
    """(first, last) ranges of the partitions `ordered` (in Dagster's order) that cover the
    `changed` shards: as few runs as possible, at most MAX_RANGES_PER_CHANGE."""
    ranges = contiguous_ranges(ordered, changed)
    if len(ranges) > MAX_RANGES_PER_CHANGE:
        return [(ranges[0][0], ranges[-1][1])]
    return ranges


def shard_runs(
    known: Sequence[str], document_ids: Iterable[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """For documents that changed: the shards to add as partitions (those not among the
    `known` ones, in Dagster's order) and the (first, last) ranges of the runs over them."""
    shards = shards_of(document_ids)
    known_set = set(known)
    new_shards = [shard for shard in shards if shard not in known_set]
    return new_shards, shard_ranges([*known, *new_shards], shards)
