"""The demo document set: every file is written, readable, and answers its sample questions."""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from pathlib import Path

import docx
import pymupdf
import pytest
from bs4 import BeautifulSoup

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUESTIONS = [
    json.loads(line)
    for line in (EXAMPLES / "sample_questions.jsonl").read_text("utf-8").splitlines()
]

# examples/ is not a package, so load the script by path.
_spec = importlib.util.spec_from_file_location(
    "make_sample_documents", EXAMPLES / "make_sample_documents.py"
)
make_sample_documents = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_sample_documents)


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, Path]:
    paths = make_sample_documents.write_sample_documents(
        tmp_path_factory.mktemp("sample_documents")
    )
    return {path.name: path for path in paths}


def document_text(path: Path) -> str:
    """Plain text of a sample document, NFKC-normalised (PDF text keeps ligatures like 'ﬀ')."""
    if path.suffix == ".pdf":
        with pymupdf.open(path) as pdf:
            text = "\n".join(page.get_text() for page in pdf)
    elif path.suffix == ".docx":
        document = docx.Document(path)
        section = document.sections[0]
        parts = [p.text for p in document.paragraphs]
        parts += [
            cell.text for table in document.tables for row in table.rows for cell in row.cells
        ]
        parts += [p.text for p in section.header.paragraphs + section.footer.paragraphs]
        text = "\n".join(parts)
    elif path.suffix == ".html":
        text = BeautifulSoup(path.read_text("utf-8"), "html.parser").get_text(" ")
    else:
        text = path.read_text("utf-8")
    return unicodedata.normalize("NFKC", text)


def squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def test_every_document_is_written_and_non_empty(documents):
    assert len(documents) == 5
    assert {q["document"] for q in QUESTIONS} == set(documents)
    for path in documents.values():
        assert path.is_file() and path.stat().st_size > 0


@pytest.mark.parametrize("question", QUESTIONS, ids=[q["question"] for q in QUESTIONS])
def test_answer_appears_in_its_document(documents, question):
    assert squash(question["answer"]) in squash(document_text(documents[question["document"]]))


def test_handbook_has_outline_running_header_footer_and_metadata(documents):
    with pymupdf.open(documents["kestrel-k2-user-handbook.pdf"]) as pdf:
        assert 6 <= pdf.page_count <= 8
        assert pdf.metadata["title"] == "Kestrel K2 User Handbook"
        assert pdf.metadata["author"] == "Northwind Robotics GmbH"
        assert pdf.metadata["creationDate"] == "D:20260316090000+00'00'"
        chapters = [title for level, title, _ in pdf.get_toc() if level == 1]
        assert chapters == [
            "1 Getting started",
            "2 Charging and battery",
            "3 Cleaning modes",
            "4 Maintenance",
            "5 Troubleshooting",
            "6 Specifications",
        ]
        for page in pdf:
            text = page.get_text()
            assert "Kestrel K2 User Handbook" in text
            assert f"Page {page.number + 1} of {pdf.page_count}" in text
        handbook_text = squash(document_text(documents["kestrel-k2-user-handbook.pdf"]))
        assert all(f"e{n} " in handbook_text for n in range(1, 9))


def test_warranty_docx_has_header_footer_table_and_properties(documents):
    document = docx.Document(documents["warranty-and-returns-policy.docx"])
    section = document.sections[0]
    assert "Warranty and Returns Policy" in section.header.paragraphs[0].text
    assert "Effective 1 February 2026" in section.footer.paragraphs[0].text
    assert document.tables[0].rows[0].cells[1].text == "Warranty period"
    properties = document.core_properties
    assert properties.title == "Warranty and Returns Policy"
    assert properties.author == "Northwind Robotics Customer Care"
    assert properties.created.isoformat() == "2026-03-16T09:00:00+00:00"


def test_documents_are_byte_for_byte_reproducible(documents, tmp_path):
    for path in make_sample_documents.write_sample_documents(tmp_path):
        assert path.read_bytes() == documents[path.name].read_bytes(), path.name
