"""Reads plain text and Markdown: paragraphs split at blank lines; in plain text form feeds
start pages, in Markdown headings start sections, fenced code stays whole and YAML front
matter gives the properties. `_decode_text` (UTF-8, UTF-16 with a byte order mark, else
Windows-1252 or Latin-1) is shared with format detection and with text a DOCX embeds.
"""

from __future__ import annotations

import re

from .common import ExtractedDocument, TextBlock


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
