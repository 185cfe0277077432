"""The retriever on a real LanceDB index of 200 SciFact abstracts, with the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qpbot_assets.evaluation.beir import index_beir_corpus, indexed_corpus
from qpbot_assets.indexing.promotion import promote_snapshot
from qpbot_serving import index as contract
from qpbot_serving.evaluation import (
    evaluate_rankings,
    evaluate_retriever,
    read_qrels,
    read_queries,
)
from qpbot_serving.retrieval import IndexNotReady, Retriever, SearchHit
from qpbot_serving.settings import resolve_model_path
from qpbot_serving.state import PROMOTED_INDEX, IndexSnapshot, StateStore

MODEL = "all-MiniLM-L6-v2"
DOCS = 200


@pytest.fixture(scope="module")
def small_beir(shared_data, tmp_path_factory) -> dict[str, Path]:
    """The first 200 SciFact abstracts and the train queries with a relevant one among them."""
    scifact = shared_data / "scifact"
    folder = tmp_path_factory.mktemp("small-beir")
    with open(scifact / "corpus.jsonl") as lines:
        corpus_lines = [line for _, line in zip(range(DOCS), lines, strict=False)]
    doc_ids = {json.loads(line)["_id"] for line in corpus_lines}
    qrels = {
        query_id: {doc: grade for doc, grade in docs.items() if doc in doc_ids}
        for query_id, docs in read_qrels(scifact / "qrels-train.tsv").items()
    }
    qrels = {query_id: docs for query_id, docs in qrels.items() if docs}
    queries = read_queries(scifact / "queries-train.jsonl")
    paths = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels.tsv",
    }
    paths["corpus"].write_text("".join(corpus_lines))
    paths["queries"].write_text(
        "".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in qrels)
    )
    paths["qrels"].write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{g}\n" for q, docs in qrels.items() for d, g in docs.items())
    )
    return paths


@pytest.fixture(scope="module")
def small_home(small_beir, embedder, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("beir-home")
    index_beir_corpus(small_beir["corpus"], home, MODEL, embedder=embedder)
    return home


@pytest.fixture(scope="module")
def retriever(small_home, embedder) -> Retriever:
    return Retriever.open(small_home, embedder=embedder)


def test_index_follows_the_contract(small_home, small_beir):
    promoted = StateStore(small_home).read(PROMOTED_INDEX)
    assert promoted.table == contract.table_name_for(MODEL)
    assert promoted.documents == promoted.chunks == DOCS
    table = contract.connect(StateStore(small_home)).open_table(promoted.table)
    info = contract.IndexInfo.from_schema(table.schema)
    assert table.schema == contract.chunk_schema(info)
    assert info == contract.IndexInfo(embedding_model=MODEL, dimension=384)
    assert any(i.index_type == "FTS" for i in table.list_indices())
    assert indexed_corpus(small_beir["corpus"], small_home, MODEL) == promoted
    assert indexed_corpus(small_beir["queries"], small_home, MODEL) is None  # another file


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_each_mode_returns_k_hits_best_first(retriever, mode):
    hits = retriever.search("cerebral white matter development in preterm infants", 7, mode)
    assert len(hits) == 7
    assert all(isinstance(hit, SearchHit) for hit in hits)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({hit.chunk_id for hit in hits}) == 7
    assert hits[0].document_id == "4983"  # the abstract about exactly that
    assert hits[0].text and hits[0].title and hits[0].source_uri


def test_filters_restrict_results(retriever):
    query = "cerebral white matter development"
    assert retriever.search(query, 5, filters={"document_id": "4983"})[0].document_id == "4983"
    assert len(retriever.search(query, 5, filters={"document_id": "4983"})) == 1
    some = ["31715818", "4983", "5836"]
    for mode in ("dense", "keyword", "hybrid"):
        hits = retriever.search(query, 10, mode, filters={"document_ids": some})
        assert hits and {hit.document_id for hit in hits} <= set(some)
    title = retriever.search(query, 1)[0].title
    hits = retriever.search("anything at all about cells", 5, filters={"title": title})
    assert [hit.title for hit in hits] == [title]
    assert len(retriever.search(query, 5, filters={"format": "beir", "language": "en"})) == 5
    assert retriever.search(query, 5, filters={"format": "pdf"}) == []
    assert retriever.search(query, 5, filters={"document_ids": []}) == []
    # values are literals, never SQL: a quote cannot widen the filter
    assert retriever.search(query, 5, filters={"title": "x' OR '1'='1"}) == []
    with pytest.raises(ValueError, match="unknown filter"):
        retriever.search(query, filters={"page_start": 1})
    with pytest.raises(ValueError, match="list of strings"):
        retriever.search(query, filters={"document_ids": "4983"})


@pytest.fixture(scope="module")
def rankings(retriever, small_beir) -> dict[str, dict[str, list[str]]]:
    """mode -> query id -> the top 100 document ids, for every small-corpus query."""
    queries = read_queries(small_beir["queries"])
    return {
        mode: {
            query_id: [hit.document_id for hit in retriever.search(text, 100, mode)]
            for query_id, text in queries.items()
        }
        for mode in ("dense", "keyword", "hybrid")
    }


def test_hybrid_finds_what_only_one_list_finds(rankings, small_beir):
    """Relevant abstracts that only keyword (or only dense) search ranks in the top 10 are in
    the hybrid top 10 too."""
    qrels = read_qrels(small_beir["qrels"])
    rescued = {"keyword": 0, "dense": 0}
    for query_id, relevant in qrels.items():
        top = {mode: set(ranked[query_id][:10]) for mode, ranked in rankings.items()}
        for doc in relevant:
            for only, other in (("keyword", "dense"), ("dense", "keyword")):
                if doc in top[only] and doc not in top[other] and doc in top["hybrid"]:
                    rescued[only] += 1
    assert rescued["keyword"] >= 1 and rescued["dense"] >= 1, rescued


def test_query_model_comes_from_the_index(small_beir, tmp_path, monkeypatch, embedder):
    # The model recorded as a path: the retriever must load that, whatever settings say.
    model_path = resolve_model_path(MODEL)
    assert model_path != MODEL, "the packaged model is not installed"
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text("".join(small_beir["corpus"].read_text().splitlines(True)[:5]))
    index_beir_corpus(tiny, tmp_path, model_path)
    monkeypatch.setenv("QPBOT_EMBEDDING_MODEL", "some-other-model")
    opened = Retriever.open(tmp_path)
    assert opened.embedder.model_name == model_path
    assert opened.promoted.table == contract.table_name_for(model_path)
    assert len(opened.search("white matter", 3, "dense")) == 3
    with pytest.raises(ValueError, match="was embedded with"):
        Retriever.open(tmp_path, embedder=embedder)  # same weights, another name


def test_index_not_ready_without_pointer(tmp_path):
    with pytest.raises(IndexNotReady, match="qpbot ingest"):
        Retriever.open(tmp_path)


def test_bad_arguments(retriever):
    with pytest.raises(ValueError, match="mode"):
        retriever.search("white matter", mode="semantic")
    for k in (0, -1, 1001, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            retriever.search("white matter", k=k)
    with pytest.raises(ValueError, match="query"):
        retriever.search("   ")


def test_evaluate_retriever_on_small_corpus(retriever, rankings, small_beir):
    qrels = read_qrels(small_beir["qrels"])
    hybrid = evaluate_retriever(retriever, small_beir["queries"], small_beir["qrels"], "hybrid")
    assert hybrid == evaluate_rankings(rankings["hybrid"], qrels)
    assert hybrid["queries"] == len(read_queries(small_beir["queries"]))
    results = {mode: evaluate_rankings(ranked, qrels) for mode, ranked in rankings.items()}
    for result in results.values():
        assert 0.5 < result["ndcg@10"] <= 1 and 0.5 < result["mrr@10"] <= 1
        assert 0.8 < result["recall@100"] <= 1
    assert results["hybrid"]["ndcg@10"] >= max(r["ndcg@10"] for r in results.values()) - 0.05


def test_cli_eval_retrieval_json(small_beir, small_home):
    """`qpbot eval retrieval --json` reusing the index that --home already holds."""
    qpbot = Path(sys.executable).parent / "qpbot"
    # small_home was indexed with torch: the same backend finds it and reuses it.
    env = {
        **os.environ,
        "QPBOT_HOME": str(small_home / "unused"),
        "QPBOT_EMBEDDING_BACKEND": "torch",
    }
    process = subprocess.run(
        [
            qpbot,
            "eval",
            "retrieval",
            "--corpus",
            small_beir["corpus"],
            "--queries",
            small_beir["queries"],
            "--qrels",
            small_beir["qrels"],
            "--mode",
            "keyword",
            "--home",
            small_home,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    result = json.loads(process.stdout)
    assert {"ndcg@10", "recall@100", "mrr@10", "queries", "mode"} <= set(result)
    assert result["mode"] == "keyword" and result["reused_index"] is True
    assert result["queries"] == len(read_queries(small_beir["queries"]))
    assert 0 < result["ndcg@10"] <= 1


def test_cli_eval_never_overwrites_a_document_index(small_beir, tmp_path, capsys):
    from qpbot_assets.cli import main

    snapshot = IndexSnapshot(
        table="chunks__x", version=1, embedding_model=MODEL, dimension=384, chunks=1, documents=1
    )
    promote_snapshot(StateStore(tmp_path), snapshot, MODEL)
    argv = ["eval", "retrieval", "--home", str(tmp_path), "--json"]
    for name in ("corpus", "queries", "qrels"):
        argv += [f"--{name}", str(small_beir[name])]
    assert main(argv) == 2
    assert "holds a document index" in capsys.readouterr().err
    assert StateStore(tmp_path).read(PROMOTED_INDEX).table == "chunks__x"


# --- the vector index and the fast paths of the search -------------------------------------
COPIES = 10  # 200 real abstracts x 10: 2,000 rows, as bench_serving.py makes 100k from 5k


def _scaled_home(source_home: Path, target: Path, copies: int = COPIES) -> Path:
    """A home whose table holds each row of `source_home` `copies` times, each copy's real
    vector perturbed (Gaussian noise 0.02, renormalized); full-text index, no vector index."""
    import numpy as np
    import pyarrow as pa
    from lancedb.index import FTS

    promoted = StateStore(source_home).read(PROMOTED_INDEX)
    source = contract.connect(StateStore(source_home)).open_table(promoted.table)
    source.checkout(promoted.version)
    rows = source.to_arrow()
    vectors = np.stack(rows["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    rng = np.random.default_rng(0)
    batches = []
    for copy in range(copies):
        noisy = vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32) * (copy > 0)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        batch = rows.set_column(
            rows.schema.get_field_index("vector"),
            "vector",
            pa.FixedSizeListArray.from_arrays(pa.array(noisy.ravel()), vectors.shape[1]),
        )
        ids = [f"{chunk_id}-{copy}" for chunk_id in rows["chunk_id"].to_pylist()]
        batches.append(batch.set_column(0, "chunk_id", pa.array(ids)))
    table = contract.connect(StateStore(target)).create_table(
        promoted.table, data=pa.concat_tables(batches)
    )
    table.create_index("text", config=FTS())
    moved = promoted.snapshot.model_copy(
        update={"version": table.version, "chunks": table.count_rows()}
    )
    promote_snapshot(StateStore(target), moved, promoted.embedding_model)
    return target


def _open_table(home: Path):
    promoted = StateStore(home).read(PROMOTED_INDEX)
    return contract.connect(StateStore(home)).open_table(promoted.table)


def _promote_latest(home: Path) -> None:
    promoted = StateStore(home).read(PROMOTED_INDEX)
    moved = promoted.snapshot.model_copy(update={"version": _open_table(home).version})
    promote_snapshot(StateStore(home), moved, promoted.embedding_model)


def test_vector_index_only_above_the_threshold(small_home, tmp_path, monkeypatch):
    import pyarrow as pa

    home = _scaled_home(small_home, tmp_path)
    table = _open_table(home)
    rows = DOCS * COPIES
    assert contract.VECTOR_INDEX_MIN_ROWS > rows  # so the default leaves this table flat
    for below in (contract.VECTOR_INDEX_MIN_ROWS, rows + 1):
        result = contract.ensure_vector_index(table, min_rows=below)
        assert result["vector_index"] == "none" and result["rows"] == rows
        assert contract.vector_index_of(table) is None
    # A failed build is reported and leaves the table (and its exact search) as it was.
    with monkeypatch.context() as patch:
        patch.setattr(type(table), "create_index", lambda *a, **k: 1 / 0)
        failed = contract.ensure_vector_index(table, min_rows=rows)
    assert failed["vector_index"] == "failed" and "ZeroDivisionError" in failed["reason"]
    assert contract.vector_index_of(table) is None
    created = contract.ensure_vector_index(table, min_rows=rows)  # exactly at the threshold
    assert created["vector_index"] == "created" and created["segments"] == 1
    index = contract.vector_index_of(table)
    stats = table.index_stats(index.name)
    assert (stats.index_type, stats.distance_type) == ("IVF_HNSW_FLAT", "cosine")
    assert stats.num_indexed_rows == rows and stats.num_unindexed_rows == 0
    version = table.version
    assert contract.ensure_vector_index(table, min_rows=rows)["vector_index"] == "kept"
    assert table.version == version  # nothing written when nothing is to do
    # A smaller table keeps its index: it stays correct.
    table.delete("chunk_id LIKE '%-9'")
    assert contract.ensure_vector_index(table, min_rows=rows)["vector_index"] == "kept"

    # optimize() indexes new rows as a delta segment; past the limit the index is rebuilt.
    monkeypatch.setattr(contract, "VECTOR_INDEX_MAX_SEGMENTS", 1)
    extra = table.search().limit(50).to_arrow()
    ids = [f"{chunk_id}-extra" for chunk_id in extra["chunk_id"].to_pylist()]
    table.add(extra.set_column(0, "chunk_id", pa.array(ids)))
    table.optimize()
    assert table.index_stats(index.name).num_indices == 2
    rebuilt = contract.ensure_vector_index(table, min_rows=rows)
    assert rebuilt["vector_index"] == "rebuilt" and "segments" in rebuilt["reason"]
    assert table.index_stats(index.name).num_indices == 1

    # An index of another kind is replaced by the one the retriever is tuned for.
    from lancedb.index import IvfFlat

    table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=2))
    assert contract.ensure_vector_index(table, min_rows=rows)["vector_index"] == "rebuilt"
    assert table.index_stats(index.name).index_type == "IVF_HNSW_FLAT"


@pytest.fixture(scope="module")
def indexed_home(small_home, tmp_path_factory) -> Path:
    """2,000 rows of real (perturbed) vectors with the vector index; promoted at that version."""
    home = _scaled_home(small_home, tmp_path_factory.mktemp("indexed-home"))
    result = contract.ensure_vector_index(_open_table(home), min_rows=DOCS * COPIES)
    assert result["vector_index"] == "created"
    _promote_latest(home)
    return home


@pytest.fixture(scope="module")
def indexed_and_flat(indexed_home, embedder) -> tuple[Retriever, Retriever]:
    indexed = Retriever.open(indexed_home, embedder=embedder)
    flat = Retriever.open(indexed_home, embedder=embedder)
    flat.vector_index = None  # the exact search, on the very same table
    return indexed, flat


def test_indexed_search_matches_the_flat_search(indexed_and_flat, small_beir, embedder):
    import numpy as np

    indexed, flat = indexed_and_flat
    assert indexed.vector_index == "vector_idx"
    vector = embedder.encode(["white matter"])[0]
    plans = [
        r._vector_search(vector, 100, None, ["chunk_id", "_distance"]).explain_plan()
        for r in (indexed, flat)
    ]
    assert "ANNSubIndex: name=vector_idx" in plans[0] and "ANNSubIndex" not in plans[1]
    texts = list(read_queries(small_beir["queries"]).values())
    recall, same_hybrid = [], 0
    for text in texts:
        vector = indexed._embed(text)
        got, truth = (r._dense_candidates(vector, 100, None) for r in (indexed, flat))
        recall.append(len(set(got["chunk_id"]) & set(truth["chunk_id"])) / 100)
        exact = dict(zip(truth["chunk_id"], truth["scores"], strict=True))
        for chunk_id, score in zip(got["chunk_id"], got["scores"], strict=True):
            if chunk_id in exact:
                assert score == pytest.approx(exact[chunk_id], abs=1e-5)
        assert [h.chunk_id for h in indexed.search(text, 10, "dense")] == [
            h.chunk_id for h in flat.search(text, 10, "dense")
        ]
        hybrid = [(h.chunk_id, round(h.score, 5)) for h in indexed.search(text, 10)]
        same_hybrid += hybrid == [(h.chunk_id, round(h.score, 5)) for h in flat.search(text, 10)]
    assert np.mean(recall) >= 0.99, np.mean(recall)
    assert same_hybrid >= 0.95 * len(texts), (same_hybrid, len(texts))


def test_a_compressed_index_is_rescored_exactly(small_home, tmp_path, embedder):
    """An index over quantized vectors (not the one ensure_vector_index builds) gets
    LanceDB's refine step, so dense scores stay the exact cosines."""
    from lancedb.index import HnswSq

    home = _scaled_home(small_home, tmp_path)
    _open_table(home).create_index("vector", config=HnswSq(distance_type="cosine"))
    _promote_latest(home)
    indexed = Retriever.open(home, embedder=embedder)
    flat = Retriever.open(home, embedder=embedder)
    flat.vector_index = None
    assert indexed.vector_index and indexed._refine
    vector = indexed._embed("cerebral white matter development")
    plan = indexed._vector_search(vector, 10, None, ["chunk_id", "_distance"]).explain_plan()
    assert "KNNVectorDistance" in plan.split("ANNSubIndex")[0]  # the re-scoring above it
    for limit in (10, 100):
        got = indexed._dense_candidates(vector, limit, None)
        truth = flat._dense_candidates(vector, limit, None)
        assert got["chunk_id"][:5] == truth["chunk_id"][:5]
        assert got["scores"][:5] == pytest.approx(truth["scores"][:5], abs=1e-6)


