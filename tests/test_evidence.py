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
    evidence_unit,
    score_units,
    select_evidence,
    split_units,
)
from qpbot_serving.retrieval import SearchHit


@pytest.fixture(scope="module")
def chunks(sample_documents, embedder) -> dict[str, list[SearchHit]]:
    """Each sample document's chunks (extracted, cleaned, chunked as ingestion does) as
    retrieved hits, by file name."""
    found = {}
    for path in sorted(sample_documents.iterdir()):
        document = clean_document(extract_document(path))
        title = document.properties.get("title") or path.stem
        found[path.name] = [
            SearchHit(
                chunk.chunk_id,
                path.name,
                title,
                chunk.section,
                chunk.page_start,
                chunk.page_end,
                chunk.text,
                None,
                1.0,
            )  # fmt: skip
            for chunk in chunk_blocks(document.blocks, path.name, embedder.tokenizer, 240)
        ]
    return found


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
    }
    units = [unit for hit in hits for unit in split_units(hit)]  # all of equal rank
    for question, expected in cases.items():
        scored = score_units(question, units, embedder.encode, embedder.encode([question])[0])
        best_two = [unit.prompt_text for unit in scored[:2]]
        assert any(text.startswith(expected) for text in best_two), (question, best_two)


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
