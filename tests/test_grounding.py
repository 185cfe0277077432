"""The citation check and the extractive answer, on evidence units as the prompt shows them."""

from dataclasses import replace

from qpbot_serving.evidence import EvidenceUnit
from qpbot_serving.grounding import check_answer, extractive_answer, highlights, is_no_answer
from qpbot_serving.prompting import NO_ANSWER


def unit(number, text, score=0.5, position=0, **fields):
    return EvidenceUnit(
        chunk_id=f"chunk-{number}", document_id="doc", title=fields.pop("title", "Policy"),
        section=fields.pop("section", None), page=fields.pop("page", None),
        kind=fields.pop("kind", "sentence"), start=0, end=len(text), text=text,
        position=position, score=score, number=number, **fields,
    )  # fmt: skip


EVIDENCE = [
    unit(1, "You may return a product within 30 days of delivery for a full refund.", 0.8),
    unit(
        2,
        "Battery KB-52 | 12 months | Or 300 charge cycles",
        0.6,
        kind="table_row",
        header="Component | Warranty period | Notes",
    ),  # fmt: skip
]


def test_a_supported_sentence_keeps_a_corrected_citation():
    checked = check_answer(
        "You can return it within 30 days [2].", "Within how many days can I return it?", EVIDENCE
    )
    assert checked.grounded and checked.text == "You can return it within 30 days [1]."
    assert checked.markers_corrected == 1 and checked.evidence == [0]


def test_a_marker_to_a_missing_source_is_removed_and_a_missing_one_added():
    scored_for_the_question = [replace(EVIDENCE[0], score=0.3), replace(EVIDENCE[1], score=0.8)]
    checked = check_answer(
        "The battery warranty period is 12 months [7].",
        "How long is the battery warranty?",
        scored_for_the_question,
    )
    assert checked.text == "The battery warranty period is 12 months [2]."
    assert checked.markers_removed == 1 and checked.grounded


def test_a_sentence_no_evidence_supports_is_dropped():
    checked = check_answer(
        "You can return it within 30 days [1]. The robot also mops floors with hot steam [1].",
        "Within how many days can I return it?",
        EVIDENCE,
    )
    assert checked.text == "You can return it within 30 days [1]."
    assert checked.dropped == ["The robot also mops floors with hot steam."]


def test_a_wrong_number_is_not_supported_even_with_the_right_words():
    checked = check_answer(
        "You may return a product within 12 days of delivery [1].",
        "Within how many days can I return it?",
        EVIDENCE,
    )
    assert not checked.grounded and checked.text == ""


def test_a_true_fact_from_evidence_that_answers_less_well_is_no_support():
    evidence = [
        unit(1, "The battery lasts up to 150 minutes in Eco mode.", 0.8),
        unit(2, "A full charge takes about 4 hours.", 0.5),
    ]
    question = "How long does the battery last in Eco mode?"
    assert not check_answer("The battery lasts 4 hours in Eco mode.", question, evidence).grounded
    assert check_answer("It lasts up to 150 minutes.", question, evidence).grounded


def test_an_answer_that_only_restates_the_question_is_not_grounded():
    assert not check_answer(
        "The battery warranty is", "How long is the battery warranty?", EVIDENCE
    ).grounded


def test_the_no_answer_reply_is_a_decline():
    checked = check_answer(NO_ANSWER + " [1]", "What is the price?", EVIDENCE)
    assert checked.declined and not checked.grounded and checked.text == NO_ANSWER
    assert is_no_answer("the documents I have do not answer this question")


def test_the_extractive_answer_quotes_the_best_unit_with_its_source():
    question = "When is a refund paid?"
    text, quoted = extractive_answer(EVIDENCE, question)
    assert quoted == [EVIDENCE[0]]
    assert text == f"Policy: “{EVIDENCE[0].text}” [1]"
    close = [EVIDENCE[0], unit(2, "Refunds are paid within 14 days.", 0.75)]
    assert len(extractive_answer(close, question)[1]) == 2  # nearly as good: quoted too
    same_source = [EVIDENCE[0], unit(1, "Refunds are paid within 14 days.", 0.75, position=1)]
    assert extractive_answer(same_source, question)[0] == (
        f"Policy: “{EVIDENCE[0].text}” … “Refunds are paid within 14 days.” [1]"
    )


def test_a_unit_that_answers_another_question_is_not_quoted_beside_the_best():
    header = "Code | Meaning"
    e4 = unit(1, "E4 | Side brush stuck", 0.6, kind="table_row", header=header, position=3)
    e6 = unit(1, "E6 | Cliff sensor error", 0.58, kind="table_row", header=header, position=5)
    # E6 scores nearly as well ("error", "code") but lacks the "E4" the question names.
    text, quoted = extractive_answer([e4, e6], "What does error code E4 mean?")
    assert quoted == [e4] and "E6" not in text
    # Rows of one table answer one question each: the neighbour that holds no more of the
    # question than the best row is not quoted either.
    limits = "Amount | Approved by"
    over = unit(1, "Over 2,500 EUR | The CFO", 0.8, kind="table_row", header=limits)
    below = unit(1, "500 to 2,500 EUR | Department head", 0.78, kind="table_row", header=limits)
    assert extractive_answer([over, below], "Who approves 2,500 EUR?")[1] == [over]
    # Sentences that hold all the question's words the best one holds are quoted together.
    new = unit(1, "New: no-go zones and virtual walls.", 0.64, section="Firmware 2.3")
    draw = unit(
        1, "Draw up to 10 no-go zones on the map.", 0.61, position=1, section="Firmware 2.3"
    )
    assert extractive_answer([new, draw], "Which version added no-go zones?")[1] == [new, draw]


def test_two_quotes_of_one_source_keep_the_documents_order():
    refund = unit(1, "We refund the price within 14 days.", 0.9, position=1)
    returns = unit(1, "You may return a product within 30 days.", 0.85, position=0)
    text, quoted = extractive_answer([refund, returns], "Within how many days?")
    assert quoted == [refund, returns]  # best first
    assert text.index("30 days") < text.index("14 days")  # as the policy says them


def test_highlights_mark_the_answers_words_not_the_questions():
    quote = EVIDENCE[1].prompt_text
    spans = highlights(quote, "The warranty is 12 months [2].", {"warranty", "battery"})
    assert [quote[a:b] for a, b in spans] == ["12", "months"]
