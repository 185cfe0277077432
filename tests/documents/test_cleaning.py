"""clean_text and clean_document: characters, hyphenation, whitespace, running lines."""

from __future__ import annotations

import pymupdf
import pytest

from qpbot_assets.documents.cleaning import clean_document, clean_text
from qpbot_assets.documents.extraction import ExtractedDocument, TextBlock, extract_document


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("infor-\nmation", "information"),
        ("ef-  \n   ficient", "efficient"),
        ("Über-\nsetzung", "Übersetzung"),
        ("left-to-\nright", "left-to-right"),  # a compound keeps its hyphens
        ("non-\nEuropean", "non-\nEuropean"),  # a capital does not continue a word
        ("1990-\n2000", "1990-\n2000"),
        ("hy\u00adphen\u00ad\nated", "hyphenated"),  # soft hyphens
        ("\ufb01ne \ufb02ow o\ufb03ce", "fine flow office"),  # ligatures
        ("\uff21\uff22\uff23 \u2460", "ABC 1"),  # NFKC: full-width, circled digits
        ("zero\u200bwidth\ufeff bom\u200e mark", "zerowidth bom mark"),
        ("bell\x07 null\x00 esc\x1b", "bell null esc"),
        ("unknown \ufffd glyph", "unknown glyph"),
        ("tabs\tand   spaces", "tabs and spaces"),
        ("  padded line  \n\tnext  ", "padded line\nnext"),
        ("one\n\n\n\n\ntwo", "one\n\ntwo"),
        ("one\n  \n\t\ntwo", "one\n\ntwo"),
        ("windows\r\nline\rends", "windows\nline\nends"),
        ("form\ffeed\u2028separator", "form\nfeed\nseparator"),
        (
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        ),
        ("", ""),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def page_blocks(page: int, *texts: str) -> list[TextBlock]:
    return [TextBlock(text, page) for text in texts]


def pdf_document(blocks: list[TextBlock]) -> ExtractedDocument:
    pages = max(block.page for block in blocks)
    return ExtractedDocument("pdf", blocks, pages, {})


# Page bodies of realistic length: the edges hold at most a third of a page.
BODIES = [
    "\n".join(f"{subject} line {line}: something only this page says." for line in range(6))
    for subject in ("Apples", "Bees", "Cats", "Dogs", "Eels")
]


def test_running_headers_footers_and_page_numbers_are_removed():
    blocks = []
    for page, body in enumerate(BODIES, start=1):
        blocks += page_blocks(
            page, "ACME Corp \u2014 Annual Report 2024", body, f"Page {page} of 5\n{page}"
        )
    blocks.insert(1, TextBlock("Only on the first page", 1))

    cleaned = clean_document(pdf_document(blocks))

    assert [(block.text, block.page) for block in cleaned.blocks] == [
        ("Only on the first page", 1),
        *[(body, page) for page, body in enumerate(BODIES, start=1)],
    ]


def test_line_repeated_in_the_middle_of_pages_is_kept():
    blocks = []
    for page in range(1, 5):
        blocks += page_blocks(page, f"Top {page}", "a", "b", "c", "Repeated", "d", "e", "f")
    cleaned = clean_document(pdf_document(blocks))
    assert sum(block.text == "Repeated" for block in cleaned.blocks) == 4


def test_line_on_fewer_than_half_the_pages_is_kept():
    blocks = []
    for page in range(1, 7):
        header = "Chapter two" if page in (3, 4) else f"Unique header {chr(64 + page)}"
        blocks += page_blocks(page, header, f"Body {page}")
    cleaned = clean_document(pdf_document(blocks))
    assert sum(block.text == "Chapter two" for block in cleaned.blocks) == 2


def test_two_page_documents_keep_their_repeated_lines():
    blocks = page_blocks(1, "Memo", "First page") + page_blocks(2, "Memo", "Second page")
    cleaned = clean_document(pdf_document(blocks))
    assert [block.text for block in cleaned.blocks] == ["Memo", "First page", "Memo", "Second page"]


def test_pages_that_only_repeat_are_not_blanked():
    blocks = [TextBlock("The same poem on every page", page) for page in range(1, 5)]
    cleaned = clean_document(pdf_document(blocks))
    assert len(cleaned.blocks) == 4


def test_docx_pages_are_left_alone():
    # Word headers are read once from their own parts; body lines that repeat are content.
    blocks = [TextBlock(f"P{page}", page) for page in range(1, 5)]
    doc = ExtractedDocument("docx", blocks + [TextBlock("More", 4)], 4, {})
    assert [block.text for block in clean_document(doc).blocks] == ["P1", "P2", "P3", "P4", "More"]


def test_clean_document_cleans_headings_drops_empty_blocks_and_keeps_the_rest():
    doc = ExtractedDocument(
        "markdown",
        [
            TextBlock("  \u00ad\u200b ", 1, "Intro"),
            TextBlock("Real \ufb01ndings", 1, "  Re-\nsults\t"),
        ],
        1,
        {"title": "T"},
    )

    cleaned = clean_document(doc)

    assert cleaned.blocks == [TextBlock("Real findings", 1, "Results")]
    assert (cleaned.format, cleaned.page_count, cleaned.properties) == (
        "markdown",
        1,
        {"title": "T"},
    )


def test_extracted_pdf_loses_running_lines_and_joins_hyphenated_words(tmp_path):
    pdf = pymupdf.open()
    for number, body in enumerate(BODIES, start=1):
        page = pdf.new_page()
        page.insert_text((72, 40), "Journal of Examples, Vol. 7")
        subject = body.split()[0]
        lines = [*body.split("\n"), f"{subject} are about infor-", "mation retrieval."]
        for index, line in enumerate(lines):
            page.insert_text((72, 200 + 14 * index), line)
        page.insert_text((280, 800), f"- {number} -")
    pdf.save(tmp_path / "journal.pdf")

    cleaned = clean_document(extract_document(tmp_path / "journal.pdf"))

    assert [block.text for block in cleaned.blocks] == [
        f"{body}\n{body.split()[0]} are about information retrieval." for body in BODIES
    ]
