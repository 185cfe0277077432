"""Answer-evaluation metrics and daily feedback figures on hand-made cases (no Dagster)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pandas as pd
import pytest

from qpbot_assets.learning.feedback_metrics import cited_sources, daily_metrics, daily_series
from qpbot_assets.learning.plots import grouped_bars, markdown_image
from qpbot_assets.learning.qa_eval import answer_coverage, evaluate_qa, read_qa_set
from qpbot_serving.answering import AnswerPolicy
from qpbot_serving.generation import OllamaGenerator
from qpbot_serving.prompting import NO_ANSWER
from qpbot_serving.retrieval import SearchHit
from qpbot_serving.text import content_words, token_f1


def test_content_words_drop_function_words_and_plurals():
    assert content_words("The filters of the Kestrel K2 are replaced every 3 months.") == {
        "filter",
        "kestrel",
        "k2",
        "replaced",
        "every",
        "3",
        "month",
    }
    assert content_words("glass is not plural") == {"glass", "plural"}


def test_answer_coverage_counts_reference_words_found():
    context = "In Eco mode the Kestrel K2 runs for 150 minutes on a full battery."
    assert answer_coverage("150 minutes", context) == 1.0
    assert answer_coverage("120 minutes", context) == 0.5
    assert answer_coverage("Side brush stuck", "the side brush is blocked") == pytest.approx(
        2 / 3, abs=1e-4
    )
    assert answer_coverage("Side brush stuck", "E4 means the side brush is stuck") == 1.0
    assert answer_coverage("the", "anything") == 1.0  # nothing to look for


def test_token_f1():
    assert token_f1("About 4 hours", "about 4 hours") == 1.0
    # common: "4", "hours" -> precision 2/3, recall 2/2
    assert token_f1("roughly 4 hours", "4 hours") == pytest.approx(0.8)
    assert token_f1("no idea", "4 hours") == 0.0
    assert token_f1("", "") == 1.0


def test_read_qa_set_rejects_rows_without_an_answer(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"question": "Q1?", "answer": "A1", "id": 7}\n\n{"question": "Q2?", "answer": "A2"}\n'
    )
    assert [item["question"] for item in read_qa_set(good)] == ["Q1?", "Q2?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q1?", "answer": " "}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_qa_set(bad)


class ListRetriever:
    """What evaluate_qa uses of a Retriever, over a fixed list of chunks (the real embedder)."""

    def __init__(self, texts: list[str], embedder):
        self.embedder = embedder
        self.query_encoder = lambda query: embedder.encode([query])[0]
        self.hits = [
            SearchHit(f"c{i}", f"doc{i}", f"Doc {i}", None, 1, 1, text, None, 1.0 - i / 10)
            for i, text in enumerate(texts)
        ]

    def search(self, query: str, k: int = 10, mode: str = "hybrid") -> list[SearchHit]:
        return self.hits[:k]


def test_evaluate_qa_context_and_generated_answer(embedder, streaming_server):
    retriever = ListRetriever(
        [
            "The Kestrel K2 charges fully in about 4 hours on its dock.",
            "Error E4 means the side brush is stuck.",
        ],
        embedder,
    )
    items = [
        {"question": "How long does charging take?", "answer": "About 4 hours"},
        {"question": "What does E4 mean?", "answer": "Side brush stuck"},
        {"question": "How heavy is the robot?", "answer": "3.2 kilograms"},
    ]
    # The prompt holds only the best unit of evidence for each question, as the service's.
    policy = AnswerPolicy("auto", context_tokens=16, min_evidence_score=0.0)  # never declines
    summary, results = evaluate_qa(retriever, items, k=2, policy=policy)
    assert [r.context_holds_answer for r in results] == [True, True, False]
    assert [r.retrieved_holds_answer for r in results] == [True, True, False]
    assert summary["context_holds_answer"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["retrieved_holds_answer"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["generated"] == 0 and summary["answer_similarity"] is None
    # the reference is closer to the chunk that holds it than an unrelated one is
    assert results[1].reference_chunk_cosine > results[2].reference_chunk_cosine

    # A real HTTP generator that always says "The answer is 42."
    url = f"http://127.0.0.1:{streaming_server.server_address[1]}"
    summary, results = evaluate_qa(
        retriever, items[:1], k=2, generator=OllamaGenerator(url, "fixed", 5.0), policy=policy
    )
    # "The answer is 42." rests on nothing: the answer is the quoted evidence, as served.
    assert results[0].answer_mode == "extractive" and results[0].grounded
    assert results[0].contains_reference and "about 4 hours" in results[0].generated
    assert summary["generated"] == 1 and summary["contains_reference"] == 1.0
    # The prompt carried the retrieved sources, as the service builds it.
    [(_, request)] = streaming_server.requests
    assert "[1] Doc 0" in request["messages"][-1]["content"]


def test_evaluate_qa_without_sources_gives_the_fixed_reply(embedder, streaming_server):
    url = f"http://127.0.0.1:{streaming_server.server_address[1]}"
    summary, [result] = evaluate_qa(
        ListRetriever([], embedder),
        [{"question": "Anything?", "answer": NO_ANSWER}],
        generator=OllamaGenerator(url, "fixed", 5.0),
        policy=AnswerPolicy("auto"),
    )
    assert result.generated == NO_ANSWER and streaming_server.requests == []
    assert result.answer_similarity == pytest.approx(1.0, abs=1e-4)
    assert summary["no_answer_replies"] == 1


def at(day: int, hour: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(2026, 11, day, hour, tzinfo=UTC))


def feedback_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    retrieved = [
        {"chunk_id": "a1", "document_id": "a", "score": 0.9},
        {"chunk_id": "b1", "document_id": "b", "score": 0.8},
    ]
    answers = pd.DataFrame(
        [
            # two answers on the 20th, one on the 21st (and one just before midnight)
            ("q1", at(20, 9), "Cited [2].", None, {"retrieval": 10.0, "generation": 1000.0}),
            ("q2", at(20, 10), "No markers.", None, {"retrieval": 30.0, "generation": 3000.0}),
            ("q3", at(20, 23), None, "generator down", {"retrieval": 20.0}),
            ("q4", at(21, 1), "Cited [1] and [9].", None, {"retrieval": 5.0}),
        ],
        columns=["answer_id", "created_at", "answer", "error", "latency_ms"],
    )
    answers["retrieved"] = [retrieved] * len(answers)
    feedback = pd.DataFrame(
        [
            ("f1", "q1", at(20, 11), "down"),
            ("f2", "q1", at(20, 12), "up"),  # changed mind: the later rating counts
            ("f3", "q2", at(20, 12), "down"),
            ("f4", "q4", at(21, 2), "up"),
        ],
        columns=["feedback_id", "answer_id", "created_at", "rating"],
    )
    return answers, feedback


def test_cited_sources_follow_markers_else_all():
    retrieved = [{"chunk_id": "a1"}, {"chunk_id": "b1"}]
    assert cited_sources("See [2].", retrieved) == [{"chunk_id": "b1"}]
    assert cited_sources("See [7].", retrieved) == retrieved  # no valid marker
    assert cited_sources(None, retrieved) == retrieved
    assert cited_sources(float("nan"), retrieved) == retrieved  # how pandas reads a None
    assert cited_sources("x", None) == []


def test_daily_metrics_of_one_day():
    answers, feedback = feedback_tables()
    day = daily_metrics(answers, feedback, date(2026, 11, 20))
    assert (day["answers"], day["errors"]) == (3, 1)
    assert (day["ratings"], day["up"], day["down"]) == (2, 1, 1)
    assert day["thumbs_up_rate"] == 0.5
    assert day["latency_ms"]["retrieval"]["p50"] == 20.0
    assert day["latency_ms"]["generation"] == {"p50": 2000.0, "p90": 2800.0, "p99": 2980.0}
    # q1 (up) cites [2] -> b; q2 (down) has no markers -> a and b
    assert day["top_documents"] == {"good": [["b", 1]], "bad": [["a", 1], ["b", 1]]}
    assert day["top_chunks"]["good"] == [["b1", 1]]

    next_day = daily_metrics(answers, feedback, date(2026, 11, 21))
    assert (next_day["answers"], next_day["thumbs_up_rate"]) == (1, 1.0)
    assert next_day["top_documents"]["good"] == [["a", 1]]  # [9] is out of range

    empty = daily_metrics(answers, feedback, date(2026, 11, 22))
    assert empty["answers"] == 0 and empty["thumbs_up_rate"] is None and empty["latency_ms"] == {}
    none = daily_metrics(answers.iloc[0:0], feedback.iloc[0:0], date(2026, 11, 20))
    assert none["answers"] == 0 and none["ratings"] == 0


def test_daily_series_and_its_plot():
    answers, feedback = feedback_tables()
    series = daily_series(answers, feedback, date(2026, 11, 22), days=4)
    assert list(series["answers"]) == [0, 3, 1, 0]
    assert series["thumbs_up_rate"].tolist()[1:3] == [0.5, 1.0]
    assert series["thumbs_up_rate"].isna().tolist() == [True, False, False, True]
    png = grouped_bars({"set": {"dense": 0.5, "hybrid": 0.7}}, "t", "nDCG@10")
    assert png.startswith(b"\x89PNG")
    assert markdown_image(png, "plot").startswith("![plot](data:image/png;base64,iVBOR")
