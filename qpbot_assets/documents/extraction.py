"""Reads a document file into text blocks: PDF, DOCX, plain text, Markdown and HTML.

The format comes from the file's content (its magic bytes); the extension only says what
the file claims to be, so a PDF named `.txt` is still read as a PDF. Anything that cannot
become text raises `UnreadableDocument` with a `kind` (what to quarantine it as) and a
`reason` a person can act on. Raw pymupdf and python-docx errors never escape.
"""

from __future__ import annotations

import bisect
import re
import statistics
import unicodedata
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import docx
import pymupdf
from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.oxml import parse_xml
from docx.oxml.ns import qn

from qpbot_serving.settings import QpbotSettings


@dataclass(frozen=True)
class TextBlock:
    text: str  # a paragraph, a table (cells joined by " | ") or a page region
    page: int  # 1-based; formats without pages use 1
    heading: str | None = None  # the section heading this block sits under, where known


@dataclass(frozen=True)
class ExtractedDocument:
    format: str  # "pdf" | "docx" | "text" | "markdown" | "html"
    blocks: list[TextBlock]
    page_count: int
    # From the file's own metadata, where present: "title", "author", and "created" and
    # "modified" as ISO 8601 strings.
    properties: dict[str, str]


UNREADABLE_KINDS = frozenset(
    {
        "encrypted",
        "malformed",
        "no_text",
        "empty",
        "unsupported_format",
        "wrong_extension",
        "too_large",
    }
)


_SETTINGS = QpbotSettings.model_fields
_MB = 1024 * 1024


@dataclass(frozen=True)
class DocumentLimits:
    """How much one document may hold, so that no file costs minutes or gigabytes before it
    is quarantined; the defaults are QpbotSettings' (QPBOT_MAX_DOCUMENT_MB, ...)."""

    max_bytes: int = _SETTINGS["max_document_mb"].default * _MB  # the file as stored
    # What is parsed (a DOCX's XML parts, a PDF page's content streams, a text file) and the
    # text a PDF yields: parsers hold several times this in memory.
    max_unpacked_bytes: int = _SETTINGS["max_unpacked_mb"].default * _MB
    # Documents' XML and page content compress about 5 to 15 times, a bomb's hundreds.
    max_compression_ratio: float = _SETTINGS["max_compression_ratio"].default


# A part or stream this small costs nothing to parse, however tightly it is packed.
_RATIO_FLOOR = _MB


class UnreadableDocument(Exception):
    """A document that cannot be turned into text.

    `reason` is one sentence a person understands and that tells them what to do; `kind`
    (one of UNREADABLE_KINDS) is what the document is quarantined as.
    """

    def __init__(self, reason: str, kind: str):
        if kind not in UNREADABLE_KINDS:
            raise ValueError(f"unknown kind {kind!r}, expected one of {sorted(UNREADABLE_KINDS)}")
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


_SUPPORTED = "PDF, DOCX, plain text, Markdown and HTML"

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
    limits: DocumentLimits = DocumentLimits(),
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


def _readable_size(size: float) -> str:
    if size >= _MB:
        return f"{size / _MB:.1f} MB"
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size:.0f} bytes"


def _short(error: BaseException, path: Path, name: str) -> str:
    """One line of an internal error for a reason's parenthesis: no stack trace, no path."""
    message = str(error).replace(str(path), name).replace(path.name, name)
    return " ".join(message.split())[:120] or type(error).__name__


def _looks_like_bomb(unpacked: int, packed: int, limits: DocumentLimits) -> bool:
    return unpacked > _RATIO_FLOOR and unpacked > limits.max_compression_ratio * max(packed, 1)


def _bomb_error(
    name: str, what: str, unpacked: int, packed: int, limits: DocumentLimits, partly: bool = False
) -> UnreadableDocument:
    """`partly`: unpacking stopped at `unpacked` bytes, made from the first `packed`."""
    sizes = f"{_readable_size(unpacked)} from {_readable_size(packed)}"
    if partly:
        sizes = f"more than {_readable_size(unpacked)} from its first {_readable_size(packed)}"
    return UnreadableDocument(
        f"{name} looks like a decompression bomb: {what} unpacks to {sizes}, "
        f"{unpacked / max(packed, 1):.0f} times its packed size "
        f"(the limit is {limits.max_compression_ratio:g}); if the file is genuine, raise "
        "QPBOT_MAX_COMPRESSION_RATIO.",
        "too_large",
    )


def _not_a_document_error(
    name: str, claimed: str | None, looks_like: str | None
) -> UnreadableDocument:
    """For content that is not what the extension claims, or no document at all."""
    if claimed is not None:
        what = looks_like or "not in any format qpbot recognises"
        return UnreadableDocument(
            f"{name} is named like a {claimed.upper()} file but its content is {what}; "
            f"rename it to its real type or export it as {_SUPPORTED}.",
            "wrong_extension",
        )
    what = looks_like or "a binary format qpbot does not recognise"
    ocr_hint = (
        " (OCR is not enabled, so images cannot be read)"
        if looks_like and "image" in looks_like
        else ""
    )
    return UnreadableDocument(
        f"{name} is {what}{ocr_hint}; only {_SUPPORTED} are supported, so "
        "convert it to one of those.",
        "unsupported_format",
    )


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


def _decode_text(data: bytes, partial: bool = False) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM, else Windows-1252, else Latin-1."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        # A sniffed head may end inside a multi-byte character.
        if partial and error.start >= len(data) - 3:
            return data[: error.start].decode("utf-8", errors="replace")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _looks_like_html(text: str) -> bool:
    start = text.lstrip()[:1024].lower()
    return start.startswith(("<!doctype html", "<html")) or "<html" in start or "<body" in start


# --- PDF -------------------------------------------------------------------------------

# Whitespace kept as drawn, text outside the page dropped, ligatures expanded, no images;
# unknown glyphs become U+FFFD (which cleaning removes) instead of raw CID codes.
_PDF_TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP


def _extract_pdf(
    path: Path, name: str, passwords: Sequence[str], limits: DocumentLimits
) -> ExtractedDocument:
    # MuPDF reports repairs of damaged files on stderr; the outcome is reported here instead.
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    try:
        pdf = pymupdf.open(path, filetype="pdf")
    except Exception:  # noqa: BLE001 - MuPDF raises many types; none may escape
        raise UnreadableDocument(
            f"{name} is a damaged PDF that cannot be opened; re-export or re-download it.",
            "malformed",
        ) from None
    try:
        return _read_pdf(pdf, name, passwords, limits)
    except UnreadableDocument:
        raise
    except Exception as error:  # noqa: BLE001 - MuPDF raises many types; none may escape
        raise UnreadableDocument(
            f"{name} is a damaged PDF that could not be read ({_short(error, path, name)}); "
            "re-export or re-download it.",
            "malformed",
        ) from None
    finally:
        pdf.close()


