"""Kill `qpbot ingest` part-way, run it again: the index equals that of a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qpbot_serving import index as contract

QPBOT = Path(sys.executable).parent / "qpbot"


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
    promoted = contract.read_promoted(home / "index")
    table = contract.connect(home / "index").open_table(promoted.table)
    return table.search().select(["chunk_id"]).limit(None).to_arrow().column("chunk_id").to_pylist()


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
