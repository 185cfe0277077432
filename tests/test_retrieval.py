"""The retriever on a real LanceDB index of 200 SciFact abstracts, with the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qpbot_assets.beir import index_beir_corpus, indexed_corpus
from qpbot_serving import index as contract
from qpbot_serving.evaluation import (
    evaluate_rankings,
    evaluate_retriever,
    read_qrels,
    read_queries,
)
from qpbot_serving.retrieval import IndexNotReady, Retriever, SearchHit
from qpbot_serving.settings import resolve_model_path

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
    return Retriever.open(small_home / "index", embedder=embedder)


def test_index_follows_the_contract(small_home, small_beir):
    promoted = contract.read_promoted(small_home / "index")
    assert promoted.table == contract.table_name_for(MODEL)
    assert promoted.documents == promoted.chunks == DOCS
    table = contract.connect(small_home / "index").open_table(promoted.table)
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
    opened = Retriever.open(tmp_path / "index")
    assert opened.embedder.model_name == model_path
    assert opened.promoted.table == contract.table_name_for(model_path)
    assert len(opened.search("white matter", 3, "dense")) == 3
    with pytest.raises(ValueError, match="was embedded with"):
        Retriever.open(tmp_path / "index", embedder=embedder)  # same weights, another name


def test_index_not_ready_without_pointer(tmp_path):
    with pytest.raises(IndexNotReady, match="qpbot ingest"):
        Retriever.open(tmp_path / "index")


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
    env = {**os.environ, "QPBOT_HOME": str(small_home / "unused")}
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

    contract.write_promoted(
        tmp_path / "index",
        table="chunks__x",
        version=1,
        embedding_model=MODEL,
        dimension=384,
        chunks=1,
        documents=1,
    )
    argv = ["eval", "retrieval", "--home", str(tmp_path), "--json"]
    for name in ("corpus", "queries", "qrels"):
        argv += [f"--{name}", str(small_beir[name])]
    assert main(argv) == 2
    assert "holds a document index" in capsys.readouterr().err
    assert contract.read_promoted(tmp_path / "index").table == "chunks__x"