def _read_pdf(
    pdf: pymupdf.Document, name: str, passwords: Sequence[str], limits: DocumentLimits
) -> ExtractedDocument:
    if pdf.needs_pass and not any(pdf.authenticate(password) for password in ("", *passwords)):
        raise UnreadableDocument(
            f"{name} is password-protected; add its password to QPBOT_PDF_PASSWORDS (a JSON "
            "list) or upload a copy without a password.",
            "encrypted",
        )
    if pdf.page_count == 0:
        raise UnreadableDocument(
            f"{name} is a damaged PDF with no readable pages; re-export or re-download it.",
            "malformed",
        )
    outline = _pdf_outline(pdf)
    blocks: list[TextBlock] = []
    heading: str | None = None
    characters = 0
    for page_number, page in enumerate(pdf, start=1):
        _check_page_content(pdf, page, page_number, name, limits)
        try:
            raw = _pdf_page_blocks(page)
            texts = [b[4] for b in _reading_order(raw, page.rect.width) if b[4].strip()]
            texts += _pdf_form_values(page)
        except Exception:  # noqa: BLE001
            texts = []  # one broken page should not cost the rest of the document
        headings, heading = _assign_headings(texts, outline.get(page_number, []), heading)
        blocks += [TextBlock(t, page_number, h) for t, h in zip(texts, headings, strict=True)]
        characters += sum(len(text) for text in texts)
        if characters > limits.max_unpacked_bytes:
            raise UnreadableDocument(
                f"{name} holds more than {_readable_size(limits.max_unpacked_bytes)} of text by "
                f"page {page_number} of {pdf.page_count}; split it into smaller documents or "
                "raise QPBOT_MAX_UNPACKED_MB.",
                "too_large",
            )
    if not blocks:
        if pdf.is_repaired and not any(page.get_images() for page in pdf):
            raise UnreadableDocument(
                f"{name} is a damaged PDF: what could be repaired holds no text; re-export or "
                "re-download it.",
                "malformed",
            )
        raise UnreadableDocument(
            f"{name} has no text layer (a scanned or image-only PDF) and OCR is not enabled; "
            "run it through OCR (e.g. ocrmypdf) or export it with text, then upload it again.",
            "no_text",
        )
    return ExtractedDocument("pdf", blocks, pdf.page_count, _pdf_properties(pdf.metadata or {}))


def _check_page_content(
    pdf: pymupdf.Document, page: pymupdf.Page, page_number: int, name: str, limits: DocumentLimits
) -> None:
    """Raises UnreadableDocument before a page is read when its content streams (its own
    and its forms') unpack to more than the limit, or one is packed as tightly as only a
    decompression bomb is: MuPDF holds each character of a page's text in about 130 bytes."""
    where = f"page {page_number}'s content"
    unpacked = 0
    try:
        xrefs = [*page.get_contents(), *(form[0] for form in page.get_xobjects())]
    except Exception:  # noqa: BLE001 - a page MuPDF cannot list is left to the reading
        return
    for xref in xrefs:
        packed, size, whole = _pdf_stream_sizes(pdf, xref, limits.max_unpacked_bytes - unpacked)
        if _looks_like_bomb(size, packed, limits):
            raise _bomb_error(name, where, size, packed, limits, partly=not whole)
        unpacked += size
        if unpacked > limits.max_unpacked_bytes:
            raise UnreadableDocument(
                f"{name}: {where} unpacks to more than "
                f"{_readable_size(limits.max_unpacked_bytes)}, over the limit for one page; split "
                "the document or raise QPBOT_MAX_UNPACKED_MB.",
                "too_large",
            )


def _pdf_stream_sizes(pdf: pymupdf.Document, xref: int, budget: int) -> tuple[int, int, bool]:
    """(packed, unpacked, whole) bytes of a stream, unpacked no further than just past
    `budget` (or past the ratio floor, so that the ratio tells): Flate streams (nearly all)
    are inflated a megabyte at a time and counted, never held whole; the rare other filters
    are left to MuPDF. When unpacking stopped early (`whole` false), `packed` is what had
    been unpacked by then."""
    try:
        raw = pdf.xref_stream_raw(xref) or b""
        kind, value = pdf.xref_get_key(xref, "Filter")
        filters = value.strip("[]").split() if kind != "null" else []
        if filters and filters != ["/FlateDecode"]:
            return len(raw), len(pdf.xref_stream(xref) or b""), True
    except Exception:  # noqa: BLE001 - a stream MuPDF cannot read is left to the reading
        return 0, 0, True
    if not filters:
        return len(raw), len(raw), True
    inflater, unpacked, pending = zlib.decompressobj(), 0, raw
    try:
        while pending and unpacked <= max(budget, _RATIO_FLOOR):
            unpacked += len(inflater.decompress(pending, _MB))
            pending = inflater.unconsumed_tail
    except zlib.error:
        pending = b""  # a damaged stream: what inflated so far counts
    return len(raw) - len(pending), unpacked, not pending


def _reading_order(raw_blocks, page_width: float) -> list:
    """Text blocks in reading order, columns read top to bottom one after the other.

    Blocks are sorted top to bottom; between blocks that cross the page's middle, the
    blocks left of the middle come before those right of it when both sides look like
    columns of running text. Otherwise (tables, forms, labels beside values) rows are read
    left to right, as MuPDF's own sort does.
    """
    text_blocks = sorted((b for b in raw_blocks if b[6] == 0), key=lambda b: (b[1], b[0]))
    middle, gutter = page_width / 2, page_width * 0.02
    ordered: list = []
    band: list = []

    def flush_band():
        left = [b for b in band if (b[0] + b[2]) / 2 < middle]
        right = [b for b in band if (b[0] + b[2]) / 2 >= middle]
        if _is_text_column(left) and _is_text_column(right):
            ordered.extend(left + right)
        else:
            ordered.extend(band)
        band.clear()

    for block in text_blocks:
        if block[0] < middle - gutter and block[2] > middle + gutter:
            flush_band()
            ordered.append(block)
        else:
            band.append(block)
    flush_band()
    return ordered


def _is_text_column(blocks: list) -> bool:
    return any(block[4].strip().count("\n") >= 2 for block in blocks)


# --- PDF tables ------------------------------------------------------------------------
#
# MuPDF's text blocks read a table cell by cell, and wrapped cells land in the wrong rows.
# PyMuPDF's table finder (its "lines" strategy: cells bounded by drawn rules) gives the grid;
# each table found becomes one block, a line per row with cells joined by " | " as DOCX and
# HTML tables are, in place of the blocks it covers. On a whole page the finder costs 30 to
# 60 times the page's text extraction, so it only looks at pages whose text has cells side
# by side, and there only at groups of drawn rules with words in a third of their cells.


@dataclass(frozen=True)
class _PdfTable:
    bbox: pymupdf.Rect  # the table with its header
    rows: list[str]  # header first, cells joined by " | "


