"""Reads a PDF's text layer with PyMuPDF: text blocks in reading order (columns one after
the other), ruled tables as one block each, filled-in form fields, headings from the
outline, and title, author and dates from the metadata.

Each page's content streams are sized before the page is read, so that a decompression
bomb is refused instead of unpacked; a PDF without a text layer (a scan) is refused as
`no_text`, since OCR is not enabled.
"""

from __future__ import annotations

import bisect
import re
import statistics
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pymupdf

from .common import (
    _MB,
    _RATIO_FLOOR,
    DocumentLimits,
    ExtractedDocument,
    TextBlock,
    UnreadableDocument,
    _bomb_error,
    _looks_like_bomb,
    _readable_size,
    _short,
)

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
