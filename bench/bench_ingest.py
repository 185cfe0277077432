"""Ingestion benchmark: SciFact abstracts as files plus the ARAGOG PDFs.

    .venv/bin/python bench/bench_ingest.py [--scifact 1000] [--repeat 3] [--json]

Per round: runs `qpbot ingest` on a fresh QPBOT_HOME (first run), again unchanged (re-run), then
encodes the very same chunk texts with plain `SentenceTransformer.encode` in this process,
and once more the pipeline's way (`Embedder.encode`, batches of similar token counts).
Reports documents/s, chunks/s, peak memory of the ingesting processes, the ratio of the
end-to-end chunk rate to the plain encode rate (and to the pipeline's own encode, which
leaves the pipeline's overhead alone), the tokens each batching computes with padding,
and the re-run's share of the first run: medians over the rounds, and each round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from qpbot_serving.state import PROMOTED_INDEX, StateStore

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


def timed_ingest(
    home: Path, folder: Path, show_progress: bool = False, dagster_home: Path | None = None
) -> tuple[float, float, float, dict]:
    """(seconds, peak RSS in MB, the ingest process's own peak RSS in MB, status JSON) of
    one `qpbot ingest` process; with `show_progress` its progress bars go to this stderr.
    The process picks the repository's Dagster configuration unless `dagster_home` is given.

    The peak is of the whole process tree (the ingest and its embedding-model child),
    sampled every 0.1 s.
    """
    env = {**os.environ, "QPBOT_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    if dagster_home:
        env["DAGSTER_HOME"] = str(dagster_home)
    started = time.perf_counter()
    process = subprocess.Popen(
        [QPBOT, "ingest", str(folder), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if show_progress else subprocess.PIPE,
        text=True,
    )
    peak = own_peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak, own_peak
        tree = psutil.Process(process.pid)
        while not sampling.wait(0.1):
            try:
                members = [tree, *tree.children(recursive=True)]
                peak = max(peak, sum(_rss(member) for member in members))
                own_peak = max(own_peak, _rss(tree))
            except psutil.NoSuchProcess:
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    sampling.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"qpbot ingest failed:\n{(stderr or '(its stderr is above)')[-3000:]}")
    return seconds, peak / 2**20, own_peak / 2**20, json.loads(stdout)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def vectors_written_since(home: Path, since: float) -> int:
    """Documents whose vectors were written since `since` (vectors/<model>/<xx>/<id>.npz)."""
    return sum(p.stat().st_mtime > since for p in (home / "vectors").rglob("*.npz"))


def padded_tokens(embedder, texts: list[str], batch_size: int) -> dict:
    """Tokens the model computes, padding included, batching by characters (as
    sentence-transformers does) and by tokens (as the pipeline does)."""
    window = embedder.model.max_seq_length
    tokens = [min(len(e), window) for e in embedder.tokenizer.encode_batch(texts)]

    def padded(order) -> int:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return sum(len(b) * max(tokens[i] for i in b) for b in batches)

    by_characters = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    by_tokens = sorted(range(len(texts)), key=lambda i: -tokens[i])
    return {
        "tokens": sum(tokens),
        "padded_tokens_batched_by_characters": padded(by_characters),
        "padded_tokens_batched_by_tokens": padded(by_tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scifact", type=int, default=1000, help="SciFact abstracts as files")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of first run, re-run and both encodes"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from qpbot_serving import index as contract
    from qpbot_serving.embedding import Embedder

    rounds, embedder = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus"
        build_corpus(corpus, args.scifact)
        documents = sum(1 for p in corpus.rglob("*") if p.is_file())
        for number in range(args.repeat):
            # Each round in its own fresh home, its encodes right after its ingest, so the
            # round's ratios compare timings taken minutes apart on the same machine.
            home = tmp / f"home{number}"
            first_seconds, peak_mb, _, status = timed_ingest(home, corpus)
            rerun_started = time.time()
            rerun_seconds, _, _, rerun_status = timed_ingest(home, corpus)
            rerun_embedded = vectors_written_since(home, rerun_started)

            promoted = StateStore(home).read(PROMOTED_INDEX)
            table = contract.connect(StateStore(home)).open_table(promoted.table)
            column = table.search().select(["text"]).limit(None).to_arrow().column("text")
            texts = column.to_pylist()
            if embedder is None:
                embedder = Embedder(promoted.embedding_model)
                embedder.encode(texts[:32])  # warm, as the pipeline's is after its first batch
            started = time.perf_counter()
            embedder.model.encode(texts, batch_size=32)
            encode_seconds = time.perf_counter() - started
            # The pipeline's own encode (batches by token count): what is left is overhead.
            started = time.perf_counter()
            embedder.encode(texts, batch_size=32)
            token_batched_seconds = time.perf_counter() - started
            chunks = status["chunks"]
            per_chunk = chunks / len(texts)  # 1: the baselines encode the index's chunks
            rounds.append(
                {
                    "first_run_s": round(first_seconds, 1),
                    "peak_rss_mb": round(peak_mb),
                    "plain_encode_s": round(encode_seconds, 1),
                    "token_batched_encode_s": round(token_batched_seconds, 1),
                    "ratio_end_to_end_vs_plain_encode": round(
                        per_chunk * encode_seconds / first_seconds, 3
                    ),
                    "ratio_end_to_end_vs_token_batched_encode": round(
                        per_chunk * token_batched_seconds / first_seconds, 3
                    ),
                    "rerun_s": round(rerun_seconds, 2),
                    "rerun_share_of_first": round(rerun_seconds / first_seconds, 4),
                    "rerun_embeddings_computed": rerun_embedded,
                    "rerun_chunks_unchanged": rerun_status["chunks"] == chunks,
                }
            )
            print(f"round {number + 1}: {json.dumps(rounds[-1])}", file=sys.stderr)
        padded = padded_tokens(embedder, texts, batch_size=32)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    first_seconds = median("first_run_s")
    result = {
        "documents": documents,
        "indexed_documents": status["documents"] - len(status["quarantined"]),
        "chunks": chunks,
        "rounds": len(rounds),
        "median_first_run_s": first_seconds,
        "documents_per_s": round(documents / first_seconds, 2),
        "chunks_per_s": round(chunks / first_seconds, 2),
        "median_plain_encode_s": median("plain_encode_s"),
        "median_token_batched_encode_s": median("token_batched_encode_s"),
        "median_ratio_end_to_end_vs_plain_encode": median("ratio_end_to_end_vs_plain_encode"),
        "median_ratio_end_to_end_vs_token_batched_encode": median(
            "ratio_end_to_end_vs_token_batched_encode"
        ),
        "median_rerun_s": median("rerun_s"),
        "median_rerun_share_of_first": median("rerun_share_of_first"),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
        **padded,
        "per_round": rounds,
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
