"""The whole real corpus through the asset graph: every file ends indexed or quarantined
with a reason that fits what its manifest entry says about it."""

from __future__ import annotations

import csv

import pytest
from corpus_expectations import UNREADABLE

from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.runtime.runs import index_status, ingest_paths
from qpbot_serving import index as contract
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import PROMOTED_INDEX, StateStore


@pytest.mark.slow
def test_every_corpus_file_is_indexed_or_quarantined_with_a_fitting_reason(qpbot_home, shared_data):
    docs = shared_data / "docs"
    with open(docs / "MANIFEST.tsv") as handle:
        manifest = [row["file"] for row in csv.DictReader(handle, delimiter="\t")]

    settings = QpbotSettings()
    summary = ingest_paths(settings, [docs / "pdf", docs / "docx"], quiet=True)
    assert summary["success"] and summary["documents"] == len(manifest)

    status = index_status(settings)
    quarantined = {q["document_id"]: q for q in status["quarantined"]}
    promoted = StateStore(settings.home).read(PROMOTED_INDEX)
    table = contract.connect(StateStore.from_settings(settings)).open_table(promoted.table)
    rows = (
        table.search()
        .select(["document_id"])
        .limit(None)
        .to_arrow()
        .column("document_id")
        .to_pylist()
    )
    chunks_per_document = {d: rows.count(d) for d in set(rows)}

    for path in manifest:
        document_id = document_id_for((docs / path).resolve().as_uri())
        if path in UNREADABLE:
            assert document_id in quarantined, f"{path} should be quarantined"
            assert quarantined[document_id]["kind"] == UNREADABLE[path], path
            assert quarantined[document_id]["reason"], path
            assert document_id not in chunks_per_document, f"{path} is quarantined but has chunks"
        else:
            assert chunks_per_document.get(document_id, 0) > 0, f"{path} has no chunks"
            assert document_id not in quarantined, f"{path}: {quarantined.get(document_id)}"
    assert len(rows) == status["chunks"]
