"""What a run over many document partitions leaves in Dagster's event log per document."""

import dagster as dg

from qpbot_assets.defs import document_runs
from qpbot_assets.documents.store import StageResult

documents = dg.DynamicPartitionsDefinition(name="documents")
KEYS = [f"doc-{i}" for i in range(5)]


@dg.asset(partitions_def=documents, backfill_policy=dg.BackfillPolicy.single_run())
def stage(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    def step(document_id: str):
        return StageResult({"id": document_id}, "fp", computed=True), {"length": len(document_id)}

    return document_runs.run_for_each_document(context, step)


def materialization_metadata(monkeypatch, own_metadata_up_to: int) -> dict[str, dict]:
    """partition -> metadata of its materialization, after one run over all KEYS."""
    monkeypatch.setattr(document_runs, "MAX_DOCUMENTS_WITH_OWN_METADATA", own_metadata_up_to)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(documents.name, KEYS)
        result = dg.materialize(
            [stage],
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": KEYS[0],
                "dagster/asset_partition_range_end": KEYS[-1],
            },
        )
        assert result.success
        return {
            event.partition: dict(event.materialization.metadata)
            for event in result.get_asset_materialization_events()
        }


def test_a_large_run_writes_no_metadata_per_document(monkeypatch):
    # The run's summary used to be copied into each of its partitions' materializations:
    # 755 bytes per document and asset, twice with SQLite (BENCHMARKS.md, scale section).
    metadata = materialization_metadata(monkeypatch, own_metadata_up_to=len(KEYS) - 1)
    assert sorted(metadata) == KEYS
    assert all(entries == {} for entries in metadata.values())


def test_a_small_run_keeps_each_documents_own_metadata(monkeypatch):
    metadata = materialization_metadata(monkeypatch, own_metadata_up_to=len(KEYS))
    assert {key: entries["length"].value for key, entries in metadata.items()} == {
        key: len(key) for key in KEYS
    }
    assert all(entries["recomputed"].value is True for entries in metadata.values())
