"""extract_document on small documents built here: every format, every way to fail."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import docx
import pymupdf
import pytest
from docx.enum.text import WD_BREAK

from qpbot_assets.documents.extraction import (
    UNREADABLE_KINDS,
    DocumentLimits,
    ExtractedDocument,
    UnreadableDocument,
    extract_document,
)


def make_pdf(path: Path, pages: list[list[str]], **save_options) -> Path:
    """One PDF page per list of lines; lines sit 60pt apart, so each is its own block."""
    pdf = pymupdf.open()
    for lines in pages:
        page = pdf.new_page()
        for index, line in enumerate(lines):
            page.insert_text((72, 72 + 60 * index), line)
    pdf.save(path, **save_options)
    pdf.close()
    return path


def make_png() -> bytes:
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 16, 16), False)
    pixmap.clear_with(180)
    return pixmap.tobytes("png")


def text_of(doc: ExtractedDocument) -> str:
    return "\n".join(block.text for block in doc.blocks)


def unreadable(path: Path, **options) -> UnreadableDocument:
    with pytest.raises(UnreadableDocument) as caught:
        extract_document(path, **options)
    assert caught.value.kind in UNREADABLE_KINDS
    assert caught.value.reason and "Traceback" not in caught.value.reason
    return caught.value


# --- PDF ---------------------------------------------------------------------------------


def test_pdf_blocks_pages_and_properties(tmp_path):
    pdf = pymupdf.open()
    for number in (1, 2):
        pdf.new_page().insert_text((72, 72), f"Text on page {number}")
    pdf.set_metadata(
        {
            "title": "Annual Report",
            "author": "Ada Lovelace",
            "creationDate": "D:20240102030405+01'00'",
            "modDate": "D:20240203040506Z",
        }
    )
    pdf.save(tmp_path / "report.pdf")

    doc = extract_document(tmp_path / "report.pdf")

    assert doc.format == "pdf"
    assert doc.page_count == 2
    assert [(block.text.strip(), block.page) for block in doc.blocks] == [
        ("Text on page 1", 1),
        ("Text on page 2", 2),
    ]
    assert doc.properties == {
        "title": "Annual Report",
        "author": "Ada Lovelace",
        "created": "2024-01-02T03:04:05+01:00",
        "modified": "2024-02-03T04:05:06+00:00",
    }


def test_pdf_without_metadata_has_no_properties(tmp_path):
    doc = extract_document(make_pdf(tmp_path / "plain.pdf", [["Just text"]]))
    assert "title" not in doc.properties and "author" not in doc.properties


def test_pdf_headings_follow_the_outline_within_a_page(tmp_path):
    pdf = pymupdf.open()
    page_lines = [
        ["1 Introduction", "Why this matters."],
        ["More on why it matters.", "2 Methods", "How we did it."],
        ["Still about methods."],
    ]
    for lines in page_lines:
        page = pdf.new_page()
        for index, line in enumerate(lines):
            page.insert_text((72, 72 + 60 * index), line)
    pdf.set_toc([[1, "Introduction", 1], [1, "Methods", 2]])
    pdf.save(tmp_path / "outlined.pdf")

    doc = extract_document(tmp_path / "outlined.pdf")

    headings = {block.text.strip(): block.heading for block in doc.blocks}
    assert headings == {
        "1 Introduction": "Introduction",
        "Why this matters.": "Introduction",
        "More on why it matters.": "Introduction",  # above the Methods heading on page 2
        "2 Methods": "Methods",
        "How we did it.": "Methods",
        "Still about methods.": "Methods",
    }


def test_pdf_outline_entry_not_found_in_the_text_starts_at_its_page(tmp_path):
    path = make_pdf(tmp_path / "doc.pdf", [["Alpha"], ["Beta"], ["Gamma"]])
    pdf = pymupdf.open(path)
    pdf.set_toc([[1, "Part One", 1], [1, "Part Two", 3]])
    pdf.saveIncr()
    pdf.close()

    doc = extract_document(path)

    assert [block.heading for block in doc.blocks] == ["Part One", "Part One", "Part Two"]


def test_pdf_two_columns_are_read_one_after_the_other(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 60), "A title across the page, wider than either column is")
    left = " ".join(f"left{i}" for i in range(60))
    right = " ".join(f"right{i}" for i in range(60))
    page.insert_textbox(pymupdf.Rect(50, 100, 280, 400), left)
    page.insert_textbox(pymupdf.Rect(320, 100, 550, 400), right)
    pdf.save(tmp_path / "columns.pdf")

    text = text_of(extract_document(tmp_path / "columns.pdf"))

    assert text.index("A title") < text.index("left0") < text.index("left59")
    assert text.index("left59") < text.index("right0")


def test_pdf_form_field_values_come_with_their_labels(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 72), "Vehicle accident report")
    widget = pymupdf.Widget()
    widget.field_type = pymupdf.PDF_WIDGET_TYPE_TEXT
    widget.field_name = "driver_name"
    widget.field_label = "Driver name"
    widget.field_value = "Ada Lovelace"
    widget.rect = pymupdf.Rect(72, 100, 300, 120)
    page.add_widget(widget)
    pdf.save(tmp_path / "form.pdf")

    assert "Driver name: Ada Lovelace" in text_of(extract_document(tmp_path / "form.pdf"))


def test_pdf_with_an_empty_user_password_is_opened(tmp_path):
    path = make_pdf(
        tmp_path / "restricted.pdf",
        [["Readable by anyone"]],
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        owner_pw="owner-secret",
        user_pw="",
        permissions=0,
    )
    assert "Readable by anyone" in text_of(extract_document(path))


def test_pdf_needing_a_password_is_encrypted(tmp_path):
    path = make_pdf(
        tmp_path / "locked.pdf",
        [["Secret text"]],
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        owner_pw="owner-secret",
        user_pw="open sesame",
    )
    problem = unreadable(path, passwords=["wrong"])
    assert problem.kind == "encrypted"
    assert "QPBOT_PDF_PASSWORDS" in problem.reason and "locked.pdf" in problem.reason


def test_pdf_password_from_the_list_opens_it(tmp_path):
    path = make_pdf(
        tmp_path / "locked.pdf",
        [["Secret text"]],
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        owner_pw="owner-secret",
        user_pw="open sesame",
    )
    doc = extract_document(path, passwords=["wrong", "open sesame"])
    assert "Secret text" in text_of(doc)


def test_image_only_pdf_has_no_text(tmp_path):
    pdf = pymupdf.open()
    pdf.new_page().insert_image(pymupdf.Rect(72, 72, 300, 300), stream=make_png())
    pdf.save(tmp_path / "scan.pdf")

    problem = unreadable(tmp_path / "scan.pdf")

    assert problem.kind == "no_text"
    assert "OCR" in problem.reason


def test_scanned_pdf_with_an_ocr_text_layer_is_read(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_image(pymupdf.Rect(72, 72, 300, 300), stream=make_png())
    page.insert_text((72, 100), "Words found by OCR", render_mode=3)  # invisible text
    pdf.save(tmp_path / "ocr.pdf")

    assert "Words found by OCR" in text_of(extract_document(tmp_path / "ocr.pdf"))


@pytest.mark.parametrize("keep", [20, 300, 0.5])
def test_truncated_pdf_is_malformed(tmp_path, keep):
    data = make_pdf(tmp_path / "whole.pdf", [["Hello " * 20]]).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    (tmp_path / "cut.pdf").write_bytes(data[:cut])

    problem = unreadable(tmp_path / "cut.pdf")

    assert problem.kind == "malformed"
    assert "cut.pdf" in problem.reason and str(tmp_path) not in problem.reason


def test_corrupted_files_never_leak_library_errors(tmp_path):
    """Bytes overwritten all over a PDF and a DOCX: text or UnreadableDocument, nothing else."""
    pdf_bytes = make_pdf(tmp_path / "good.pdf", [["Some words"] * 5] * 3).read_bytes()
    document = docx.Document()
    for index in range(20):
        document.add_paragraph(f"Paragraph {index}")
    document.save(tmp_path / "good.docx")
    docx_bytes = (tmp_path / "good.docx").read_bytes()
    for suffix, data in ((".pdf", pdf_bytes), (".docx", docx_bytes)):
        for offset in range(40, len(data), max(1, len(data) // 25)):
            damaged = bytearray(data)
            damaged[offset : offset + 64] = b"\xff" * 64
            path = tmp_path / f"damaged-{offset}{suffix}"
            path.write_bytes(bytes(damaged))
            try:
                extract_document(path)
            except UnreadableDocument as problem:
                assert problem.kind in UNREADABLE_KINDS


# --- DOCX --------------------------------------------------------------------------------


def make_docx(path: Path) -> Path:
    document = docx.Document()
    properties = document.core_properties
    properties.title = "Quarterly Report"
    properties.author = "Grace Hopper"
    properties.created = datetime(2024, 1, 2, 3, 4, 5)
    properties.modified = datetime(2024, 2, 3, 4, 5, 6)
    section = document.sections[0]
    section.header.paragraphs[0].text = "ACME Corp confidential"
    section.footer.paragraphs[0].text = "Printed on recycled electrons"
    document.add_paragraph("Quarterly Report", style="Title")
    document.add_paragraph("Opening words.")
    document.add_heading("Overview", level=1)
    document.add_paragraph("Revenue grew.")
    table = document.add_table(rows=2, cols=2)
    for row, values in zip(table.rows, [("Quarter", "Revenue"), ("Q1", "12")], strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_heading("Details", level=2)
    before = document.add_paragraph("Before the page break.")
    before.add_run().add_break(WD_BREAK.PAGE)
    document.add_paragraph("After the page break.")
    document.save(path)
    return path


def test_docx_body_in_order_with_headings_tables_and_pages(tmp_path):
    doc = extract_document(make_docx(tmp_path / "report.docx"))

    assert doc.format == "docx"
    body = [(block.text, block.page, block.heading) for block in doc.blocks]
    assert body == [
        ("ACME Corp confidential", 1, None),
        ("Quarterly Report", 1, "Quarterly Report"),
        ("Opening words.", 1, "Quarterly Report"),
        ("Overview", 1, "Overview"),
        ("Revenue grew.", 1, "Overview"),
        ("Quarter | Revenue\nQ1 | 12", 1, "Overview"),
        ("Details", 1, "Details"),
        ("Before the page break.", 1, "Details"),
        ("After the page break.", 2, "Details"),
        ("Printed on recycled electrons", 2, None),
    ]
    assert doc.page_count == 2


def test_docx_properties_come_from_its_core_properties(tmp_path):
    doc = extract_document(make_docx(tmp_path / "report.docx"))
    assert doc.properties["title"] == "Quarterly Report"
    assert doc.properties["author"] == "Grace Hopper"
    assert datetime.fromisoformat(doc.properties["created"]).replace(tzinfo=UTC) == datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert doc.properties["modified"].startswith("2024-02-03T04:05:06")


def test_docx_header_shared_by_sections_is_read_once(tmp_path):
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "Same header everywhere"
    document.add_paragraph("First section.")
    document.add_section()
    document.add_paragraph("Second section.")
    document.save(tmp_path / "sections.docx")

    text = text_of(extract_document(tmp_path / "sections.docx"))

    assert text.count("Same header everywhere") == 1


def test_empty_docx_is_empty_and_picture_only_docx_has_no_text(tmp_path):
    docx.Document().save(tmp_path / "blank.docx")
    assert unreadable(tmp_path / "blank.docx").kind == "empty"

    (tmp_path / "picture.png").write_bytes(make_png())
    document = docx.Document()
    document.add_picture(str(tmp_path / "picture.png"))
    document.save(tmp_path / "picture.docx")
    problem = unreadable(tmp_path / "picture.docx")
    assert problem.kind == "no_text" and "OCR" in problem.reason


def test_truncated_docx_is_malformed(tmp_path):
    data = make_docx(tmp_path / "whole.docx").read_bytes()
    (tmp_path / "cut.docx").write_bytes(data[: len(data) // 2])
    assert unreadable(tmp_path / "cut.docx").kind == "malformed"


def compound_file(*stream_names: str) -> bytes:
    """Enough of an OLE compound file for sniffing: the magic and directory names."""
    names = b"".join(name.encode("utf-16-le") + b"\x00" * 8 for name in stream_names)
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504 + names + b"\x00" * 512


def test_password_protected_docx_is_encrypted(tmp_path):
    path = tmp_path / "protected.docx"
    path.write_bytes(compound_file("EncryptionInfo", "EncryptedPackage"))
    problem = unreadable(path)
    assert problem.kind == "encrypted" and "password" in problem.reason


def test_legacy_doc_is_unsupported_with_advice(tmp_path):
    path = tmp_path / "old.doc"
    path.write_bytes(compound_file("WordDocument", "1Table"))
    problem = unreadable(path)
    assert problem.kind == "unsupported_format"
    assert ".docx" in problem.reason and "Word" in problem.reason


# --- plain text, Markdown, HTML ----------------------------------------------------------


def test_text_paragraphs_split_at_blank_lines_and_pages_at_form_feeds(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\n\n\nSecond.\fThird, on page two.\n")

    doc = extract_document(path)

    assert doc.format == "text"
    assert [(block.text, block.page) for block in doc.blocks] == [
        ("First paragraph\nstill first.", 1),
        ("Second.", 1),
        ("Third, on page two.", 2),
    ]
    assert doc.page_count == 2


@pytest.mark.parametrize(
    "encoded",
    [
        "café crème".encode(),
        "café crème".encode("utf-8-sig"),
        "café crème".encode("utf-16"),
        "café crème".encode("latin-1"),
        "café crème".encode("cp1252"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16", "latin-1", "cp1252"],
)
def test_text_encodings(tmp_path, encoded):
    path = tmp_path / "menu.txt"
    path.write_bytes(encoded)
    assert text_of(extract_document(path)) == "café crème"


def test_markdown_headings_code_fences_and_front_matter(tmp_path):
    path = tmp_path / "guide.md"
    path.write_text(
        "---\ntitle: The Guide\nauthor: Ada\n---\n"
        "Intro before any heading.\n\n"
        "# Install\n"
        "Run the installer.\n\n"
        "```bash\n# not a heading\n\npip install qpbot\n```\n\n"
        "Usage\n-----\n"
        "Call it.\n"
    )

    doc = extract_document(path)

    assert doc.format == "markdown"
    assert doc.properties == {"title": "The Guide", "author": "Ada"}
    assert [(block.text, block.heading) for block in doc.blocks] == [
        ("Intro before any heading.", None),
        ("Install", "Install"),
        ("Run the installer.", "Install"),
        ("```bash\n# not a heading\n\npip install qpbot\n```", "Install"),
        ("Usage", "Usage"),
        ("Call it.", "Usage"),
    ]


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>Team Page</title><meta name="author" content="Web Team">
<style>p { color: red }</style><script>var hidden = "not text";</script></head>
<body>
  <nav>Home</nav>
  <h1>About us</h1>
  <p>We build   <b>things</b>.<br>Every day.</p>
  <ul><li>One</li><li>Two</li></ul>
  <h2>Prices</h2>
  <table><tr><th>Item</th><th>Price</th></tr><tr><td>Tea</td><td>2</td></tr></table>
  <!-- a comment -->
</body></html>"""


