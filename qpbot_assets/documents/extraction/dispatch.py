"""Which reader a file goes to: `extract_document` checks the size limits, detects the real
format from the file's first bytes (the extension only says what the file claims to be)
and hands the file to the reader for that format. Content that is no supported document
(images, archives, other binaries) is refused here, before any parser sees it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

from .common import (
    DocumentLimits,
    ExtractedDocument,
    UnreadableDocument,
    _not_a_document_error,
    _readable_size,
)
from .docx import _extract_zip_package, _legacy_office_error
from .html import _extract_html
from .pdf import _extract_pdf
from .text import _decode_text, _extract_markdown, _extract_plain_text

# What a file claims to be, by extension; anything else that decodes as text is plain text.
_CLAIMED_FORMAT = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
}

# Binary formats recognised by their first bytes, with what to call them.
_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"%!PS", "a PostScript file"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"OggS", "an Ogg audio/video file"),
    (b"ID3", "an MP3 audio file"),
    (b"AT&TFORM", "a DjVu document"),
]
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# An OLE compound file: legacy Office formats, and Office files encrypted with a password.
_CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_SNIFF_BYTES = 8192


def extract_document(
    path: Path,
    *,
    name: str | None = None,
    passwords: Sequence[str] = (),
    limits: DocumentLimits = DocumentLimits(),  # noqa: B008 - frozen: one default serves all
) -> ExtractedDocument:
    """Reads the file at `path` into text blocks in reading order.

    The real format is detected from the content (magic bytes), not only the extension.
    `name` is what reasons call the file (the uploaded name; by default the path's);
    `passwords` are tried on encrypted PDFs (after the empty one). A file over `limits` is
    refused before it is parsed, or for a PDF as soon as a page goes over. Raises
    UnreadableDocument when the file cannot become text; a missing or unreadable path
    raises the usual OSError, since that is no fault of the document.
    """
    path = Path(path)
    name = name or path.name
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise UnreadableDocument(
            f"{name} is {_readable_size(size)}, over the {_readable_size(limits.max_bytes)} limit; "
            "split it into smaller files or raise QPBOT_MAX_DOCUMENT_MB.",
            "too_large",
        )
    if size == 0:
        raise UnreadableDocument(f"{name} is an empty file (0 bytes); upload it again.", "empty")
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    claimed = _CLAIMED_FORMAT.get(path.suffix.lower())

    if _is_pdf(head):
        return _extract_pdf(path, name, passwords, limits)
    if head.startswith(_ZIP_MAGIC):
        return _extract_zip_package(path, name, claimed, limits)
    if head.startswith(_CFB_MAGIC):
        raise _legacy_office_error(path, name)
    looks_like = next((what for magic, what in _SIGNATURES if head.startswith(magic)), None)
    if looks_like or not _looks_like_text(head):  # RTF and PostScript look like text
        raise _not_a_document_error(name, claimed, looks_like)
    if size > limits.max_unpacked_bytes:
        raise UnreadableDocument(
            f"{name} is {_readable_size(size)} of text, over the "
            f"{_readable_size(limits.max_unpacked_bytes)} limit for text to parse; split it "
            "into smaller files or raise QPBOT_MAX_UNPACKED_MB.",
            "too_large",
        )
    data = path.read_bytes()
    text = _decode_text(data)
    if not text.strip():
        raise UnreadableDocument(
            f"{name} contains only whitespace; there is no text to index.", "empty"
        )
    # An HTML page saved under a wrong name (say, an error page as report.pdf) is HTML.
    if claimed == "html" or (claimed != "markdown" and _looks_like_html(text)):
        return _extract_html(data, name)
    if claimed == "markdown":
        return _extract_markdown(text)
    return _extract_plain_text(text)


# --- format sniffing -------------------------------------------------------------------


def _is_pdf(head: bytes) -> bool:
    # Readers accept junk before the header within the first 1024 bytes; a text file that
    # merely mentions "%PDF-" is not a PDF, hence the binary check for that case.
    return head.lstrip().startswith(b"%PDF-") or (
        b"%PDF-" in head[:1024] and not _looks_like_text(head)
    )


def _looks_like_text(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True  # UTF-16 with a byte order mark
    if b"\x00" in head:
        return False
    sample = _decode_text(head, partial=True)
    controls = sum(
        1 for char in sample if unicodedata.category(char) == "Cc" and char not in "\t\n\r\f\v\x1b"
    )
    return controls <= len(sample) * 0.01


def _looks_like_html(text: str) -> bool:
    start = text.lstrip()[:1024].lower()
    return start.startswith(("<!doctype html", "<html")) or "<html" in start or "<body" in start
