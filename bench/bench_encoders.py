"""Encoder backends: throughput, agreement with float32 and retrieval quality, in one run.

    .venv/bin/python bench/bench_encoders.py [--texts 1000] [--rounds 3] [--no-ndcg] [--json]

The same SciFact abstracts (title and text, as the retrieval evaluation indexes them) are
encoded per round by plain `SentenceTransformer.encode` (float32, its own batching) and by
`Embedder.encode` with each backend (torch, onnx, onnx-int8), in turn within the round, so
the ratios to the plain encode compare runs under the same machine load. Reports tokens/s,
each backend's ratio to the plain encode (median over rounds), the minimum and mean cosine
of its vectors to torch's, and (unless --no-ndcg) nDCG@10 on SciFact train in dense and
the default hybrid mode with the whole corpus indexed by that backend, as `qpbot eval
retrieval` measures it. The CPU flags that matter (avx2, avx512*, amx*) are in the report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qpbot_assets.evaluation.beir import index_beir_corpus, indexed_text, read_beir_corpus  # noqa: E402
from qpbot_serving.embedding import Embedder  # noqa: E402
from qpbot_serving.evaluation import evaluate_retriever  # noqa: E402
from qpbot_serving.retrieval import Retriever  # noqa: E402
from qpbot_serving.settings import DEFAULT_EMBEDDING_MODEL, resolve_model_path  # noqa: E402

SCIFACT = REPO.parent / "shared" / "data" / "scifact"
BACKENDS = ("torch", "onnx", "onnx-int8")


def cpu_flags() -> list[str]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx", "avx_vnni")))


def scifact_texts(count: int | None) -> list[str]:
    docs = list(read_beir_corpus(SCIFACT / "corpus.jsonl"))[:count]
    return [indexed_text(d.get("title") or "", d["text"]) for d in docs]


def throughput(texts: list[str], exports: Path, rounds: int) -> dict:
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(resolve_model_path(DEFAULT_EMBEDDING_MODEL), device="cpu")
    embedders = {
        b: Embedder(DEFAULT_EMBEDDING_MODEL, backend=b, cache_dir=exports) for b in BACKENDS
    }
    window = embedders["torch"].max_tokens
    tokens = sum(
        min(len(e), window)
        for e in embedders["torch"].tokenizer.encode_batch(texts, add_special_tokens=False)
    )
    for embedder in embedders.values():
        embedder.encode(texts[:64])  # loads (and exports) before anything is timed
    plain.encode(texts[:64])
    seconds: dict[str, list[float]] = {name: [] for name in ("plain", *BACKENDS)}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(rounds):
        started = time.perf_counter()
        plain.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        seconds["plain"].append(time.perf_counter() - started)
        for backend, embedder in embedders.items():
            started = time.perf_counter()
            vectors[backend] = embedder.encode(texts, batch_size=32)
            seconds[backend].append(time.perf_counter() - started)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()))
    report = {"texts": len(texts), "tokens": tokens, "backends": {}}
    for name, times in seconds.items():
        ratios = [plain_s / s for plain_s, s in zip(seconds["plain"], times, strict=True)]
        entry = {
            "tokens_per_s": round(tokens / statistics.median(times)),
            "ratio_to_plain": round(statistics.median(ratios), 2),
            "seconds": [round(s, 2) for s in times],
        }
        if name in vectors:
            cosine = (vectors[name] * vectors["torch"]).sum(1)
            entry["cosine_to_torch"] = {
                "min": round(float(cosine.min()), 4),
                "mean": round(float(cosine.mean()), 4),
            }
        report["backends"][name] = entry
    return report


def retrieval_quality(exports: Path, work: Path) -> dict:
    report = {}
    for backend in BACKENDS:
        home = work / backend
        embedder = Embedder(DEFAULT_EMBEDDING_MODEL, backend=backend, cache_dir=exports)
        started = time.perf_counter()
        index_beir_corpus(SCIFACT / "corpus.jsonl", home, DEFAULT_EMBEDDING_MODEL, embedder)
        indexed_s = time.perf_counter() - started
        retriever = Retriever.open(home, embedder=embedder)
        scores = {}
        for mode in ("dense", "hybrid"):
            result = evaluate_retriever(
                retriever, SCIFACT / "queries-train.jsonl", SCIFACT / "qrels-train.tsv", mode
            )
            scores[mode] = round(result["ndcg@10"], 4)
            report["queries"] = result["queries"]
        report[backend] = {**scores, "index_seconds": round(indexed_s, 1)}
        print(f"{backend}: nDCG@10 {scores}, corpus indexed in {indexed_s:.0f} s")
    for backend in BACKENDS[1:]:
        report[backend]["loss_vs_torch"] = {
            mode: round(report["torch"][mode] - report[backend][mode], 4)
            for mode in ("dense", "hybrid")
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=1000, help="SciFact abstracts to encode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ndcg", action="store_true", help="skip the retrieval quality part")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exports = Path(tmp) / "onnx"
        report = {
            "cpu_flags": cpu_flags(),
            "command": " ".join(["bench/bench_encoders.py", *sys.argv[1:]]),
            "throughput": throughput(scifact_texts(args.texts), exports, args.rounds),
        }
        if not args.no_ndcg:
            report["ndcg_at_10"] = retrieval_quality(exports, Path(tmp))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