def test_html_blocks_headings_and_tables(tmp_path):
    path = tmp_path / "team.html"
    path.write_text(HTML_PAGE)

    doc = extract_document(path)

    assert doc.format == "html"
    assert doc.properties == {"title": "Team Page", "author": "Web Team"}
    assert [(block.text, block.heading) for block in doc.blocks] == [
        ("Home", None),
        ("About us", "About us"),
        ("We build things.\nEvery day.", "About us"),
        ("One", "About us"),
        ("Two", "About us"),
        ("Prices", "Prices"),
        ("Item | Price\nTea | 2", "Prices"),
    ]


def test_html_with_only_scripts_has_no_text(tmp_path):
    path = tmp_path / "app.html"
    path.write_text("<html><head><script>render()</script></head><body></body></html>")
    assert unreadable(path).kind == "no_text"


# --- detection by content ----------------------------------------------------------------


def test_content_decides_the_format_not_the_extension(tmp_path):
    pdf_bytes = make_pdf(tmp_path / "real.pdf", [["I am a PDF"]]).read_bytes()
    (tmp_path / "looks-like.txt").write_bytes(pdf_bytes)
    assert extract_document(tmp_path / "looks-like.txt").format == "pdf"

    docx_bytes = make_docx(tmp_path / "real.docx").read_bytes()
    (tmp_path / "looks-like.pdf").write_bytes(docx_bytes)
    assert extract_document(tmp_path / "looks-like.pdf").format == "docx"

    (tmp_path / "page.txt").write_text(HTML_PAGE)
    assert extract_document(tmp_path / "page.txt").format == "html"

    (tmp_path / "notes.log").write_text("A log line")
    assert extract_document(tmp_path / "notes.log").format == "text"


