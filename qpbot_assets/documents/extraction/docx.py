"""Reads a Word document (DOCX) with python-docx: the body's paragraphs and tables in order,
headings from paragraph styles, pages from Word's own page breaks, then headers, footers
and notes once each, and the core properties.

A ZIP package is judged from its directory before python-docx parses anything: one that
is not Word (Excel, PowerPoint, OpenDocument) or whose parts unpack like a decompression
bomb is refused. Legacy Office files (OLE compound files: .doc, .xls, .ppt, and Office
files with a password) are refused with what to save them as.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import docx
from bs4 import BeautifulSoup
from docx.opc.constants import RELATIONSHIP_TYPE as RT
from docx.oxml import parse_xml
from docx.oxml.ns import qn

from .common import (
    DocumentLimits,
    ExtractedDocument,
    TextBlock,
    UnreadableDocument,
    _bomb_error,
    _looks_like_bomb,
    _not_a_document_error,
    _readable_size,
    _short,
)
from .html import _html_blocks
from .text import _decode_text, _plain_text_blocks


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