def _pdf_page_blocks(page: pymupdf.Page) -> list:
    """The page's text as get_text("blocks") tuples, each table found as one block in place
    of the text blocks it covers."""
    textpage = page.get_textpage(flags=_PDF_TEXT_FLAGS)
    blocks = textpage.extractBLOCKS()
    if page.rotation or not _may_hold_table(blocks):
        return blocks  # the finder turns rotated pages in the document itself; leave them
    try:
        words = textpage.extractWORDS()
        if tables := _pdf_tables(page, words):
            return _outside_tables(blocks, words, tables) + [
                (*table.bbox, "\n".join(table.rows) + "\n", -1, 0) for table in tables
            ]
    except Exception:  # noqa: BLE001 - a failing table finder costs the page its tables only
        pass
    return blocks


# A block of two lines that is a numbered heading ("2.1" beside "Setup"), not a table row.
_SECTION_NUMBER = re.compile(r"\s*(\d+(\.\d+)*\.?|[A-Z](\.\d+)*\.?|[IVX]+\.)\s*\n")


def _may_hold_table(blocks: list) -> bool:
    """Whether a text block has lines side by side, as MuPDF reads a table's row (or the
    whole table) into one block with a line per cell. Judged from the blocks alone, so it
    costs next to nothing; it passes most pages of papers (figure labels, equations) but
    few of prose-only documents."""
    for x0, y0, x1, y1, text, _, kind in blocks:
        lines = [line for line in text.split("\n") if line.strip()] if kind == 0 else []
        if len(lines) < 2 or (len(lines) == 2 and _SECTION_NUMBER.match(text)):
            continue
        # Stacked lines would be height / len(lines) high and, at about 0.42 line heights
        # a character, could hold width / (0.42 * line height) characters; when every line
        # is under half that, the lines sit beside each other.
        line_height = (y1 - y0) / len(lines)
        if line_height > 0 and max(map(len, lines)) < 1.2 * (x1 - x0) / line_height:
            return True
    return False


def _pdf_tables(page: pymupdf.Page, words: list) -> list[_PdfTable]:
    """What PyMuPDF's table finder finds in the page's ruled regions that reads like a
    table; `words` are the page's, as extractWORDS() gives them."""
    centers = [((w[0] + w[2]) / 2, (w[1] + w[3]) / 2) for w in words]
    regions = _ruled_regions(page)
    tables = []
    for region, paths in regions:
        inside = [
            c for c in centers if region.x0 <= c[0] <= region.x1 and region.y0 <= c[1] <= region.y1
        ]
        if len(inside) < 4 or not _looks_like_grid(region, paths, inside):
            continue
        found = page.find_tables(
            clip=region + (-2, -2, 2, 2),
            paths=[_as_drawing(path) for path in paths],
            add_boxes=[region],  # the outer border, for tables ruled only inside
            strategy="lines",
            use_layout=False,  # the layout model costs about a second a page
        )
        for table in found.tables:
            others = [other.bbox for other in found.tables if other is not table]
            others += [other for other, _ in regions if other is not region]
            if (pdf_table := _pdf_table(table, words, others)) is not None:
                tables.append(pdf_table)
    return tables


def _ruled_regions(page: pymupdf.Page) -> list[tuple[pymupdf.Rect, list[dict]]]:
    """Groups of drawn rules (paths of only axis-parallel lines and rectangles) that touch
    each other's group, within 3 points: each group's bounding box and paths."""
    half_page = abs(page.rect) / 2
    rules = []
    for path in page.get_cdrawings():
        items = path.get("items") or ()
        if items and all(_is_rule(item) for item in items):
            x0, y0, x1, y1 = path["rect"]
            if (x1 - x0) * (y1 - y0) <= half_page:  # not a page background
                rules.append(((x0, y0, x1, y1), path))
    # Swept top to bottom; a group is [x0, y0, x1, y1, paths], plain lists (Rects are slow).
    done: list[list] = []
    active: list[list] = []
    for (x0, y0, x1, y1), path in sorted(rules, key=lambda rule: rule[0][1]):
        done += [group for group in active if group[3] + 3 < y0]
        active = [group for group in active if group[3] + 3 >= y0]
        touching = [g for g in active if g[0] - 3 <= x1 and x0 - 3 <= g[2]]
        merged = [x0, y0, x1, y1, [path]]
        for group in touching:
            merged[0], merged[1] = min(merged[0], group[0]), min(merged[1], group[1])
            merged[2], merged[3] = max(merged[2], group[2]), max(merged[3], group[3])
            merged[4] += group[4]
        active = [group for group in active if all(group is not t for t in touching)]
        active.append(merged)
    return [
        (pymupdf.Rect(group[:4]), group[4])
        for group in done + active
        if group[2] - group[0] >= 20 and group[3] - group[1] >= 10
    ]


def _is_rule(item: tuple) -> bool:
    if item[0] == "re":
        return True
    if item[0] == "l":
        (x0, y0), (x1, y1) = item[1], item[2]
        return abs(x0 - x1) <= 1 or abs(y0 - y1) <= 1
    return False  # curves and quads: a figure, not a table


def _looks_like_grid(region: pymupdf.Rect, paths: list[dict], centers: list) -> bool:
    """Whether the rules cut the region into at least 2 x 2 cells and words sit in at least
    a third of them. Charts (gridlines, bars) and boxes around diagrams fail; the table
    finder need not look at them."""
    ys, xs = [region.y0, region.y1], [region.x0, region.x1]
    for path in paths:
        for item in path["items"]:
            if item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
            else:
                x0, y0, x1, y1 = item[1]
            x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
            if y1 - y0 <= 2 and x1 - x0 > 2:
                ys.append((y0 + y1) / 2)
            elif x1 - x0 <= 2 and y1 - y0 > 2:
                xs.append((x0 + x1) / 2)
            elif x1 - x0 > 2:
                ys += [y0, y1]
                xs += [x0, x1]
    ys, xs = _distinct(ys), _distinct(xs)
    if len(ys) < 3 or len(xs) < 3:
        return False
    cells = {(bisect.bisect(ys, y), bisect.bisect(xs, x)) for x, y in centers}
    filled = [(row, column) for row, column in cells if row < len(ys) and column < len(xs)]
    return len(filled) >= (len(ys) - 1) * (len(xs) - 1) / 3


def _distinct(values: list[float], tolerance: float = 2.0) -> list[float]:
    distinct: list[float] = []
    for value in sorted(values):
        if not distinct or value - distinct[-1] > tolerance:
            distinct.append(value)
    return distinct


def _as_drawing(path: dict) -> dict:
    """A get_cdrawings() path as find_tables(paths=...) reads it (get_drawings()'s form)."""
    items = [
        ("l", pymupdf.Point(item[1]), pymupdf.Point(item[2]))
        if item[0] == "l"
        else ("re", pymupdf.Rect(item[1]), *item[2:])
        for item in path["items"]
    ]
    return {
        "items": items,
        "rect": pymupdf.Rect(path["rect"]),
        "type": path.get("type", "f"),
        "closePath": path.get("closePath", False),
        "color": path.get("color"),
        "fill": path.get("fill"),
        "width": path.get("width") or 1.0,
    }


