"""Cleans extracted text before it is chunked and embedded.

Per text: Unicode NFKC (which also expands ligatures), invisible and control characters
removed, words hyphenated across line breaks joined, whitespace normalised. Per document:
running headers and footers (lines repeated at the top or bottom of many pages, page
numbers included) removed, empty blocks dropped.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import replace

from qpbot_assets.documents.extraction import ExtractedDocument, TextBlock

# Line and paragraph separators that are not "\n" (after "\r\n" and "\r" are handled).
_LINE_BREAKS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028]")
# Control characters (tab and newline aside), soft hyphens, zero-width spaces, bidi marks,
# byte order marks and the replacement character; zero-width (non-)joiners stay, since
# Persian and Indic scripts need them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\u00ad\u180e\u200b\u200e\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ufffd]"
)
# A hyphen after a letter at the end of a line, with a letter starting the next line.
_HYPHENATED = re.compile(r"(?<=[^\W\d_])[-\u2010\u2011][ \t]*\n[ \t]*(?=[^\W\d_])")
_LAST_WORD = re.compile(r"\S*$")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")

# Formats whose pages carry running headers and footers in their text (plain text pages
# come from form feeds, as pdftotext writes them). DOCX headers and footers are parts of
# their own, read once, so its pages hold body text only.
_PRINTED_FORMATS = {"pdf", "text"}
# How many lines at each edge of a page can hold a running header or footer (fewer on
# short pages).
EDGE_LINES = 3
# A line repeated at a page edge on at least this share of pages is a header or footer...
RUNNING_SHARE = 0.5
# ...when the document has at least this many pages with text.
RUNNING_MIN_PAGES = 3

_DIGITS = re.compile(r"\d+")
_ROMAN_NUMERAL = re.compile(r"^[ivxlcdm]+$")


def clean_text(text: str) -> str:
    """One text, cleaned: NFKC, invisible characters removed, hyphenated words joined
    ("infor-\\nmation" -> "information"), single spaces inside lines, at most one blank
    line between paragraphs, no leading or trailing whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2029", "\n\n")
    text = unicodedata.normalize("NFKC", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = re.sub("\u00ad[ \t]*\n[ \t]*", "", text)  # a soft hyphen at a line end joins
    text = _INVISIBLE.sub("", text)
    text = _HYPHENATED.sub(_join_hyphenated, text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _join_hyphenated(match: re.Match) -> str:
    text = match.string
    if not text[match.end()].islower():
        return match.group(0)  # "non-\nEuropean": a capital does not continue a word
    word = _LAST_WORD.search(text, max(0, match.start() - 64), match.start()).group()
    if "-" in word:
        return "-"  # "left-to-\nright" is a compound, not a split word
    return ""


def clean_document(doc: ExtractedDocument) -> ExtractedDocument:
    """The document with every block and heading cleaned by clean_text, running headers
    and footers removed, and blocks left empty dropped."""
    blocks = [
        replace(block, text=clean_text(block.text), heading=_clean_heading(block.heading))
        for block in doc.blocks
    ]
    if doc.format in _PRINTED_FORMATS:
        blocks = _remove_running_lines(blocks)
    return replace(doc, blocks=[block for block in blocks if block.text])


def _clean_heading(heading: str | None) -> str | None:
    if heading is None:
        return None
    return " ".join(clean_text(heading).split()) or None


def _remove_running_lines(blocks: list[TextBlock]) -> list[TextBlock]:
    """Removes lines that repeat, digits aside, within the first or last EDGE_LINES lines
    (a third of a short page) of at least RUNNING_SHARE of the pages, when at least RUNNING_MIN_PAGES pages have
    text. Bare page numbers ("12", "Page 3 of 9", "iv") count as one repeated line. A page
    is never left blank."""
    lines_by_page: dict[int, list[tuple[int, int]]] = {}  # page -> (block, line) positions
    block_lines = [block.text.split("\n") for block in blocks]
    for block_index, (block, lines) in enumerate(zip(blocks, block_lines, strict=True)):
        positions = lines_by_page.setdefault(block.page, [])
        positions.extend((block_index, i) for i, line in enumerate(lines) if line.strip())
    if len(lines_by_page) < RUNNING_MIN_PAGES:
        return blocks

    edges_by_page = {}
    for page, positions in lines_by_page.items():
        # On a short page the edges must not swallow the body: a third of it at most.
        edge = max(1, min(EDGE_LINES, len(positions) // 3))
        edges_by_page[page] = set(positions[:edge]) | set(positions[-edge:])
    pages_with_key: Counter[str] = Counter()
    for edges in edges_by_page.values():
        pages_with_key.update({_running_key(block_lines[b][i]) for b, i in edges})
    needed = max(2, math.ceil(RUNNING_SHARE * len(lines_by_page)))
    running = {key for key, pages in pages_with_key.items() if key and pages >= needed}
    if not running:
        return blocks

    removed = set()
    for page, edges in edges_by_page.items():
        page_removed = {(b, i) for b, i in edges if _running_key(block_lines[b][i]) in running}
        # A page that would be left blank repeats its content, not a header around it.
        if len(page_removed) < len(lines_by_page[page]):
            removed |= page_removed
    cleaned = []
    for block_index, (block, lines) in enumerate(zip(blocks, block_lines, strict=True)):
        kept = [line for i, line in enumerate(lines) if (block_index, i) not in removed]
        text = _BLANK_LINES.sub("\n\n", "\n".join(kept)).strip()
        cleaned.append(replace(block, text=text) if len(kept) < len(lines) else block)
    return cleaned


def _running_key(line: str) -> str:
    """A line with its numbers blurred, so "Page 3 of 9" and "Page 4 of 9" match."""
    key = " ".join(line.lower().split())
    if _ROMAN_NUMERAL.match(key):
        return "#"
    return _DIGITS.sub("#", key)
