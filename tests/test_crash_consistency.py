"""Kill `qpbot ingest` part-way, run it again: the index equals that of a clean run.

The first two tests set up, deterministically, what a kill can leave behind; the last kills
real runs at two points in time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.utils import make_new_run_id

from qpbot_assets.defs.partitions import partition_range_tags
from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.runtime.instance import PROCESS_TAG, get_instance, process_tags
from qpbot_assets.runtime.runs import ingest_paths, load_definitions
from qpbot_serving import index as contract
from qpbot_serving.document_store import shard_of
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import INDEX_SNAPSHOT, PROMOTED_INDEX, StateStore

QPBOT = Path(sys.executable).parent / "qpbot"
PROMOTED = dg.AssetKey("promoted_index")


def write_corpus(shared_data: Path, folder: Path, count: int) -> None:
    folder.mkdir()
    with open(shared_data / "scifact" / "corpus.jsonl") as lines:
        for _, line in zip(range(count), lines, strict=False):
            doc = json.loads(line)
            (folder / f"{doc['_id']}.md").write_text(f"# {doc['title']}\n\n{doc['text']}\n")


def ingest(home: Path, folder: Path, kill_after: float | None = None) -> float:
    env = {**os.environ, "QPBOT_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    started = time.monotonic()
    process = subprocess.Popen(
        [QPBOT, "ingest", folder, "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if kill_after is None:
        assert process.wait(timeout=600) == 0
    else:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return time.monotonic() - started


def chunk_ids(home: Path) -> list[str]:
    promoted = StateStore(home).read(PROMOTED_INDEX)
    table = contract.connect(StateStore(home)).open_table(promoted.table)
    return table.search().select(["chunk_id"]).limit(None).to_arrow().column("chunk_id").to_pylist()


def started_run(tags: dict[str, str]) -> dg.DagsterRun:
    return dg.DagsterRun(
        job_name="ingest_documents",
        run_id=make_new_run_id(),
        status=dg.DagsterRunStatus.STARTED,
        tags=tags,
    )


def test_the_pool_slot_of_a_killed_run_does_not_block_the_next_ingest(
    qpbot_home, sample_documents, tmp_path
):
    settings = QpbotSettings()
    instance = get_instance(settings)
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = psutil.Process(killed.pid).create_time()
    killed.kill()
    killed.wait()
    dead = started_run({PROCESS_TAG: f"{socket.gethostname()}:{killed.pid}:{started}"})
    live = started_run(process_tags())  # a run of a process still running: left alone
    for run in (dead, live):
        instance.add_run(run)
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default("search_index")
    claim = storage.claim_concurrency_slot("search_index", dead.run_id, "search_index")
    assert claim.is_claimed  # the killed run was writing the index

    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(sample_documents / "travel-and-expense-policy.md", folder)
    assert ingest_paths(settings, [folder], quiet=True)["success"]  # pytest-timeout if blocked

    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
    assert storage.get_concurrency_info("search_index").claimed_slots == []


def test_an_index_written_but_not_promoted_is_promoted_by_the_next_ingest(
    qpbot_home, sample_documents, tmp_path
):
    settings = QpbotSettings()
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(sample_documents / "travel-and-expense-policy.md", folder)
    ingest_paths(settings, [folder], quiet=True)
    before = StateStore(settings.home).read(PROMOTED_INDEX)

    # A run killed between writing the index and promoting it: the new document's chunks
    # are in the table (so nothing is stale any more), the pointer is at the old version.
    uri = Path(shutil.copy(sample_documents / "warranty-and-returns-policy.docx", folder)).as_uri()
    added = document_id_for(uri)
    DocumentStore(settings).register_sources([(added, uri)])
    instance = get_instance(settings)
    instance.add_dynamic_partitions("document_shards", [shard_of(added)])
    job = load_definitions().resolve_job_def("ingest_documents")
    unpromoted = job.execute_in_process(
        instance=instance,
        tags=partition_range_tags(shard_of(added), shard_of(added)),
        asset_selection=[k for k in job.asset_layer.executable_asset_keys if k != PROMOTED],
    )
    assert unpromoted.success
    assert StateStore(settings.home).read(PROMOTED_INDEX) == before

    summary = ingest_paths(settings, [folder], quiet=True)
    assert (summary["new"], summary["changed"], summary["runs"]) == (0, 0, 1)
    after = StateStore(settings.home).read(PROMOTED_INDEX)
    assert after.version > before.version and after.documents == 2
    assert ingest_paths(settings, [folder], quiet=True)["runs"] == 0

    # Killed while writing: search_index removed the snapshot and wrote no new one yet.
    StateStore(settings.home).clear(INDEX_SNAPSHOT)
    assert ingest_paths(settings, [folder], quiet=True)["runs"] == 1
    assert StateStore(settings.home).read(PROMOTED_INDEX).chunks == after.chunks


@pytest.mark.slow
def test_killed_ingest_then_rerun_equals_a_clean_run(shared_data, tmp_path):
    folder = tmp_path / "corpus"
    write_corpus(shared_data, folder, 150)

    clean_seconds = ingest(tmp_path / "clean", folder)
    clean = chunk_ids(tmp_path / "clean")

    crashed = tmp_path / "crashed"
    for fraction in (0.35, 0.75):  # once while chunking/embedding, once near the index writes
        ingest(crashed, folder, kill_after=clean_seconds * fraction)
    ingest(crashed, folder)
    recovered = chunk_ids(crashed)

    assert len(recovered) == len(set(recovered)), "a chunk is in the index twice"
    assert sorted(recovered) == sorted(clean)