def _pdf_table(table, words: list, other_grids: list) -> _PdfTable | None:
    """A table from the finder as rows of text, or None when it does not read like a table
    (see _cell_words and _reads_like_table). `other_grids`: the boxes of the page's other
    tables and ruled regions, whose text cannot be this table's header."""
    bbox = pymupdf.Rect(table.bbox)
    rows = [list(row.cells) for row in table.rows]
    free_words = [w for w in words if not any(_center_in(w, other) for other in other_grids)]
    header = _header_above(rows[0], free_words)
    if header is not None:
        rows.insert(0, header)
        bbox |= pymupdf.Rect(bbox.x0, min(cell[1] for cell in header if cell), bbox.x1, bbox.y0)
    cell_words = _cell_words(rows, words, bbox)
    if cell_words is None:
        return None
    grid: list[list[str]] = []
    for row in rows:
        grid += _split_merged_row([cell_words[cell] if cell else [] for cell in row])
    grid = [row for row in grid if any(row)]
    columns = [j for j in range(len(grid[0]) if grid else 0) if any(row[j] for row in grid)]
    grid = [[row[j] for j in columns] for row in grid]
    if not _reads_like_table(grid):
        return None
    return _PdfTable(bbox, [" | ".join(row) for row in grid])


def _header_above(first_row: list, words: list) -> list | None:
    """Header cells over the text lines right above the table, or None when the first
    row is the header. PyMuPDF's rule for a header outside the grid: up to 5 lines, each
    closer than its height to the one below (or to the table), none with a word across a
    column border; and, here, naming two columns or more (one filled cell is a caption).
    `words` leaves out those of other grids. (PyMuPDF's Table.header applies the rule but
    reads the page's text again for each header cell, 0.3 to 0.7 seconds a table.)"""
    cells = [cell for cell in first_row if cell]
    left, right, top = cells[0][0], cells[-1][2], min(cell[1] for cell in cells)
    candidates = [w for w in words if w[3] <= top + 1 and left <= (w[0] + w[2]) / 2 <= right]
    header_top, named = top, set()
    for _ in range(5):
        line = [w for w in candidates if w[3] <= header_top + 1 and header_top - w[3] < w[3] - w[1]]
        columns = [
            next((i for i, c in enumerate(cells) if c[0] - 1 <= w[0] and w[2] <= c[2] + 1), None)
            for w in line
        ]
        if not line or None in columns:
            break
        named |= set(columns)
        header_top = min(w[1] for w in line)
    if len(named) < 2:
        return None
    return [(cell[0], header_top, cell[2], top) if cell else None for cell in first_row]


def _cell_words(
    rows: list[list[tuple | None]], words: list, bbox: pymupdf.Rect
) -> dict[tuple, list] | None:
    """The words in each cell, or None when the grid does not fit the text: a word in no
    cell (it would be lost), words across cell borders, or text lines running from one
    cell into the next (a figure's frame or boxes drawn around words in a sentence)."""
    cells = [cell for row in rows for cell in row if cell]
    tops = [min(cell[1] for cell in row if cell) for row in rows]
    cell_words: dict[tuple, list] = {cell: [] for cell in cells}
    cells_by_line: dict[tuple, set] = {}
    inside = [word for word in words if _center_in(word, bbox)]
    crossing_border = 0
    for word in inside:
        # The row starting above the word holds its cell, unless a cell above spans down.
        row = rows[max(0, bisect.bisect_right(tops, (word[1] + word[3]) / 2) - 1)]
        cell = next((c for c in row if c and _center_in(word, c)), None)
        cell = cell or next((c for c in cells if _center_in(word, c)), None)
        if cell is None:
            return None
        cell_words[cell].append(word)
        cells_by_line.setdefault((word[5], word[6]), set()).add(cell)
        x0, y0, x1, y1 = cell
        if word[0] < x0 - 2 or word[2] > x1 + 2 or word[1] < y0 - 3 or word[3] > y1 + 3:
            crossing_border += 1
    crossing_lines = sum(1 for line_cells in cells_by_line.values() if len(line_cells) > 1)
    if crossing_border > len(inside) / 50 or crossing_lines > len(cells_by_line) / 10:
        return None
    return cell_words


def _reads_like_table(grid: list[list[str]]) -> bool:
    """At least 2 rows and 2 columns, half the cells filled, most rows with two filled
    cells or more, and cells of a few words rather than running text (a framed
    paragraph)."""
    if len(grid) < 2 or len(grid[0]) < 2:
        return False
    filled = [cell for row in grid for cell in row if cell]
    rows_of_cells = sum(1 for row in grid if sum(1 for cell in row if cell) >= 2)
    return (
        len(filled) >= len(grid) * len(grid[0]) / 2
        and rows_of_cells > len(grid) / 2
        and statistics.median(len(cell.split()) for cell in filled) <= 15
    )


def _center_in(word: tuple, rect) -> bool:
    x, y = (word[0] + word[2]) / 2, (word[1] + word[3]) / 2
    return rect[0] <= x < rect[2] and rect[1] <= y < rect[3]


def _split_merged_row(cells: list[list]) -> list[list[str]]:
    """A table row as text rows: one, or several where no rules separate the rows of the
    table body, which shows as every filled cell holding the same number of lines side by
    side, most of them stacked values ("1536 / 1920" beside "16 / 20"). Wrapped text
    (cells of differing line counts, or lines that are not values) stays one row."""
    lines_by_cell = [_cell_lines(words) for words in cells]
    filled = [lines for lines in lines_by_cell if lines]
    counts = {len(lines) for lines in filled}
    if len(filled) >= 2 and len(counts) == 1 and (count := counts.pop()) >= 2:
        aligned = all(
            abs(lines[i][0] - filled[0][i][0]) <= filled[0][i][1] / 2
            for lines in filled
            for i in range(count)
        )
        short = count >= 3 or all(len(line[2]) <= 3 for lines in filled for line in lines)
        # A cell of stacked values: three lines in four or more hold a number ("N/A" may
        # stand for one); "July 1, 2011 / through / Sep. 30, 2011" is wrapped text.
        numeric = [
            sum(any(char.isdigit() for word in line[2] for char in word) for line in lines)
            >= 0.75 * count
            for lines in filled
        ]
        if aligned and short and sum(numeric) >= len(filled) / 2:
            return [
                [" ".join(lines[i][2]) if lines else "" for lines in lines_by_cell]
                for i in range(count)
            ]
    return [[" ".join(w[4] for w in words) for words in cells]]