@pytest.mark.parametrize(
    ("name", "content", "kind", "says"),
    [
        ("archive.pdf", "zip", "wrong_extension", "ZIP archive"),
        ("photo.pdf", "png", "wrong_extension", "PNG image"),
        ("noise.pdf", "binary", "wrong_extension", "not in any format"),
        ("sheet.docx", "xlsx", "wrong_extension", "Excel workbook"),
        ("photo.png", "png", "unsupported_format", "OCR"),
        ("sheet.xlsx", "xlsx", "unsupported_format", "Excel workbook"),
        ("noise.bin", "binary", "unsupported_format", "binary format"),
        ("letter.rtf", "rtf", "unsupported_format", "RTF"),
    ],
)
def test_files_that_are_not_what_they_claim(tmp_path, name, content, kind, says):
    path = tmp_path / name
    if content in ("zip", "xlsx"):
        with zipfile.ZipFile(path, "w") as archive:
            inner = "xl/workbook.xml" if content == "xlsx" else "readme.txt"
            archive.writestr(inner, "<workbook/>")
    elif content == "png":
        path.write_bytes(make_png())
    elif content == "rtf":
        path.write_text(r"{\rtf1\ansi Hello}")
    else:
        path.write_bytes(bytes(range(256)) * 8)

    problem = unreadable(path)

    assert (problem.kind, says in problem.reason) == (kind, True), problem.reason


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n  ", "   \n".encode("utf-16")])
def test_empty_and_whitespace_files_are_empty(tmp_path, content):
    path = tmp_path / "nothing.txt"
    path.write_bytes(content)
    assert unreadable(path).kind == "empty"


def test_zero_byte_pdf_is_empty(tmp_path):
    (tmp_path / "upload.pdf").write_bytes(b"")
    assert unreadable(tmp_path / "upload.pdf").kind == "empty"


def test_file_over_the_limit_is_too_large(tmp_path):
    path = make_pdf(tmp_path / "big.pdf", [["Some text"]])
    problem = unreadable(path, limits=DocumentLimits(max_bytes=100))
    assert problem.kind == "too_large" and "QPBOT_MAX_DOCUMENT_MB" in problem.reason


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        UnreadableDocument("reason", "sad")


def test_missing_file_is_not_a_document_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        extract_document(tmp_path / "gone.pdf")
