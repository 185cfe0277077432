"""What a run over document shards processes, and what it leaves in Dagster per shard."""

import dagster as dg

from qpbot_assets.defs import document_runs
from qpbot_assets.defs.partitions import document_shards, shards_of
from qpbot_assets.documents.store import DocumentStore, StageResult
from qpbot_serving.document_store import shard_of
from qpbot_serving.settings import QpbotSettings

# Two documents in shard "0a", one in "0b" (a shard is the id's last two hex digits).
DOCUMENTS = ["a.md-00000000000a", "b.md-00000000010a", "c.md-00000000000b"]
DELETED = "d.md-00000000020a"
QUARANTINED = "b.md-00000000010a"


def run_stage_over_all_shards(store: DocumentStore) -> tuple[list[str], dict[str, dict]]:
    """(documents the step saw, shard -> metadata of its materialization) after one run."""
    seen = []

    @dg.asset(partitions_def=document_shards, backfill_policy=dg.BackfillPolicy.single_run())
    def stage(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        def step(document_id: str) -> StageResult:
            seen.append(document_id)
            output = None if document_id == QUARANTINED else {"id": document_id}
            return StageResult(output, "fp", computed=document_id != DOCUMENTS[0])

        return document_runs.run_for_each_document(context, store, step)

    shards = shards_of([*DOCUMENTS, DELETED])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(document_shards.name, [*shards, "ff"])
        result = dg.materialize(
            [stage],
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": shards[0],
                "dagster/asset_partition_range_end": "ff",
            },
        )
        assert result.success
        metadata = {
            event.partition: {k: v.value for k, v in event.materialization.metadata.items()}
            for event in result.get_asset_materialization_events()
        }
    return seen, metadata


def test_a_run_processes_the_live_documents_of_its_shards_and_counts_per_shard(tmp_path):
    store = DocumentStore(QpbotSettings(home=tmp_path))
    store.register_sources((d, f"file:///docs/{d}") for d in [*DOCUMENTS, DELETED])
    store.remove_sources([DELETED])

    seen, metadata = run_stage_over_all_shards(store)

    assert seen == sorted(DOCUMENTS)  # not the deleted one
    assert {shard_of(d) for d in DOCUMENTS} == {"0a", "0b"}
    zero = dict.fromkeys(
        ["documents", "recomputed", "unchanged", "quarantined", "recomputed_quarantined"], 0
    )
    assert metadata == {
        "0a": {
            **zero,
            "documents": 2,
            "recomputed": 1,
            "unchanged": 1,
            "quarantined": 1,
            "recomputed_quarantined": 1,
        },
        "0b": {**zero, "documents": 1, "recomputed": 1},
        "ff": zero,  # a shard with no document is materialized with nothing to do
    }