def _cell_lines(words: list) -> list[tuple[float, float, list[str]]]:
    """A cell's text lines in order: (middle y, height, words)."""
    lines: dict[tuple, list] = {}
    for word in words:
        lines.setdefault((word[5], word[6]), []).append(word)
    result = []
    for line in lines.values():
        top, bottom = min(w[1] for w in line), max(w[3] for w in line)
        result.append(((top + bottom) / 2, bottom - top, [w[4] for w in line]))
    return sorted(result)


def _outside_tables(blocks: list, words: list, tables: list[_PdfTable]) -> list:
    """The text blocks without the words that lie inside a table; a block partly inside
    keeps its other lines (words joined by single spaces)."""
    covered: set[int] = set()  # blocks with words inside a table
    outside: dict[int, list] = {}  # each block's words outside the tables
    for word in words:
        if any(_center_in(word, table.bbox) for table in tables):
            covered.add(word[5])
        else:
            outside.setdefault(word[5], []).append(word)
    kept = []
    for block in blocks:
        number = block[5]
        if block[6] != 0 or number not in covered:
            kept.append(block)
        elif rest := outside.get(number):
            lines: dict[int, list[str]] = {}
            for word in rest:
                lines.setdefault(word[6], []).append(word[4])
            text = "".join(" ".join(line) + "\n" for line in lines.values())
            x0, y0 = min(w[0] for w in rest), min(w[1] for w in rest)
            x1, y1 = max(w[2] for w in rest), max(w[3] for w in rest)
            kept.append((x0, y0, x1, y1, text, number, 0))
    return kept


_FORM_TEXT_FIELDS = (
    pymupdf.PDF_WIDGET_TYPE_TEXT,
    pymupdf.PDF_WIDGET_TYPE_COMBOBOX,
    pymupdf.PDF_WIDGET_TYPE_LISTBOX,
)


def _pdf_form_values(page: pymupdf.Page) -> list[str]:
    """Filled-in form fields as "label: value" lines, one block per page, if any.

    The page text shows a value apart from its label; this block keeps them together.
    """
    lines = []
    for widget in page.widgets(types=_FORM_TEXT_FIELDS):
        value = widget.field_value
        if isinstance(value, str) and value.strip():
            label = (widget.field_label or widget.field_name or "").strip()
            lines.append(f"{label}: {value.strip()}" if label else value.strip())
    return ["\n".join(lines)] if lines else []


def _pdf_outline(pdf: pymupdf.Document) -> dict[int, list[str]]:
    """Outline (bookmark) titles by the 1-based page they start on, in outline order."""
    try:
        toc = pdf.get_toc(simple=True)
    except Exception:  # noqa: BLE001
        return {}  # a cyclic or broken outline costs the headings, not the document
    outline: dict[int, list[str]] = {}
    for entry in toc[:50_000]:
        title = " ".join(str(entry[1]).split())
        if title and isinstance(entry[2], int) and entry[2] >= 1:
            outline.setdefault(entry[2], []).append(title)
    return outline


def _assign_headings(
    texts: list[str], titles: list[str], carried: str | None
) -> tuple[list[str | None], str | None]:
    """The outline heading of each block of a page, and the heading carried to the next.

    An entry starts at the first block (after the previous entry's) that reads like its
    title; an entry whose title is not found starts where the previous one did, or at the
    top of the page. Blocks above the page's first entry keep the carried heading.
    """
    keys = [_match_key(text) for text in texts]
    starts: dict[int, str] = {}
    position, search_from = 0, 0
    for title in titles:
        key = _match_key(title)
        found = next(
            (i for i in range(search_from, len(keys)) if _reads_like_title(keys, i, key)),
            None,
        )
        if found is not None:
            position, search_from = found, found + 1
        starts[position] = title
    headings = []
    heading = carried
    for index in range(len(texts)):
        heading = starts.get(index, heading)
        headings.append(heading)
    return headings, titles[-1] if titles else carried


def _reads_like_title(keys: list[str], index: int, title_key: str) -> bool:
    """Whether block `index` (or it and the next, as "1" + "Introduction") is the title."""
    candidates = [keys[index]]
    if index + 1 < len(keys) and len(keys[index]) < len(title_key):
        candidates.append(keys[index] + keys[index + 1])
    for candidate in candidates:
        unnumbered = candidate.lstrip("0123456789")
        if len(title_key) < 3:  # "A" would match any block starting with an a
            matches = title_key in (candidate, unnumbered)
        else:
            matches = (
                candidate.startswith(title_key)
                or unnumbered.startswith(title_key)
                or (title_key in candidate and len(candidate) <= 2 * len(title_key) + 20)
            )
        if matches:
            return True
    return False


def _match_key(text: str) -> str:
    return "".join(char for char in unicodedata.normalize("NFKC", text).lower() if char.isalnum())


# D:YYYYMMDDHHmmSS then Z or +HH'mm' / -HH'mm'; everything after the year is optional.
_PDF_DATE = re.compile(
    r"D?:?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?"
    r"\s*(?:([Zz+\-])(\d{2})?'?(\d{2})?'?)?"
)


def _pdf_properties(metadata: dict) -> dict[str, str]:
    properties = {}
    for key, source in (("title", "title"), ("author", "author")):
        value = " ".join(str(metadata.get(source) or "").split())
        if value:
            properties[key] = value
    for key, source in (("created", "creationDate"), ("modified", "modDate")):
        value = _pdf_date(str(metadata.get(source) or ""))
        if value:
            properties[key] = value
    return properties


def _pdf_date(raw: str) -> str | None:
    """A PDF date ("D:20090428120000+02'00'") as ISO 8601; None when it cannot be read."""
    match = _PDF_DATE.match(raw.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, sign, tz_hours, tz_minutes = match.groups()
    try:
        tz = None
        if sign in ("Z", "z"):
            tz = UTC
        elif sign in ("+", "-"):
            offset = timedelta(hours=int(tz_hours or 0), minutes=int(tz_minutes or 0))
            tz = timezone(offset if sign == "+" else -offset)
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=tz,
        )
    except ValueError:
        return None
    return moment.isoformat()


# --- ZIP packages (DOCX) and legacy Office files ----------------------------------------


def _extract_zip_package(
    path: Path, name: str, claimed: str | None, limits: DocumentLimits
) -> ExtractedDocument:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        if claimed in (None, "docx"):
            raise UnreadableDocument(
                f"{name} is damaged or truncated (not a complete ZIP package); save or "
                "download it again.",
                "malformed",
            ) from None
        raise _not_a_document_error(name, claimed, "a damaged ZIP archive") from None
    names = {member.filename for member in members}
    if "word/document.xml" not in names:
        looks_like = next(
            (what for marker, what in _ZIP_PACKAGES if marker in names), "a ZIP archive"
        )
        raise _not_a_document_error(name, claimed, looks_like)
    unpacked = sum(member.file_size for member in members)
    if unpacked > limits.max_bytes:  # python-docx holds every part in memory
        raise UnreadableDocument(
            f"{name} unpacks to {_readable_size(unpacked)}, over the "
            f"{_readable_size(limits.max_bytes)} limit; split it or remove large embedded media.",
            "too_large",
        )
    try:
        with zipfile.ZipFile(path) as archive:
            _check_parts_to_parse(archive, name, limits)
        document = docx.Document(str(path))
        return _DocxReader(document, name).read()
    except UnreadableDocument:
        raise
    except Exception as error:  # noqa: BLE001 - python-docx and lxml raise many types
        raise UnreadableDocument(
            f"{name} is a damaged Word document ({_short(error, path, name)}); open and "
            "re-save it in Word or LibreOffice.",
            "malformed",
        ) from None


