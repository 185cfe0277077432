from dataclasses import dataclass

from qpbot_serving.prompting import NO_ANSWER, build_messages, number_sources


@dataclass
class Hit:
    title: str
    page_start: int | None
    text: str


def test_sources_are_numbered_and_fit_the_budget():
    hits = [
        Hit("Handbook", 3, "a" * 400),
        Hit("Policy", None, "b" * 400),
        Hit("Notes", 1, "c" * 400),
    ]
    sources = number_sources(hits, max_characters=900)
    assert [s.number for s in sources] == [1, 2]
    system, user = build_messages("  How long?  ", sources)
    assert NO_ANSWER in system["content"] and "[1]" in system["content"]
    assert "[1] Handbook, page 3\n" in user["content"] and "[2] Policy\n" in user["content"]
    assert user["content"].endswith("Question: How long?")


def test_a_long_first_source_is_still_used_and_no_sources_are_said_so():
    assert len(number_sources([Hit("Big", 1, "x" * 10_000)], max_characters=100)) == 1
    assert "(no sources)" in build_messages("Q?", [])[1]["content"]
