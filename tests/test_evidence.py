"""Evidence units and their selection, on text extracted and chunked from the real sample
documents (a PDF handbook with tables, a DOCX policy with a table and list paragraphs,
Markdown with tables and lists, HTML release notes) and scored with the real embedder."""

from __future__ import annotations

import pytest

from qpbot_assets.documents.chunking import chunk_blocks
from qpbot_assets.documents.cleaning import clean_document
from qpbot_assets.documents.extraction import extract_document
from qpbot_serving.evidence import (
    EvidenceUnit,
    adapted_budget,
    answer_type,
    drop_repeated_units,
    evidence_unit,
    score_units,
    select_evidence,
    split_units,
)
from qpbot_serving.grounding import extractive_answer
from qpbot_serving.retrieval import SearchHit


def chunk_hits(path, embedder, max_tokens: int = 240, overlap_tokens: int = 32):
    """A sample document's chunks (extracted, cleaned, chunked as ingestion does) as
    retrieved hits."""
    document = clean_document(extract_document(path))
    title = document.properties.get("title") or path.stem
    pieces = chunk_blocks(
        document.blocks, path.name, embedder.tokenizer, max_tokens, overlap_tokens
    )
    return [
        SearchHit(
            c.chunk_id, path.name, title, c.section, c.page_start, c.page_end, c.text, None, 1.0
        )  # fmt: skip
        for c in pieces
    ]


@pytest.fixture(scope="module")
def chunks(sample_documents, embedder) -> dict[str, list[SearchHit]]:
    """Each sample document's chunks as retrieved hits, by file name."""
    return {path.name: chunk_hits(path, embedder) for path in sorted(sample_documents.iterdir())}


def units_of(hits: list[SearchHit]) -> list[EvidenceUnit]:
    return [unit for rank, hit in enumerate(hits) for unit in split_units(hit, rank)]


def find(units: list[EvidenceUnit], starting: str) -> EvidenceUnit:
    matches = [unit for unit in units if unit.prompt_text.startswith(starting)]
    assert matches, f"no unit starts with {starting!r}: {[u.prompt_text for u in units]}"
    return matches[0]


def test_a_markdown_table_row_keeps_its_header_and_offsets(chunks):
    hits = chunks["travel-and-expense-policy.md"]
    paris = find(units_of(hits), "City: Paris")
    assert paris.kind == "table_row"
    assert paris.prompt_text == "City: Paris; Per diem: 52 EUR; Hotel limit per night: 190 EUR"
    chunk = next(hit for hit in hits if hit.chunk_id == paris.chunk_id)
    assert chunk.text[paris.start : paris.end] == "| Paris | 52 EUR | 190 EUR |"
    assert paris.section == "2. Per-diem allowances and hotel limits"
    # The separator line and the header are not units of their own.
    assert not [u for u in units_of(hits) if set(u.text) <= set("|- ")]


def test_markdown_list_items_are_units(chunks):
    items = [u for u in units_of(chunks["travel-and-expense-policy.md"]) if u.kind == "list_item"]
    flights = find(items, "- Book flights at least 14 days before departure.")
    assert flights.text == "- Book flights at least 14 days before departure."
    # A wrapped item keeps its continuation line.
    assert find(items, "- Book all flights").text.endswith("at least 10 percent cheaper.")


def test_docx_table_rows_and_paragraph_items(chunks):
    units = units_of(chunks["warranty-and-returns-policy.docx"])
    battery = find(units, "Component: Battery KB-52")
    assert battery.kind == "table_row"
    assert "Warranty period: 12 months" in battery.prompt_text
    # The list of exclusions: each item its own unit, not one paragraph.
    find(units, "Damage caused by liquids, falls, or use outdoors.")
    find(units, "Commercial use, for example by cleaning companies or in hotels.")


def test_pdf_table_rows_keep_their_header(chunks):
    units = units_of(chunks["kestrel-k2-user-handbook.pdf"])
    e4 = find(units, "Code: E4")
    assert e4.kind == "table_row" and "Meaning: Side brush stuck" in e4.prompt_text
    assert e4.page == 6
    find(units, "Part: HEPA filter KF-12")


def test_sentences_do_not_end_at_abbreviations_or_decimals(chunks):
    units = units_of(chunks["data-privacy-notice.md"])
    officer = find(units, "Our Data Protection Officer is Dr. Lena Hartmann")
    assert officer.text.endswith('marked "Data Protection Officer".')
    handbook = units_of(chunks["kestrel-k2-user-handbook.pdf"])
    wifi = find(handbook, "The Kestrel K2 connects to 2.4 GHz Wi-Fi networks only")
    assert wifi.text.endswith("5 GHz networks are not supported.")