def _check_parts_to_parse(archive: zipfile.ZipFile, name: str, limits: DocumentLimits) -> None:
    """Raises UnreadableDocument, from the sizes the ZIP directory records (zipfile never
    unpacks past them), when the parts python-docx would parse unpack to more than the limit
    or one is packed as tightly as only a decompression bomb is. Parsed are the XML and
    text parts by the content types the package declares, whatever their names; images and
    embedded files are only held as bytes. lxml holds about 8 times a part's size."""
    members = archive.infolist()
    declared = next((m for m in members if m.filename == _CONTENT_TYPES), None)
    # The content types are read first, themselves within the limits.
    _check_parts([declared] if declared else [], name, limits)
    defaults, overrides = _content_types(archive.read(declared)) if declared else ({}, {})

    def is_parsed(member: zipfile.ZipInfo) -> bool:
        if member is declared or member.filename.endswith(".rels"):
            return True  # python-docx reads relationships by their names
        content_type = overrides.get("/" + member.filename.lower()) or defaults.get(
            Path(member.filename).suffix.lstrip(".").lower(), ""
        )
        return content_type.endswith("xml") or content_type.startswith("text/")

    _check_parts([m for m in members if is_parsed(m)], name, limits)


_CONTENT_TYPES = "[Content_Types].xml"


def _check_parts(parts: list[zipfile.ZipInfo], name: str, limits: DocumentLimits) -> None:
    for part in parts:
        if _looks_like_bomb(part.file_size, part.compress_size, limits):
            raise _bomb_error(
                name, f"its part {part.filename}", part.file_size, part.compress_size, limits
            )
    unpacked = sum(part.file_size for part in parts)
    if unpacked > limits.max_unpacked_bytes:
        largest = max(parts, key=lambda part: part.file_size)
        raise UnreadableDocument(
            f"{name} unpacks to {_readable_size(unpacked)} of XML to parse ({largest.filename} "
            f"{_readable_size(largest.file_size)}), over the "
            f"{_readable_size(limits.max_unpacked_bytes)} limit; it was not parsed. Split it into "
            "smaller documents or raise QPBOT_MAX_UNPACKED_MB.",
            "too_large",
        )


