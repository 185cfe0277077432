"""Token-based chunking with the embedding model's own tokenizer.

Chunks never cross a section heading; inside a section whole blocks (paragraphs, tables,
page regions) are packed up to `max_tokens`, and a block longer than that is cut into
windows that overlap by `overlap_tokens`. A chunk's id comes from its document and its
text, so an unchanged chunk keeps its id (and its vector) when the document is edited.

Text is tokenized a batch at a time and chunks are made as the batches go, so a huge
document costs the memory of one batch, and chunking stops at the cap on chunks.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

from tokenizers import Tokenizer

from qpbot_assets.documents.extraction import TextBlock


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
            for piece in _split_block(batch[0], offsets, max_tokens, overlap):
                yield batch[0].heading, piece
            continue
        encoded = tokenizer.encode_batch([b.text for b in batch], add_special_tokens=False)
        for block, encoding in zip(batch, encoded, strict=True):
            for piece in _split_block(block, [encoding.offsets], max_tokens, overlap):
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
    block: TextBlock, offset_slices: Iterable[list], max_tokens: int, overlap: int
) -> Iterator[_Piece]:
    """The block whole when its tokens fit in one chunk, else windows of `max_tokens`
    overlapping by `overlap`, each cut as soon as the tokens after it have arrived
    (`offset_slices`: the block's token offsets, in one list or a slice at a time)."""
    step = max_tokens - overlap
    offsets: list = []
    first = 0  # where the next window starts
    windows = 0
    for arrived in offset_slices:
        offsets = offsets[first:] + arrived
        first = 0
        while len(offsets) - first > max_tokens:  # tokens follow: not the last window
            yield _window(block, offsets[first : first + max_tokens])
            first += step
            windows += 1
    if windows:
        yield _window(block, offsets[first:])
    else:
        yield _Piece(block.text.strip(), block.page, len(offsets))


def _window(block: TextBlock, window: list) -> _Piece:
    return _Piece(block.text[window[0][0] : window[-1][1]].strip(), block.page, len(window))


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
