"""How an answer is chosen (qpbot_serving.answering), on hand-made retrieved chunks, the real
embedder, and a generator that says what the test scripts."""

from __future__ import annotations

import pytest

from qpbot_serving.answering import Answerer, AnswerPolicy
from qpbot_serving.generation import DeadlinePassed
from qpbot_serving.prompting import NO_ANSWER
from qpbot_serving.retrieval import SearchHit

HITS = [
    SearchHit("c1", "policy", "Warranty Policy", "1. Returns", 1, 1,
              "You may return a product within 30 days of delivery for a full refund.", None, 0.9),
    SearchHit("c2", "handbook", "Handbook", "2 Battery", 3, 3,
              "A full charge takes about 4 hours on the dock.", None, 0.5),
]  # fmt: skip
QUESTION = "Within how many days can I return a product?"


class ScriptedGenerator:
    """Streams a fixed text (or fails with `error`); counts words as tokens."""

    model_name = "scripted"

    def __init__(self, text: str = "", error: Exception | None = None):
        self.text, self.error, self.calls = text, error, 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages, max_new_tokens, deadline=None):
        self.calls += 1
        yield from self.text.split(" ")[:1]
        if self.error:
            raise self.error
        for word in self.text.split(" ")[1:]:
            yield " " + word


def answer(embedder, generator, **policy):
    answerer = Answerer(
        generator,
        AnswerPolicy(**{"mode": "auto", **policy}),
        embedder.encode,
        lambda q: embedder.encode([q])[0],
    )
    return answerer.answer(QUESTION, HITS)


def test_a_grounded_draft_is_the_answer(embedder):
    finished = answer(embedder, ScriptedGenerator("You can return it within 30 days."))
    assert finished.mode == "generative" and finished.grounded
    assert finished.text == "You can return it within 30 days [1]."
    assert [finished.evidence[i].chunk_id for i in finished.cited] == ["c1"]


@pytest.mark.parametrize(
    "generator",
    [ScriptedGenerator("Returns are free for 90 days."), ScriptedGenerator(NO_ANSWER)],
    ids=["ungrounded", "declined"],
)
def test_auto_quotes_strong_evidence_when_the_draft_does_not_stand(embedder, generator):
    finished = answer(embedder, generator, min_quote_score=0.0)
    assert finished.mode == "extractive" and finished.grounded and "30 days" in finished.text
    assert finished.fallback and finished.generated == generator.text
    assert finished.fallback_kind == ("declined" if generator.text == NO_ANSWER else "ungrounded")


def test_auto_declines_when_the_draft_fails_over_weak_evidence(embedder):
    finished = answer(
        embedder, ScriptedGenerator("Returns are free for 90 days."), min_quote_score=0.99
    )
    assert finished.mode == "declined" and finished.text == NO_ANSWER and not finished.grounded
    assert finished.dropped == ["Returns are free for 90 days."]
    assert finished.fallback_kind == "weak_evidence"


def test_a_generator_past_its_deadline_still_gives_the_quote(embedder):
    generator = ScriptedGenerator("You can", error=DeadlinePassed("too slow"))
    finished = answer(embedder, generator, min_quote_score=0.0)
    assert finished.mode == "extractive" and "deadline" in finished.error
    assert finished.fallback_kind == "deadline"


def test_generative_mode_never_quotes(embedder):
    finished = answer(
        embedder, ScriptedGenerator("Returns are free for 90 days."), mode="generative"
    )
    assert finished.mode == "generative" and not finished.grounded and finished.text == NO_ANSWER


def test_extractive_mode_and_weak_evidence_call_no_generator(embedder):
    generator = ScriptedGenerator("unused")
    quoted = answer(embedder, generator, mode="extractive")
    assert quoted.mode == "extractive" and "30 days" in quoted.text
    declined = answer(embedder, generator, min_evidence_score=0.99)
    assert declined.mode == "declined" and generator.calls == 0


def test_a_question_for_a_kind_of_answer_the_evidence_lacks_is_declined(embedder):
    """No retrieved text states a price, so the answer declines without a model call,
    however well "dock" matches."""
    generator = ScriptedGenerator("unused")
    answerer = Answerer(
        generator, AnswerPolicy(mode="auto"), embedder.encode, lambda q: embedder.encode([q])[0]
    )
    finished = answerer.answer("How much does the dock cost?", HITS)
    assert finished.mode == "declined" and finished.text == NO_ANSWER and generator.calls == 0
    answered = answerer.answer("How long does a full charge take on the dock?", HITS)
    assert answered.mode != "declined" and generator.calls == 1