def test_the_unit_that_answers_ranks_near_the_top(chunks, embedder):
    hits = [hit for name in sorted(chunks) for hit in chunks[name]]
    cases = {
        "What is the hotel limit per night in Paris?": "City: Paris",
        "When was firmware 2.2 released?": "Released 2025-12-04",
        "How long is the warranty on the Kestrel K2 battery?": "Component: Battery KB-52",
        "Who is the Data Protection Officer?": "Our Data Protection Officer is",
        # "more than 2,500" is the row "Over 2,500 EUR", not "500 to 2,500 EUR".
        "Who has to approve a business expense of more than 2,500 EUR?": "Amount per trip or "
        "expense: Over 2,500 EUR",
        # "reimbursed" finds "Reimbursement" (a prefix), although another item says
        # "reimbursed".
        "When are expenses reimbursed?": "- Reimbursement is paid",
    }
    units = [unit for hit in hits for unit in split_units(hit)]  # all of equal rank
    for question, expected in cases.items():
        scored = score_units(question, units, embedder.encode, embedder.encode([question])[0])
        best_two = [unit.prompt_text for unit in scored[:2]]
        assert any(text.startswith(expected) for text in best_two), (question, best_two)


def select(question: str, hits, embedder):
    return select_evidence(
        question,
        hits,
        lambda text: len(text.split()),
        300,
        embedder.encode,
        embedder.encode([question])[0],
    )


def test_the_quote_carries_the_row_asked_about_not_its_neighbour(chunks, embedder):
    """The row E6 ("Cliff sensor error") scores nearly as well as E4 for this question (it
    holds "error"), but it answers another question: only the E4 row is quoted."""
    hits = [hit for name in sorted(chunks) for hit in chunks[name]]
    question = "What does error code E4 mean on the Kestrel K2?"
    text, quoted = extractive_answer(select(question, hits, embedder).units, question)
    assert [unit.prompt_text.split(";")[0] for unit in quoted] == ["Code: E4"], text
    assert "Side brush stuck" in text and "E6" not in text


def test_a_row_of_a_continued_table_is_quoted_whole_with_its_header(chunks, embedder):
    """The error-code table is longer than a chunk: E8 is in the chunk that continues it,
    under the table's header row that the chunker repeats there."""
    hits = chunks["kestrel-k2-user-handbook.pdf"]
    units = units_of(hits)
    [e8] = [unit for unit in units if unit.text.startswith("E8 |")]
    [e1] = [unit for unit in units if unit.text.startswith("E1 |")]
    assert e8.chunk_id != e1.chunk_id
    assert e8.kind == "table_row" and e8.text.endswith("let it rest for one hour.")
    assert e8.prompt_text.startswith("Code: E8; Meaning: Battery temperature out of range")
    question = "What does error code E8 on the Kestrel K2 mean?"
    text, _ = extractive_answer(select(question, hits, embedder).units, question)
    assert "What to do: Move the robot to a room between 0 and 40 °C" in text


def test_sentences_two_chunks_share_are_candidates_once(sample_documents, embedder):
    """Windows of the warranty policy's long paragraphs overlap by whole sentences: each is
    a candidate once, from the chunk listed first."""
    hits = chunk_hits(sample_documents / "warranty-and-returns-policy.docx", embedder, 48, 24)
    units = units_of(hits[::-1])  # the later chunk ranked first
    kept = drop_repeated_units(units)
    assert len(kept) < len(units)
    assert {u.prompt_text for u in kept} == {u.prompt_text for u in units}
    assert len({u.prompt_text for u in kept}) == len(kept)
    first_chunk = {}
    for unit in units:
        first_chunk.setdefault(unit.prompt_text, unit.chunk_id)
    assert all(u.chunk_id == first_chunk[u.prompt_text] for u in kept)


def test_a_unit_that_only_repeats_the_question_has_no_lexical_score(chunks):
    [title] = [
        u for u in units_of(chunks["kestrel-k2-user-handbook.pdf"]) if u.text == "Kestrel K2"
    ]
    [scored] = score_units("What is the price of the Kestrel K2?", [title])
    assert scored.lexical == 0.0


def test_selection_fits_the_budget_brings_the_neighbour_and_numbers_sources(chunks):
    hits = chunks["warranty-and-returns-policy.docx"]

    def count(text: str) -> int:
        return len(text.split())

    selection = select_evidence("How much does Northwind Care+ cost?", hits, count, 60)
    texts = [unit.text for unit in selection.units]
    costs = next(i for i, text in enumerate(texts) if text.startswith("It costs 49 EUR"))
    # "It costs ..." leans on the sentence before it, which comes along, in reading order.
    assert texts[costs - 1].startswith("Northwind Care+ extends the warranty")
    assert selection.prompt_tokens <= 60
    assert sum(count(u.prompt_text) + 2 for u in selection.units) == selection.prompt_tokens
    assert selection.units[0].number == 1
    numbers = [unit.number for unit in selection.units]
    assert numbers == sorted(numbers)  # grouped by source, best source first


