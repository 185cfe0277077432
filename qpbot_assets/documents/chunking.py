"""Token-based chunking with the embedding model's own tokenizer.

Chunks never cross a section heading; inside a section whole blocks (paragraphs, tables,
page regions) are packed up to `max_tokens`, and a block longer than that is cut into
windows where the units of evidence selection end (`qpbot_serving.evidence`): a table only
between rows, each window that continues it starting with its header row, text between
sentences or list items, overlapping by the whole sentences that fit in `overlap_tokens`.
A chunk's id comes from its document and its text, so an unchanged chunk keeps its id (and
its vector) when the document is edited.

Text is tokenized a batch at a time and chunks are made as the batches go, so a huge
document costs the memory of one batch, and chunking stops at the cap on chunks.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

from tokenizers import Tokenizer

from qpbot_assets.documents.extraction import TextBlock

# The units evidence selection cuts a chunk into: chunks are cut where units end.
# The evidence stage's own unit boundaries, so that chunks are cut where units end.
from qpbot_serving.evidence import BULLET, TABLE_SEPARATOR, is_table_line, sentence_spans


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    document_id: str
    chunk_index: int
    text: str
    page_start: int
    page_end: int
    section: str | None
    token_count: int


@dataclass(frozen=True)
class _Piece:
    text: str
    page: int
    tokens: int


class TooManyChunks(ValueError):
    """A document that makes more than `limit` chunks."""

    def __init__(self, limit: int):
        super().__init__(f"more than {limit} chunks")
        self.limit = limit


# Characters tokenized in one call (5 MB of text tokenized in one call held 700 MB).
_BATCH_CHARACTERS = 1_000_000
# A longer block is tokenized in slices cut before whitespace, where tokenizers split words
# anyway, so its tokens are the same as in one call.
_SLICE_CHARACTERS = 100_000


def chunk_id_for(document_id: str, text: str, occurrence: int) -> str:
    """Same document and text give the same id; `occurrence` tells repeated texts apart."""
    payload = f"{document_id}\x00{occurrence}\x00{text}".encode()
    return hashlib.sha256(payload).hexdigest()[:32]


def chunk_blocks(
    blocks: Sequence[TextBlock],
    document_id: str,
    tokenizer: Tokenizer,
    max_tokens: int,
    overlap_tokens: int = 32,
    max_chunks: int | None = None,
) -> list[Chunk]:
    """Splits a document's blocks into chunks of at most `max_tokens` tokens, counted by
    `tokenizer` (the model's, without truncation: see `counting_tokenizer`).

    Raises TooManyChunks as soon as the document passes `max_chunks` chunks, having
    tokenized little more than that many chunks' text.
    """
    if max_tokens <= 0 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError(
            f"need max_tokens > 0 and 0 <= overlap_tokens < max_tokens, "
            f"got {max_tokens=} {overlap_tokens=}"
        )
    blocks = [b for b in blocks if b.text.strip()]
    pieces = _pieces(blocks, tokenizer, max_tokens, overlap_tokens)
    chunks: list[Chunk] = []
    seen: Counter[str] = Counter()
    for section, section_pieces in groupby(pieces, key=lambda pair: pair[0]):
        for group in _pack((piece for _, piece in section_pieces), max_tokens):
            if max_chunks is not None and len(chunks) == max_chunks:
                raise TooManyChunks(max_chunks)
            text = "\n\n".join(p.text for p in group)
            occurrence = seen[text]
            seen[text] += 1
            chunks.append(
                Chunk(
                    chunk_id=chunk_id_for(document_id, text, occurrence),
                    document_id=document_id,
                    chunk_index=len(chunks),
                    text=text,
                    page_start=min(p.page for p in group),
                    page_end=max(p.page for p in group),
                    section=section,
                    token_count=sum(p.tokens for p in group),
                )
            )
    return chunks


def _pieces(
    blocks: list[TextBlock], tokenizer: Tokenizer, max_tokens: int, overlap: int
) -> Iterator[tuple[str | None, _Piece]]:
    """(section, piece) for the blocks in order, tokenizing a batch of blocks at a time."""
    for batch in _batches(blocks):
        if len(batch[0].text) > _SLICE_CHARACTERS:  # a long block comes alone
            offsets = _offsets_by_slice(batch[0].text, tokenizer)
            for piece in _split_block(batch[0], offsets, max_tokens, overlap, tokenizer):
                yield batch[0].heading, piece
            continue
        encoded = tokenizer.encode_batch([b.text for b in batch], add_special_tokens=False)
        for block, encoding in zip(batch, encoded, strict=True):
            for piece in _split_block(block, [encoding.offsets], max_tokens, overlap, tokenizer):
                yield block.heading, piece


def _batches(blocks: list[TextBlock]) -> Iterator[list[TextBlock]]:
    """Consecutive blocks of up to _BATCH_CHARACTERS in all; a long block alone."""
    batch: list[TextBlock] = []
    size = 0
    for block in blocks:
        long = len(block.text) > _SLICE_CHARACTERS
        if batch and (long or size + len(block.text) > _BATCH_CHARACTERS):
            yield batch
            batch, size = [], 0
        batch.append(block)
        size += len(block.text)
        if long:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _offsets_by_slice(text: str, tokenizer: Tokenizer) -> Iterator[list[tuple[int, int]]]:
    """The token offsets of a long text, a slice at a time."""
    start = 0
    while start < len(text):
        end = start + _SLICE_CHARACTERS
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = cut if cut > start else end
        else:
            end = len(text)
        encoding = tokenizer.encode(text[start:end], add_special_tokens=False)
        yield [(first + start, last + start) for first, last in encoding.offsets]
        start = end


def _split_block(
    block: TextBlock,
    offset_slices: Iterable[list],
    max_tokens: int,
    overlap: int,
    tokenizer: Tokenizer,
) -> Iterator[_Piece]:
    """The block whole when its tokens fit in one chunk, else windows of up to `max_tokens`
    tokens, each cut as soon as the tokens after it have arrived (`offset_slices`: the
    block's token offsets, in one list or a slice at a time).

    A window ends at the last boundary of an evidence unit it holds (`_Layout.cut`): a table
    row, a list item, a sentence; windows of text overlap by the whole sentences that fit in
    `overlap` tokens, a table's windows not at all, and a window that continues a table
    starts with its header row (its tokens counted in the window; a header longer than half
    the window is not repeated). A row or list item longer than the window is cut between
    its sentences; a sentence longer than the window after its last token that fits,
    overlapping the next window by `overlap` tokens.
    """
    layout: _Layout | None = None  # made when the block needs cutting
    headers: dict[int, tuple[str, int]] = {}  # table start -> header, its tokens

    def header_at(position: int) -> tuple[str, int]:
        table = layout.table_continued_at(position) if layout else None
        if table is None:
            return "", 0
        if table.start not in headers:
            count = len(tokenizer.encode(table.header, add_special_tokens=False).ids)
            headers[table.start] = (table.header, count) if count <= max_tokens // 2 else ("", 0)
        return headers[table.start]

    offsets: list = []
    first = 0  # where the next window starts
    done = 0  # where the next window's own units start, after the whole ones it shares
    windows = 0
    for arrived in offset_slices:
        offsets = offsets[first:] + arrived
        first, done = 0, done - first
        while first < len(offsets):
            header, header_tokens = header_at(offsets[first][0])
            budget = max_tokens - header_tokens
            if len(offsets) - first <= budget:
                break  # the last window, unless more tokens arrive
            layout = layout or _Layout(block.text)
            cut = layout.cut(offsets, first, budget, overlap, done)
            if cut is None:  # no whole unit fits beside the shared ones: share none
                first = done
                continue
            end, next_first, shares_units = cut
            yield _window(block, offsets[first:end], header, header_tokens)
            first, done = next_first, end if shares_units else next_first
            windows += 1
    if windows:
        header, header_tokens = header_at(offsets[first][0])
        yield _window(block, offsets[first:], header, header_tokens)
    else:
        yield _Piece(block.text.strip(), block.page, len(offsets))


def _window(block: TextBlock, window: list, header: str, header_tokens: int) -> _Piece:
    text = block.text[window[0][0] : window[-1][1]].strip()
    if header:
        text = f"{header}\n{text}"
    return _Piece(text, block.page, header_tokens + len(window))


@dataclass(frozen=True)
class _Table:
    """Consecutive table lines of a block (as evidence reads them: cells joined by " | ")."""

    start: int
    header: str  # its first line, with a Markdown separator line under it
    body: int  # where its first row starts
    end: int  # where its last row ends
    row_starts: list[int]  # of the rows after the first


class _Layout:
    """Where a block's text may be cut: its tables (runs of two or more table lines) and the
    boundaries of the units evidence selection cuts chunks into (`qpbot_serving.evidence`),
    so that a chunk holds whole rows, list items and sentences wherever the window allows."""

    def __init__(self, text: str):
        self.text = text
        self.tables: list[_Table] = []
        self.items: list[tuple[int, int]] = []  # list items, as evidence reads a paragraph
        run: list[tuple[int, int]] = []
        item: list[int] | None = None  # [start, end] of the open list item
        position = 0
        for line in text.split("\n"):
            end = position + len(line)
            if line.strip() and is_table_line(line):
                run.append((position, end))
            else:
                self._add_table(run)
                run = []
            if not line.strip() or BULLET.match(line):  # a paragraph or an item ends
                if item:
                    self.items.append((item[0], item[1]))
                item = [position, end] if line.strip() else None
            elif item:
                item[1] = end  # a wrapped item
            position = end + 1
        self._add_table(run)
        if item:
            self.items.append((item[0], item[1]))
        self.table_starts = [table.start for table in self.tables]
        self.item_starts = [start for start, _ in self.items]

    def _add_table(self, lines: list[tuple[int, int]]) -> None:
        if len(lines) < 2:
            return
        header_lines = 1
        if len(lines) > 2 and TABLE_SEPARATOR.match(self.text[lines[1][0] : lines[1][1]]):
            header_lines = 2
        self.tables.append(
            _Table(
                start=lines[0][0],
                header=self.text[lines[0][0] : lines[header_lines - 1][1]],
                body=lines[header_lines][0],
                end=lines[-1][1],
                row_starts=[start for start, _ in lines[header_lines + 1 :]],
            )
        )

    def table_at(self, position: int) -> _Table | None:
        """The table whose lines hold `position` (its start included, its end not)."""
        i = bisect.bisect_right(self.table_starts, position) - 1
        if i >= 0 and position < self.tables[i].end:
            return self.tables[i]
        return None

    def table_continued_at(self, position: int) -> _Table | None:
        """The table of which a window starting at `position` holds rows but not the header."""
        table = self.table_at(position)
        return table if table is not None and position >= table.body else None

    def cut(
        self, offsets: list, first: int, budget: int, overlap: int, done: int
    ) -> tuple[int, int, bool] | None:
        """(end, where the next window starts, whether it starts with whole units of this
        one), token indexes, for the window of at most `budget` tokens from token `first`
        (`offsets[first + budget]` exists: tokens follow), whose units before token `done`
        the window before holds. None when no whole unit after `done` fits."""
        starts = [start for start, _ in offsets[first : first + budget + 1]]
        low, high = starts[0], starts[budget]

        def tokens_before(position: int) -> int:
            return first + bisect.bisect_left(starts, position)

        rows, texts, inside_units = self._boundaries(low, high)
        best = max((b for b in rows + texts if tokens_before(b) > done), default=None)
        if best is not None:
            end = tokens_before(best)
            if best in rows:
                return end, end, False  # no overlap in a table: its windows repeat the header
            # Whole sentences (or items) that fit in `overlap` tokens, with no table line
            # among them, start the next window too.
            shared = [
                b
                for b in texts
                if first < tokens_before(b) < end
                and end - tokens_before(b) <= overlap
                and not self._holds_table(b, best)
            ]
            return end, tokens_before(min(shared)) if shared else end, bool(shared)
        if done > first:
            return None
        best = max((b for b in inside_units if tokens_before(b) > first), default=None)
        if best is not None:  # a row or item longer than the window: cut at its sentences
            end = tokens_before(best)
            return end, end, False
        end = first + budget
        return end, max(end - overlap, first + 1), False

    def _boundaries(self, low: int, high: int) -> tuple[list[int], list[int], list[int]]:
        """Positions in (low, high] where a unit starts: rows (a table's start and end, and
        the rows after its first, which stays with the header), texts (sentences, list items,
        paragraphs outside tables), and sentences inside table rows and list items."""
        rows = []
        first_table = max(0, bisect.bisect_right(self.table_starts, low) - 1)
        for table in self.tables[first_table : bisect.bisect_right(self.table_starts, high)]:
            within = table.row_starts[
                bisect.bisect_right(table.row_starts, low) : bisect.bisect_right(
                    table.row_starts, high
                )
            ]
            rows += [b for b in (table.start, *within, table.end) if low < b <= high]
        candidates = [start for _, start, _, _ in sentence_spans(self.text, low, high + 1)[1:]]
        for match in re.finditer(r"\n", self.text[low:high]):
            line_start = low + match.end()
            # A list item, or a paragraph after a blank line.
            if BULLET.match(self.text[line_start : line_start + 16]) or (
                self.text[line_start - 2 : line_start] == "\n\n"
            ):
                candidates.append(line_start)
        texts, inside_units = [], []
        for b in sorted(set(candidates)):
            if low < b <= high:
                (inside_units if self._inside_unit(b) else texts).append(b)
        return rows, texts, inside_units

    def _inside_unit(self, position: int) -> bool:
        """Whether `position` is inside a table line or a list item (not at its start)."""
        if self.table_at(position) is not None:
            return True
        i = bisect.bisect_left(self.item_starts, position) - 1
        return i >= 0 and position <= self.items[i][1]

    def _holds_table(self, start: int, end: int) -> bool:
        """Whether a table's lines reach into text[start:end]."""
        i = bisect.bisect_left(self.table_starts, start)
        if i > 0 and self.tables[i - 1].end > start:
            return True
        return i < len(self.tables) and self.tables[i].start < end


def _pack(pieces: Iterable[_Piece], max_tokens: int) -> Iterator[list[_Piece]]:
    """Greedily groups consecutive pieces while they fit in one chunk."""
    current: list[_Piece] = []
    size = 0
    for piece in pieces:
        if current and size + piece.tokens > max_tokens:
            yield current
            current, size = [], 0
        current.append(piece)
        size += piece.tokens
    if current:
        yield current
