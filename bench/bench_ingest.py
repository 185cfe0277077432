"""Ingestion benchmark: SciFact abstracts as files plus the ARAGOG PDFs.

    .venv/bin/python bench/bench_ingest.py [--scifact 1000] [--json]

Runs `qpbot ingest` on a fresh QPBOT_HOME (first run), again unchanged (re-run), then
encodes the very same chunk texts with plain `SentenceTransformer.encode` in this process.
Reports documents/s, chunks/s, peak memory of the ingesting process, the ratio of the
end-to-end chunk rate to the plain encode rate, and the re-run's share of the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
QPBOT = Path(sys.executable).parent / "qpbot"


def build_corpus(folder: Path, scifact_docs: int) -> None:
    (folder / "scifact").mkdir(parents=True)
    with open(SHARED / "scifact" / "corpus.jsonl") as lines:
        for _, line in zip(range(scifact_docs), lines, strict=False):
            doc = json.loads(line)
            (folder / "scifact" / f"{doc['_id']}.md").write_text(
                f"# {doc['title']}\n\n{doc['text']}\n"
            )
    shutil.copytree(SHARED / "aragog" / "papers", folder / "aragog")


def timed_ingest(home: Path, folder: Path) -> tuple[float, float, dict]:
    """(seconds, peak RSS in MB, status JSON) of one `qpbot ingest` process."""
    env = {**os.environ, "QPBOT_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    started = time.perf_counter()
    process = subprocess.run(
        [QPBOT, "ingest", str(folder), "--json"], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"qpbot ingest failed:\n{process.stderr[-3000:]}")
    # ru_maxrss of children is the largest child seen so far; the runs grow, so it is this one's.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak_mb, json.loads(process.stdout)


def vectors_written_since(home: Path, since: float) -> int:
    return sum(p.stat().st_mtime > since for p in (home / "documents").rglob("vectors/*.npz"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scifact", type=int, default=1000, help="SciFact abstracts as files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus, home = tmp / "corpus", tmp / "home"
        build_corpus(corpus, args.scifact)
        documents = sum(1 for p in corpus.rglob("*") if p.is_file())

        first_seconds, peak_mb, status = timed_ingest(home, corpus)
        rerun_started = time.time()
        rerun_seconds, _, rerun_status = timed_ingest(home, corpus)
        rerun_embedded = vectors_written_since(home, rerun_started)

        sys.path.insert(0, str(REPO))
        from qpbot_serving import index as contract
        from qpbot_serving.embedding import Embedder

        promoted = contract.read_promoted(home / "index")
        table = contract.connect(home / "index").open_table(promoted.table)
        texts = table.search().select(["text"]).limit(None).to_arrow().column("text").to_pylist()
        embedder = Embedder(promoted.embedding_model)
        embedder.encode(
            texts[:32]
        )  # warm-up, as the pipeline's model is warm after its first batch
        started = time.perf_counter()
        embedder.model.encode(texts, batch_size=32)
        encode_seconds = time.perf_counter() - started

    chunks = status["chunks"]
    result = {
        "documents": documents,
        "indexed_documents": status["documents"] - len(status["quarantined"]),
        "chunks": chunks,
        "first_run_s": round(first_seconds, 1),
        "documents_per_s": round(documents / first_seconds, 2),
        "chunks_per_s": round(chunks / first_seconds, 2),
        "peak_rss_mb": round(peak_mb),
        "plain_encode_s": round(encode_seconds, 1),
        "plain_encode_chunks_per_s": round(len(texts) / encode_seconds, 2),
        "ratio_end_to_end_vs_plain_encode": round(
            (chunks / first_seconds) / (len(texts) / encode_seconds), 3
        ),
        "rerun_s": round(rerun_seconds, 2),
        "rerun_share_of_first": round(rerun_seconds / first_seconds, 4),
        "rerun_embeddings_computed": rerun_embedded,
        "rerun_chunks_unchanged": rerun_status["chunks"] == chunks,
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