def test_a_logged_unit_comes_back_the_same(chunks):
    unit = units_of(chunks["travel-and-expense-policy.md"])[3]
    logged = {**unit.__dict__, "quote": unit.prompt_text, "cited": True, "highlights": []}
    assert evidence_unit(logged) == unit


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How long is the warranty on the Kestrel K2?", ("duration", None)),
        ("Within how many days can I return it?", ("duration", None)),
        ("How much does a replacement HEPA filter cost?", ("money", None)),
        ("What is the daily meal allowance?", ("money", None)),
        ("How many employees does Northwind Robotics have?", ("count", "employe")),
        ("What is the maximum driving speed in km/h?", ("unit", "km/h")),
        ("How much dust does the dustbin hold?", ("quantity", None)),
        ("How loud is it in Max mode?", ("quantity", None)),
        ("Who is the Data Protection Officer?", ("person", None)),
        ("To whom do I send the form?", ("person", None)),
        ("Which firmware version added no-go zones?", ("version", None)),
        ("In which release was the E6 error fixed?", ("version", None)),
        ("Which languages did firmware 2.4 add?", None),
        ("How does BERT's architecture facilitate the use of a unified model?", None),
    ],
)
def test_the_kind_of_answer_a_question_asks_for(question, kind):
    assert answer_type(question) == kind


def test_a_unit_with_the_asked_kind_of_answer_outranks_one_without(chunks, embedder):
    units = [u for name in sorted(chunks) for hit in chunks[name] for u in split_units(hit)]
    cases = {
        # The scope sentence names "Kestrel K2"; the table rows say how long.
        "How long is the warranty on the Kestrel K2?": "Warranty period: ",
        # "shake out dust" holds the rarest word; the amount is in the other sentence.
        "How much dust does the dustbin of the Kestrel K2 hold?": "400 ml",
        # "weigh" finds "Weight" (a prefix), as no unit says "weigh".
        "How much does the Kestrel K2 weigh?": "Weight; Value: 3.6 kg",
    }
    for question, expected in cases.items():
        scored = score_units(question, units, embedder.encode, embedder.encode([question])[0])
        assert expected in scored[0].prompt_text, (question, scored[0].prompt_text)


@pytest.mark.parametrize(
    ("question", "found"),
    [
        ("How many employees does Northwind Robotics have?", False),  # "employees only"
        ("How much does a replacement HEPA filter cost?", False),  # only Care+ has a price
        ("What is the maximum driving speed of the Kestrel K2 in km/h?", False),
        ("How much does Northwind Care+ cost?", True),
        ("How many cleaning schedules can I create in the app?", True),
        ("How long does it take to fully charge the Kestrel K2?", True),
        # Names and versions are everywhere: the unit must also hold the question's rarest
        # word ("CEO", "5 GHz" with a version).
        ("Who is the CEO of Northwind Robotics?", False),
        ("Which firmware version added support for 5 GHz Wi-Fi?", False),
        ("Who is the Data Protection Officer of Northwind Robotics?", True),
        ("Who approves a business expense between 500 and 2,500 EUR?", True),
        ("Who do I contact with questions about travel?", True),  # an e-mail address
        ("Which Kestrel K2 firmware version added no-go zones?", True),  # in the heading
    ],
)
def test_whether_the_prompt_holds_the_kind_of_answer_asked_for(chunks, embedder, question, found):
    hits = [hit for name in sorted(chunks) for hit in chunks[name]]
    selection = select(question, hits, embedder)
    assert selection.answer_type == answer_type(question)[0]
    assert selection.answer_type_found is found, [u.prompt_text for u in selection.units]


def test_flat_scores_grow_the_budget():
    def scored(*scores):
        return [EvidenceUnit("c", "d", None, None, None, "sentence", 0, 1, "x", i, score=s)
                for i, s in enumerate(scores)]  # fmt: skip

    standing_out = scored(0.9, 0.5, 0.45, 0.4, 0.4, 0.3)  # 5th at less than half the best
    assert adapted_budget(300, standing_out) == 300
    assert adapted_budget(300, scored(0.5, 0.5, 0.5, 0.5, 0.5)) == 600  # all alike
    assert adapted_budget(300, scored(0.8, 0.7, 0.7, 0.6, 0.6)) == 450  # halfway
    assert adapted_budget(300, scored(0.8, 0.7)) == 300  # too few to tell
