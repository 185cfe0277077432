"""Documents that would cost minutes or gigabytes (decompression bombs, huge texts, too many
chunks) are quarantined before they are parsed or embedded, with a reason that names the
uploaded file and the setting to raise; the rest of the batch goes on."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import docx
import pymupdf
import pytest
from document_bombs import docx_bomb, pdf_bomb

from qpbot_assets.documents.extraction import DocumentLimits, UnreadableDocument, extract_document
from qpbot_assets.documents.sources import document_id_for
from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.runtime.runs import index_status, ingest_paths
from qpbot_serving import index as contract
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import PROMOTED_INDEX, StateStore

MB = 2**20


def refusal(path: Path, **options) -> UnreadableDocument:
    with pytest.raises(UnreadableDocument) as caught:
        extract_document(path, **options)
    return caught.value


def test_docx_bomb_is_refused_from_its_zip_directory(tmp_path):
    bomb = docx_bomb(tmp_path / "report.docx", unpacked_mb=8)  # 64 KB on disk
    problem = refusal(bomb)
    assert problem.kind == "too_large"
    assert problem.reason.startswith("report.docx looks like a decompression bomb")
    assert "its part word/document.xml unpacks to 8.0 MB from 28 KB" in problem.reason
    assert "QPBOT_MAX_COMPRESSION_RATIO" in problem.reason


def test_docx_packed_like_a_document_but_over_the_unpacked_limit_is_refused(tmp_path):
    big = docx_bomb(tmp_path / "minutes.docx", unpacked_mb=2, varied=True)  # packed ~35 times
    limits = DocumentLimits(max_unpacked_bytes=1 * MB)
    problem = refusal(big, limits=limits)
    assert problem.kind == "too_large" and "QPBOT_MAX_UNPACKED_MB" in problem.reason
    assert "MB of XML to parse (word/document.xml 2.1 MB), over the 1.0 MB limit" in problem.reason
    assert "decompression bomb" not in problem.reason
    assert extract_document(big).blocks  # within the default limits it is read


def test_parts_count_by_their_declared_content_type_not_their_name(tmp_path):
    path = tmp_path / "disguised.docx"
    document = docx.Document()
    document.add_paragraph("Body text.")
    document.save(path)
    with zipfile.ZipFile(path) as package:
        parts = {member.filename: package.read(member) for member in package.infolist()}
    # XML named like an image, and declared as XML; and a real, tightly packed image.
    declared = (
        '<Override PartName="/word/media/image9.png" ContentType="application/xml"/>'
        '<Default Extension="bmp" ContentType="image/bmp"/>'
    )
    parts["[Content_Types].xml"] = parts["[Content_Types].xml"].replace(
        b"</Types>", declared.encode() + b"</Types>"
    )
    parts["word/media/image9.png"] = b"<x>" + b"<y/>" * (2 * MB) + b"</x>"
    parts["word/media/scan.bmp"] = b"BM" + bytes(4 * MB)  # 1,000 times smaller packed
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        for name, data in parts.items():
            package.writestr(name, data)

    assert "its part word/media/image9.png" in refusal(path).reason
    del parts["word/media/image9.png"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        for name, data in parts.items():
            package.writestr(name, data)
    assert extract_document(path).blocks[0].text == "Body text."  # images are not parsed


@pytest.mark.parametrize("in_form", [False, True], ids=["page", "form"])
def test_pdf_flate_bomb_is_refused_before_the_page_is_read(tmp_path, in_form):
    bomb = pdf_bomb(tmp_path / "scan.pdf", unpacked_mb=8, in_form=in_form)  # 30 KB on disk
    problem = refusal(bomb)
    assert problem.kind == "too_large"
    assert problem.reason.startswith("scan.pdf looks like a decompression bomb: page 1's")

    # Past the unpacked limit, unpacking stops: the ratio is of what was unpacked by then.
    limits = DocumentLimits(max_unpacked_bytes=1 * MB)
    assert "unpacks to more than 2.0 MB from its first 7 KB" in refusal(bomb, limits=limits).reason


def test_pdf_page_over_the_unpacked_limit_and_pdf_text_over_it_are_refused(tmp_path):
    bomb = pdf_bomb(tmp_path / "dense.pdf", unpacked_mb=2)
    limits = DocumentLimits(max_unpacked_bytes=1 * MB, max_compression_ratio=10_000)
    assert "page 1's content unpacks to more than 1.0 MB" in refusal(bomb, limits=limits).reason

    pdf = pymupdf.open()
    for number in range(4):  # 186 bytes of content and 70 characters of text a page
        pdf.new_page().insert_text((72, 72), f"Page {number + 1} says something. " * 3)
    pdf.save(tmp_path / "long.pdf")
    problem = refusal(tmp_path / "long.pdf", limits=DocumentLimits(max_unpacked_bytes=200))
    assert "holds more than 200 bytes of text by page 3 of 4" in problem.reason
    assert "QPBOT_MAX_UNPACKED_MB" in problem.reason


def test_text_file_over_the_unpacked_limit_is_refused_unread(tmp_path):
    path = tmp_path / "dump.txt"
    path.write_text("A line of log output.\n" * 100_000)
    problem = refusal(path, limits=DocumentLimits(max_unpacked_bytes=1 * MB))
    assert problem.kind == "too_large" and problem.reason.startswith("dump.txt is 2.1 MB of text")


def test_html_with_more_elements_than_a_page_may_have_is_refused_unparsed(tmp_path):
    """3 MB of table cells would take BeautifulSoup gigabytes at 45 MB: refused by count."""
    row = "<tr><td>one</td><td>two</td><td>3</td></tr>\n"
    path = tmp_path / "export.html"
    path.write_text("<html><body><table>" + row * 60_000 + "</table></body></html>")
    problem = refusal(path)
    assert problem.kind == "too_large" and "240,003 HTML elements" in problem.reason
    path.write_text("<html><body><table>" + row * 1_000 + "</table></body></html>")
    assert len(extract_document(path).blocks) == 1  # a big table that is still a page


def test_reasons_name_the_uploaded_file_not_the_stored_blob(tmp_path):
    blob = tmp_path / "3f9a0c1d2e4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5.pdf"
    blob.write_bytes(b"%PDF-1.7\n1 0 obj <<")
    problem = refusal(blob, name="Quarterly report.pdf")
    assert problem.reason.startswith("Quarterly report.pdf ") and blob.stem not in problem.reason


def test_ingest_quarantines_a_bomb_and_a_document_over_the_chunk_cap_and_goes_on(
    qpbot_home, tmp_path, monkeypatch
):
    monkeypatch.setenv("QPBOT_MAX_CHUNKS_PER_DOCUMENT", "5")
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "policy.md").write_text("# Travel\n\nTrain tickets are refunded in full.\n")
    docx_bomb(folder / "report.docx", unpacked_mb=8)
    (folder / "notes.md").write_text("\n\n".join(f"Note {i}. " * 200 for i in range(20)))

    settings = QpbotSettings()
    assert ingest_paths(settings, [folder], quiet=True)["success"]
    status = index_status(settings)
    quarantined = {Path(q["source"]).name: q for q in status["quarantined"]}
    assert set(quarantined) == {"report.docx", "notes.md"}
    assert quarantined["report.docx"]["stage"] == "extracted"
    assert quarantined["report.docx"]["reason"].startswith("report.docx looks like a decomp")
    assert quarantined["notes.md"]["stage"] == "chunks"
    assert quarantined["notes.md"]["reason"] == (
        "notes.md makes more than 5 chunks, the limit for one document; split it into "
        "smaller files or raise QPBOT_MAX_CHUNKS_PER_DOCUMENT."
    )
    promoted = StateStore(settings.home).read(PROMOTED_INDEX)
    rows = (
        contract.connect(StateStore.from_settings(settings))
        .open_table(promoted.table)
        .search()
        .limit(None)
    )
    good = document_id_for((folder / "policy.md").resolve().as_uri())
    assert {row["document_id"] for row in rows.to_list()} == {good}

    # `qpbot status` shows the uploaded name, never the stored blob's hash.
    sha256 = DocumentStore(settings).stage_output(
        document_id_for((folder / "report.docx").resolve().as_uri()), "raw"
    )["sha256"]
    qpbot = Path(sys.executable).parent / "qpbot"
    shown = subprocess.run([qpbot, "status"], capture_output=True, text=True, check=True).stdout
    assert "report.docx looks like a decompression bomb" in shown and sha256 not in shown
