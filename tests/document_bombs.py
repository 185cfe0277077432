"""Documents that unpack to far more than they weigh, built at run time (shared by the bomb
tests and bench/bench_bombs.py): a real python-docx document whose body is inflated, and a
pymupdf PDF whose page draws an inflated content stream."""

from __future__ import annotations

import zipfile
from pathlib import Path

import docx
import pymupdf

PARAGRAPH = (
    "<w:p><w:r><w:t>{}The quarterly report describes revenue, costs and the outlook."
    "</w:t></w:r></w:p>"
)
TEXT_LINE = b"BT /Helv 11 Tf 72 720 Td (The quarterly report describes revenue.) Tj ET\n"


def docx_bomb(path: Path, unpacked_mb: float, varied: bool = False) -> Path:
    """A DOCX whose word/document.xml unpacks to `unpacked_mb` of one repeated paragraph
    (about 300 times smaller packed, as a bomb is), or of numbered paragraphs when `varied`
    (about 50 times, as a long document's XML is)."""
    document = docx.Document()
    document.add_paragraph("The quarterly report.")
    document.save(path)
    with zipfile.ZipFile(path) as package:
        parts = {member.filename: package.read(member) for member in package.infolist()}
    head = parts["word/document.xml"].decode().partition("<w:body>")[0]
    count = int(unpacked_mb * 2**20 / len(PARAGRAPH.format("")))
    body = "".join(PARAGRAPH.format(f"{i} " if varied else "") for i in range(count))
    parts["word/document.xml"] = f"{head}<w:body>{body}<w:sectPr/></w:body></w:document>".encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        for name, data in parts.items():
            package.writestr(name, data)
    return path


def pdf_bomb(path: Path, unpacked_mb: float, in_form: bool = False) -> Path:
    """A one-page PDF whose content stream (or that of a form it draws, when `in_form`)
    unpacks to `unpacked_mb` of one repeated line of text, Flate-packed."""
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 72), "The quarterly report.")
    if in_form:
        inner = pymupdf.open()
        inner.new_page().insert_text((72, 72), "form")
        page.show_pdf_page(page.rect, inner, 0)
        xref = page.get_xobjects()[-1][0]  # the innermost form holds the drawing
    else:
        xref = page.get_contents()[0]
    stream = TEXT_LINE * int(unpacked_mb * 2**20 / len(TEXT_LINE))
    pdf.update_stream(xref, stream, compress=True)
    pdf.save(path)
    return path
