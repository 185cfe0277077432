"""Extraction and cleaning over the real corpus in ../shared/data: every file either gives
text or is refused with the kind its manifest entry calls for."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import need
from corpus_expectations import UNREADABLE  # shared with the pipeline test

from qpbot_assets.documents.cleaning import clean_document, clean_text
from qpbot_assets.documents.extraction import (
    ExtractedDocument,
    UnreadableDocument,
    extract_document,
)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
DOCS = SHARED_DATA / "docs"
ARAGOG_PAPERS = SHARED_DATA / "aragog" / "papers"


# User passwords the manifest names: with them, encrypted PDFs open.
KNOWN_PASSWORDS = {
    "pdf/encrypted/pypdf__libreoffice-writer-password.pdf": "openpassword",
    "pdf/encrypted/unstr__password.pdf": "password",
    "pdf/encrypted/tika__testPassword4Spaces.pdf": "    ",
}


def corpus(folder: Path) -> Path:
    """The folder, or a skip (a failure with QPBOT_REQUIRE_SERVICES=1) when it is missing."""
    need(folder.is_dir(), f"real corpus not found at {folder}")
    return folder


def manifest() -> list[dict[str, str]]:
    path = DOCS / "MANIFEST.tsv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file, delimiter="\t"))


MANIFEST = manifest()
# One placeholder when the corpus is missing, so the skip (or failure) says why.
ENTRIES = [pytest.param(row, id=row["file"]) for row in MANIFEST] or [
    pytest.param(None, id="corpus-missing")
]


def extract_and_clean(path: Path, **options) -> ExtractedDocument:
    return clean_document(extract_document(path, **options))


@pytest.mark.parametrize("row", ENTRIES)
def test_manifest_file_gives_text_or_the_expected_refusal(row):
    docs = corpus(DOCS)
    path = docs / row["file"]
    expected_kind = UNREADABLE.get(row["file"])
    if expected_kind is None:
        doc = extract_and_clean(path)
        assert doc.blocks and any(block.text.strip() for block in doc.blocks)
        assert doc.format == path.suffix.lstrip(".")
        assert all(1 <= block.page <= doc.page_count for block in doc.blocks)
    else:
        with pytest.raises(UnreadableDocument) as caught:
            extract_and_clean(path)
        assert caught.value.kind == expected_kind, caught.value.reason
        assert path.name in caught.value.reason


def test_expectations_agree_with_the_manifest():
    corpus(DOCS)
    rows = {row["file"]: row for row in MANIFEST}
    assert set(UNREADABLE) <= set(rows), "expectations name files the manifest lacks"
    for file, row in rows.items():
        observed = json.loads(row["observed"]) if row["observed"].startswith("{") else {}
        if file.startswith("pdf/") and observed.get("decrypt_empty_pw") == "0":
            assert UNREADABLE.get(file) == "encrypted", file
        if file.startswith("pdf/") and observed.get("chars_first30") == 0:
            assert UNREADABLE.get(file) == "no_text", file
        if "OCR text layer" in row["why"] or "IRM" in row["why"]:
            assert file not in UNREADABLE, file  # their text layer is readable


@pytest.mark.parametrize("file", sorted(KNOWN_PASSWORDS))
def test_encrypted_pdfs_open_with_their_passwords(file):
    doc = extract_and_clean(corpus(DOCS) / file, passwords=["not it", KNOWN_PASSWORDS[file]])
    assert any(block.text.strip() for block in doc.blocks)


def test_outline_headings_of_a_long_pdf():
    doc = extract_and_clean(corpus(DOCS) / "pdf/huge/unstr__DA-619p.pdf")
    assert doc.page_count == 619
    assert len({block.heading for block in doc.blocks}) > 500
    # Bare page numbers at page bottoms are gone.
    assert not any(block.text == "48" for block in doc.blocks)


def test_outline_headings_follow_section_starts():
    doc = extract_and_clean(corpus(DOCS) / "pdf/structure/pypdf__pdflatex-outline.pdf")
    headings = [block.heading for block in doc.blocks if block.page == 2]
    assert headings[0] == "Foo" and "Bar" in headings and "Baz" in headings


def test_two_column_paper_reads_column_after_column():
    doc = extract_and_clean(corpus(DOCS) / "pdf/multicolumn/pypdf__multicolumn.pdf")
    text = "\n".join(block.text for block in doc.blocks if block.page == 1)
    # The left column ends with "Nulla malesuada"; the right one starts with "pellentesque".
    assert text.index("Nulla malesuada") < text.index("pellentesque ante")


@pytest.mark.parametrize(
    ("file", "running_line"),
    [
        ("pdf/real_world/llamads__dr_a_motion.pdf", "Document 5-1 Filed 09/13/21 Page"),
        ("pdf/attachments/tika__testPDF_childAttachments.pdf", "Publication 15 (2013)"),
        ("pdf/real_world/llamads__brokerage_statement.pdf", "For informational purposes only"),
    ],
)
def test_running_lines_are_removed_from_nearly_every_page(file, running_line):
    extracted = extract_document(corpus(DOCS) / file)
    before = sum(running_line in clean_text(block.text) for block in extracted.blocks)
    after = sum(running_line in block.text for block in clean_document(extracted).blocks)
    assert before >= 20 and after <= before // 8, (before, after)


def test_word_headers_footers_notes_text_boxes_and_alt_chunks_are_read():
    docs = corpus(DOCS)
    various = "\n".join(
        b.text for b in extract_and_clean(docs / "docx/mixed/tika__testWORD_various.docx").blocks
    )
    assert various.count("This is the header text.") == 1
    assert "This is the footer text." in various and "This is a footnote." in various
    text_box = extract_and_clean(docs / "docx/structure/tika__testWORD_text_box.docx")
    assert any("inside of a text box in the body" in b.text for b in text_box.blocks)
    alt_chunk = extract_and_clean(docs / "docx/structure/tika__testAltChunkHTML.docx")
    assert any("Col 1 | Col 2" in b.text for b in alt_chunk.blocks)
    endnotes = extract_and_clean(docs / "docx/tables/tika__testWORD_endnote_table.docx")
    assert sum(len(b.text) for b in endnotes.blocks) > 50_000


def test_word_headings_and_rendered_page_breaks():
    docs = corpus(DOCS)
    sample = extract_and_clean(docs / "docx/mixed/tika__testWORD.docx")
    assert {"Main Heading", "Heading Level 3"} <= {b.heading for b in sample.blocks}
    breaks = extract_and_clean(docs / "docx/structure/unstr__page-breaks.docx")
    assert breaks.page_count == 5 and breaks.blocks[-1].page > 1


ARAGOG = sorted(ARAGOG_PAPERS.glob("*.pdf")) if ARAGOG_PAPERS.is_dir() else []


def test_all_fifteen_aragog_papers_are_present():
    assert len(sorted(corpus(ARAGOG_PAPERS).glob("*.pdf"))) == 15


@pytest.mark.parametrize(
    "paper", [pytest.param(p, id=p.name) for p in ARAGOG] or [pytest.param(None, id="missing")]
)
def test_aragog_paper_gives_much_text(paper):
    corpus(ARAGOG_PAPERS)
    doc = extract_and_clean(paper)
    assert doc.page_count >= 5
    assert sum(len(block.text) for block in doc.blocks) > 15_000


def test_619_page_pdf_keeps_memory_bounded():
    """Peak RSS growth while extracting and cleaning it, in a fresh interpreter."""
    path = corpus(DOCS) / "pdf/huge/unstr__DA-619p.pdf"
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from qpbot_assets.documents.cleaning import clean_document, clean_text
        from qpbot_assets.documents.extraction import extract_document
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        doc = clean_document(extract_document(Path({str(path)!r})))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024, len(doc.blocks))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    growth_mb, blocks = map(int, result.stdout.split())
    assert blocks > 1000
    assert growth_mb < 500, f"peak RSS grew by {growth_mb} MB"


def table_lines(doc: ExtractedDocument) -> list[str]:
    """The lines of blocks that read as tables: every line has cells joined by " | " (which
    cleaning trims to "|" at a line's ends, where a cell is empty)."""
    tables = [b.text for b in doc.blocks if all("|" in line for line in b.text.split("\n"))]
    return [line for text in tables for line in text.split("\n")]


def test_pdf_tables_are_rows_of_cells():
    docs = corpus(DOCS)
    korean = table_lines(extract_and_clean(docs / "pdf/cjk/unstr__korean-text-with-tables.pdf"))
    assert "업종 | 적립 대상" in korean and "주유 | 모든 주유소" in korean
    chinese = table_lines(extract_and_clean(docs / "pdf/cjk/pymupdf__chinese-tables.pdf"))
    assert "1 | 工商银行 | 330,435.30 | 234,850.00 | 95,585.30" in chinese


def test_paper_tables_are_rows_and_its_running_text_stays_text():
    papers = corpus(ARAGOG_PAPERS)
    codenet = extract_and_clean(papers / "codenet.pdf")
    lines = table_lines(codenet)
    assert "name of column | data type | unit | description" in lines
    assert "id | string | none | unique anonymized id of the problem" in lines
    assert any(
        b.text.startswith("At the problem level, every problem has a CSV file.")
        for b in codenet.blocks
    )
    # Body rows that no rules separate, one value above the other in each cell, are split.
    megatron = table_lines(extract_and_clean(papers / "megatron.pdf"))
    assert "1536 | 16 | 40 | 1.2 | 1 | 64" in megatron
    # Two-column papers whose tables have no vertical rules: nothing reads as a table.
    for paper in ("roberta.pdf", "bert.pdf"):
        assert table_lines(extract_and_clean(papers / paper)) == [], paper