def test_filtered_search_with_the_index(indexed_and_flat):
    indexed, flat = indexed_and_flat
    some = ["31715818", "4983", "5836"]
    for mode in ("dense", "hybrid"):
        hits = indexed.search("cerebral white matter", 30, mode, {"document_ids": some})
        assert hits and {h.document_id for h in hits} <= set(some)
        expected = flat.search("cerebral white matter", 30, mode, {"document_ids": some})
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in expected]


def test_hybrid_equals_fusing_the_full_lists(indexed_and_flat):
    """The hybrid search reads ids and scores first and the displayed columns last; its
    hits, all ~150 of them (keyword-only, dense-only and both), must be what fusing the
    two complete lists gives."""
    import numpy as np
    from lancedb.expr import col

    from qpbot_serving.retrieval import HYBRID_DENSE_WEIGHT, fuse

    indexed, _ = indexed_and_flat
    fields = [f for f in SearchHit.__dataclass_fields__ if f != "score"]
    for text in ("cerebral white matter development in preterm infants", "the of and"):
        vector = indexed._embed(text)  # the encoder itself: test_query_encoder_is_the_embedder
        keyword = indexed.keyword(text, 100)
        ids = [h.chunk_id for h in keyword]
        rows = (
            indexed.table.search().where(col("chunk_id").isin(ids)).select(["chunk_id", "vector"])
        )
        vectors = {r["chunk_id"]: r["vector"] for r in rows.limit(None).to_list()} if ids else {}
        cosines = {h.chunk_id: float(np.dot(vectors[h.chunk_id], vector)) for h in keyword}
        expected = fuse(indexed._dense(vector, 100, None), keyword, HYBRID_DENSE_WEIGHT, cosines)
        got = indexed.hybrid(text, 100)
        assert [h.chunk_id for h in got] == [h.chunk_id for h in expected]
        for hit, want in zip(got, expected, strict=True):
            assert {f: getattr(hit, f) for f in fields} == {f: getattr(want, f) for f in fields}
            assert hit.score == pytest.approx(want.score, abs=1e-6)
        dense_only = {h.chunk_id for h in expected} - set(vectors)
        assert dense_only  # so the rows read afterwards were exercised
        assert indexed.hybrid(text, 100, limit=7) == got[:7]


def test_query_encoder_is_the_embedder(retriever, embedder, monkeypatch):
    import numpy as np
    import torch

    from qpbot_serving import retrieval

    encoder = retriever.query_encoder
    texts = ["white matter", "  Spaces and CASE  ", "a very long query " * 80]
    for text in texts:
        assert np.abs(retriever._embed(text) - embedder.encode([text])[0]).max() <= 1e-5
    assert encoder.traced is not None, encoder.fallback_reason
    assert retrieval.query_encoder(embedder) is encoder  # traced once per model
    # Queries are embedded on threads of their own torch setting; the rest keeps its own.
    assert retrieval._QUERY_POOL.submit(torch.get_num_threads).result() == 1
    default = torch.get_num_threads()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as fresh:
        assert fresh.submit(torch.get_num_threads).result() == default

    # Any surprise while tracing falls back to the plain encoder.
    def broken(self):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(retrieval.QueryEncoder, "_trace", broken)
    plain = retrieval.QueryEncoder(embedder)
    assert np.array_equal(plain("white matter"), embedder.encode(["white matter"])[0])
    assert plain.traced is None and "cannot trace" in plain.fallback_reason