def _content_types(xml: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """A package's declared content types: (by extension, by part name), both lowercased
    as python-docx looks them up."""
    defaults, overrides = {}, {}
    for element in parse_xml(xml):
        content_type = (element.get("ContentType") or "").lower()
        if element.tag.endswith("}Default"):
            defaults[(element.get("Extension") or "").lower()] = content_type
        elif element.tag.endswith("}Override"):
            overrides[(element.get("PartName") or "").lower()] = content_type
    return defaults, overrides


# Office Open XML packages other than Word, by a part only they have.
_ZIP_PACKAGES = [
    ("xl/workbook.xml", "an Excel workbook"),
    ("ppt/presentation.xml", "a PowerPoint presentation"),
    ("content.xml", "an OpenDocument file"),
]
# Legacy (OLE compound file) Office formats, by the name of their main stream.
_LEGACY_OFFICE_STREAMS = [
    ("WordDocument", "a legacy Word document (.doc)"),
    ("Workbook", "a legacy Excel workbook (.xls)"),
    ("PowerPoint Document", "a legacy PowerPoint file (.ppt)"),
]


def _legacy_office_error(path: Path, name: str) -> UnreadableDocument:
    data = path.read_bytes()
    if "EncryptedPackage".encode("utf-16-le") in data:
        return UnreadableDocument(
            f"{name} is a password-protected Office document, which qpbot cannot decrypt; "
            "save a copy without a password and upload that.",
            "encrypted",
        )
    looks_like = next(
        (what for stream, what in _LEGACY_OFFICE_STREAMS if stream.encode("utf-16-le") in data),
        "a legacy Microsoft Office binary file",
    )
    return UnreadableDocument(
        f"{name} is {looks_like}, which is not supported; save it as .docx or PDF and upload that.",
        "unsupported_format",
    )


_W_P, _W_T, _W_TAB, _W_BR, _W_CR = qn("w:p"), qn("w:t"), qn("w:tab"), qn("w:br"), qn("w:cr")
_W_TBL, _W_TR, _W_TC = qn("w:tbl"), qn("w:tr"), qn("w:tc")
_W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML = qn("w:sdt"), qn("w:sdtContent"), qn("w:customXml")
_W_ALT_CHUNK, _W_TXBX_CONTENT, _W_PPR = qn("w:altChunk"), qn("w:txbxContent"), qn("w:pPr")
_W_RENDERED_BREAK = qn("w:lastRenderedPageBreak")
_W_NO_BREAK_HYPHEN = qn("w:noBreakHyphen")
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
# Subtrees whose text is not part of the paragraph it sits in: the fallback copy of a
# drawing (its primary copy is read), field codes, deleted text.
_SKIPPED = {_MC_FALLBACK, qn("w:instrText"), qn("w:delText"), _W_PPR, qn("w:rPr")}


class _DocxReader:
    """Walks a DOCX body in order, tracking the current heading and page.

    Pages come from Word's own record of where it last broke pages
    (w:lastRenderedPageBreak) when the file has one; otherwise from explicit page and
    section breaks.
    """

    def __init__(self, document, name: str):
        self.document = document
        self.name = name
        self.body = document.element.body
        self.rendered_breaks = self.body.find(".//" + _W_RENDERED_BREAK) is not None
        self.style_names = {style.style_id: style.name or "" for style in document.styles}
        self.page = 1
        self.heading: str | None = None
        self.blocks: list[TextBlock] = []

    def read(self) -> ExtractedDocument:
        headers = self._part_blocks((RT.HEADER,))
        self._read_elements(self.body)
        body = self.blocks
        # Headers and footers once, not per page; notes after the body they annotate.
        # Comments are left out: reviewers' remarks are not the document's content.
        notes = self._part_blocks((RT.FOOTER, RT.FOOTNOTES, RT.ENDNOTES))
        blocks = [TextBlock(b.text, 1) for b in headers] + body
        blocks += [TextBlock(b.text, self.page) for b in notes]
        if not any(block.text.strip() for block in blocks):
            if not self._has_pictures():
                raise UnreadableDocument(
                    f"{self.name} contains no text at all (an empty Word document); add its "
                    "content and upload it again.",
                    "empty",
                )
            raise UnreadableDocument(
                f"{self.name} has no text, only images, charts or embedded objects, and OCR is "
                "not enabled; export it with its text or as a searchable PDF.",
                "no_text",
            )
        page_count = max(self.page, self._word_page_count())
        return ExtractedDocument("docx", blocks, page_count, self._properties())

    def _read_elements(self, parent) -> None:
        for element in parent.iterchildren():
            tag = element.tag
            if tag == _W_P:
                self._read_paragraph(element)
            elif tag == _W_TBL:
                self._read_table(element)
            elif tag in (_W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML):
                self._read_elements(element)
            elif tag == _W_ALT_CHUNK:
                self._read_alt_chunk(element)

    def _read_paragraph(self, paragraph) -> None:
        properties = paragraph.find(_W_PPR)
        explicit_breaks = not self.rendered_breaks and properties is not None
        if explicit_breaks and _on(properties.find(qn("w:pageBreakBefore"))):
            self.page += 1
        pieces: list[str] = []
        text_boxes: list = []
        start_page = self._collect(paragraph, pieces, text_boxes)
        text = "".join(pieces).strip()
        if text:
            if self._is_heading(properties):
                self.heading = " ".join(text.split())
            self.blocks.append(TextBlock(text, start_page, self.heading))
        for text_box in text_boxes:
            self._read_elements(text_box)
        if explicit_breaks and _section_starts_new_page(properties.find(qn("w:sectPr"))):
            self.page += 1

    def _collect(self, element, pieces: list[str], text_boxes: list) -> int:
        """Appends the element's text to `pieces`; returns the page its text starts on."""
        start_page = None
        for node in element.iter():
            tag = node.tag
            if tag in _SKIPPED or _inside_skipped(node, element):
                continue
            if tag == _W_P and node is not element:
                pieces.append("\n")  # paragraphs inside a table cell or content control
            elif tag == _W_T:
                if start_page is None and (node.text or "").strip():
                    start_page = self.page
                pieces.append(node.text or "")
            elif tag == _W_TAB:
                pieces.append("\t")
            elif tag in (_W_BR, _W_CR):
                is_page_break = node.get(qn("w:type")) == "page"
                if is_page_break and not self.rendered_breaks:
                    self.page += 1
                pieces.append("\n")
            elif tag == _W_RENDERED_BREAK:
                self.page += 1
            elif tag == _W_NO_BREAK_HYPHEN:
                pieces.append("-")
            elif tag == _W_TXBX_CONTENT:
                text_boxes.append(node)
        return start_page if start_page is not None else self.page

    def _read_table(self, table) -> None:
        rows: list[str] = []
        start_page = None
        for row in table.iter(_W_TR):
            if _nearest_table(row) is not table:
                continue  # a nested table's rows are read as part of their cell
            cells = []
            for cell in row.iter(_W_TC):
                if _nearest_row(cell) is not row:
                    continue
                pieces: list[str] = []
                page = self._collect(cell, pieces, [])
                start_page = start_page or page
                cells.append(" ".join("".join(pieces).split()))
            if any(cells):
                rows.append(" | ".join(cells))
        if rows:
            self.blocks.append(TextBlock("\n".join(rows), start_page or self.page, self.heading))

    def _read_alt_chunk(self, element) -> None:
        """An altChunk embeds another document (HTML or text) in the body."""
        rel_id = element.get(qn("r:id"))
        rel = self.document.part.rels.get(rel_id)
        if rel is None or rel.is_external:
            return
        part = rel.target_part
        if "html" in part.content_type:
            embedded = _html_blocks(BeautifulSoup(part.blob, "html.parser"))
        elif part.content_type == "text/plain":
            embedded = _plain_text_blocks(_decode_text(part.blob))
        else:
            return
        for block in embedded:
            self.heading = block.heading or self.heading
            self.blocks.append(TextBlock(block.text, self.page, self.heading))

    def _part_blocks(self, reltypes: tuple[str, ...]) -> list[TextBlock]:
        """Blocks from related parts (headers, footers, notes), each distinct text once."""
        reader = _DocxReader(self.document, self.name)  # its own pages and headings
        rels = sorted(
            (rel for rel in self.document.part.rels.values() if rel.reltype in reltypes),
            key=lambda rel: (reltypes.index(rel.reltype), str(rel.target_ref)),
        )
        for rel in rels:
            if rel.is_external:
                continue
            root = parse_xml(rel.target_part.blob)
            if rel.reltype in (RT.FOOTNOTES, RT.ENDNOTES):
                for note in root.iterchildren():
                    if note.get(qn("w:type")) in (None, "normal"):
                        reader._read_elements(note)
            else:
                reader._read_elements(root)
        seen: set[str] = set()
        unique = []
        for block in reader.blocks:
            if block.text not in seen:
                seen.add(block.text)
                unique.append(block)
        return unique

    def _is_heading(self, properties) -> bool:
        if properties is None:
            return False
        style = properties.find(qn("w:pStyle"))
        if style is not None:
            style_name = self.style_names.get(style.get(qn("w:val")), "").lower()
            if style_name.startswith(("heading", "title")):
                return True
        level = properties.find(qn("w:outlineLvl"))
        return level is not None and level.get(qn("w:val"), "9") in tuple("012345678")

    def _has_pictures(self) -> bool:
        """Whether the document holds images, charts or embedded objects (not counting the
        thumbnail some editors store in docProps)."""
        return any(
            str(part.partname).startswith(("/word/media/", "/word/charts/", "/word/embeddings/"))
            for part in self.document.part.package.iter_parts()
        )

    def _word_page_count(self) -> int:
        """The page count Word stored in docProps/app.xml, 0 when absent."""
        try:
            blob = self.document.part.package.part_related_by(RT.EXTENDED_PROPERTIES).blob
        except KeyError:
            return 0
        match = re.search(rb"<(?:\w+:)?Pages>(\d+)</", blob)
        return int(match.group(1)) if match else 0

    def _properties(self) -> dict[str, str]:
        # python-docx invents default properties when the file has none; those are not
        # the document's own.
        try:
            self.document.part.package.part_related_by(RT.CORE_PROPERTIES)
        except KeyError:
            return {}
        core = self.document.core_properties
        properties = {}
        for key, value in (("title", core.title), ("author", core.author)):
            value = " ".join((value or "").split())
            if value:
                properties[key] = value
        for key, value in (("created", core.created), ("modified", core.modified)):
            if value is not None:
                properties[key] = value.isoformat()
        return properties


def _on(toggle) -> bool:
    """A WordprocessingML on/off property: present and not switched off."""
    off = ("0", "false", "off")
    return toggle is not None and toggle.get(qn("w:val"), "true") not in off


def _section_starts_new_page(section) -> bool:
    """Whether a section that ends here (a paragraph's w:sectPr) breaks the page."""
    if section is None:
        return False
    kind = section.find(qn("w:type"))
    return kind is None or kind.get(qn("w:val")) not in ("continuous", "nextColumn")


def _inside_skipped(node, root) -> bool:
    """Whether `node` sits in a skipped subtree or a text box below `root`."""
    parent = node.getparent()
    while parent is not None and parent is not root:
        if parent.tag in _SKIPPED or parent.tag == _W_TXBX_CONTENT:
            return True
        parent = parent.getparent()
    return False


def _nearest_table(element):
    parent = element.getparent()
    while parent is not None and parent.tag != _W_TBL:
        parent = parent.getparent()
    return parent


def _nearest_row(element):
    parent = element.getparent()
    while parent is not None and parent.tag != _W_TR:
        parent = parent.getparent()
    return parent


# --- plain text, Markdown, HTML --------------------------------------------------------

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def _extract_plain_text(text: str) -> ExtractedDocument:
    blocks = _plain_text_blocks(text)
    page_count = max((block.page for block in blocks), default=1)
    return ExtractedDocument("text", blocks, page_count, {})


def _plain_text_blocks(text: str) -> list[TextBlock]:
    """Paragraphs split at blank lines; form feeds (as pdftotext writes) start new pages."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = []
    for page_number, page in enumerate(text.split("\f"), start=1):
        for paragraph in _BLANK_LINES.split(page):
            if paragraph.strip():
                blocks.append(TextBlock(paragraph.strip("\n"), page_number))
    return blocks


_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t](.*))?$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:={2,}|-{2,})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def _extract_markdown(text: str) -> ExtractedDocument:
    """Blocks split at blank lines; '#' and underlined headings start sections; fenced
    code stays whole; YAML front matter gives title, author and date."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    properties: dict[str, str] = {}
    front_matter = _FRONT_MATTER.match(text)
    if front_matter:
        text = text[front_matter.end() :]
        for line in front_matter.group(1).splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip().strip("'\"")
            target = {"title": "title", "author": "author", "date": "created"}.get(key)
            if target and value:
                properties[target] = value
    blocks: list[TextBlock] = []
    heading: str | None = None
    paragraph: list[str] = []
    fence: str | None = None

    def flush():
        if any(line.strip() for line in paragraph):
            blocks.append(TextBlock("\n".join(paragraph).strip("\n"), 1, heading))
        paragraph.clear()

    for line in text.split("\n"):
        fence_match = _FENCE.match(line)
        if fence is not None:
            paragraph.append(line)
            if fence_match and fence_match.group(1) == fence:
                fence = None
            continue
        if fence_match:
            fence = fence_match.group(1)
            paragraph.append(line)
            continue
        atx = _ATX_HEADING.match(line)
        if atx:
            flush()
            title = (atx.group(1) or "").strip().rstrip("#").strip()  # "## Title ##"
            if title:
                heading = title
                blocks.append(TextBlock(title, 1, heading))
        elif paragraph and _SETEXT_UNDERLINE.match(line):
            title = " ".join(" ".join(paragraph).split())
            paragraph.clear()
            heading = title
            blocks.append(TextBlock(title, 1, heading))
        elif not line.strip():
            flush()
        else:
            paragraph.append(line)
    flush()
    return ExtractedDocument("markdown", blocks, 1, properties)


_HTML_DROPPED = {"script", "style", "noscript", "template", "head", "svg", "title"}
_HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_HTML_BLOCKS = {
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details",
    "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
    "header", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary",
    "ul", "tr", "td", "th", "thead", "tbody", "tfoot",
}  # fmt: skip


# BeautifulSoup holds about 1.1 KB per element: a 45 MB page of 3.1 million elements took
# 3.6 GB and 83 s, one of 180,000 elements 200 MB and 4.8 s. More is refused unparsed.
MAX_HTML_ELEMENTS = 200_000


def _extract_html(data: bytes, name: str) -> ExtractedDocument:
    elements = data.count(b"<") - data.count(b"</")  # start tags (and a few stray '<')
    if elements > MAX_HTML_ELEMENTS:
        raise UnreadableDocument(
            f"{name} has about {elements:,} HTML elements, more than the "
            f"{MAX_HTML_ELEMENTS:,} a page may have (parsing it would take gigabytes); split "
            "it into several pages or save it as text or PDF.",
            "too_large",
        )
    soup = BeautifulSoup(data, "html.parser")
    properties = {}
    if soup.title and soup.title.get_text(strip=True):
        properties["title"] = " ".join(soup.title.get_text().split())
    author = soup.find("meta", attrs={"name": re.compile(r"^author$", re.IGNORECASE)})
    if author and str(author.get("content") or "").strip():
        properties["author"] = " ".join(str(author["content"]).split())
    blocks = _html_blocks(soup)
    if not blocks:
        raise UnreadableDocument(
            f"{name} is a web page without readable text (scripts, images or markup only); "
            "save the page's text or print it to PDF.",
            "no_text",
        )
    return ExtractedDocument("html", blocks, 1, properties)


def _html_blocks(soup: BeautifulSoup) -> list[TextBlock]:
    """Text of block-level elements in document order; h1-h6 start sections and tables
    become one block with cells joined by " | "."""
    blocks: list[TextBlock] = []
    heading: str | None = None
    pending: list[str] = []

    def flush():
        text = "".join(pending).strip()
        if text:
            blocks.append(TextBlock(text, 1, heading))
        pending.clear()

    def walk(node: Tag, preformatted: bool) -> None:
        nonlocal heading
        for child in node.children:
            if isinstance(child, PreformattedString):
                continue  # comments, doctype, processing instructions
            if isinstance(child, NavigableString):
                pending.append(str(child) if preformatted else re.sub(r"\s+", " ", str(child)))
                continue
            if not isinstance(child, Tag) or child.name in _HTML_DROPPED:
                continue
            if child.name == "br":
                pending.append("\n")
            elif child.name in _HTML_HEADINGS:
                flush()
                title = " ".join(child.get_text(" ").split())
                if title:
                    heading = title
                    blocks.append(TextBlock(title, 1, heading))
            elif child.name == "table":
                flush()
                table = _html_table_text(child)
                if table:
                    blocks.append(TextBlock(table, 1, heading))
            elif child.name in _HTML_BLOCKS:
                flush()
                walk(child, preformatted or child.name == "pre")
                flush()
            else:
                walk(child, preformatted or child.name == "pre")

    walk(soup, False)
    flush()
    return blocks


def _html_table_text(table: Tag) -> str:
    lines = []
    caption = table.find("caption")
    if caption and caption.get_text(strip=True):
        lines.append(" ".join(caption.get_text(" ").split()))
    for row in table.find_all("tr"):
        if row.find_parent("table") is not table:
            continue  # nested tables are read as part of their cell
        cells = [
            " ".join(cell.get_text(" ").split())
            for cell in row.find_all(["td", "th"])
            if cell.find_parent("tr") is row
        ]
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)
