"""Reads an HTML page with BeautifulSoup: the text of block-level elements in document
order, h1-h6 as section headings, each table as one block (cells joined by " | "), and
title and author from the head. HTML a DOCX embeds (an altChunk) is read the same way.
A page with more elements than parsing can afford is refused unparsed.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from .common import ExtractedDocument, TextBlock, UnreadableDocument

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
