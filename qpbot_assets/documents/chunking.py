"""Token-based chunking with the embedding model's own tokenizer.

Chunks never cross a section heading; inside a section whole blocks (paragraphs, tables,
page regions) are packed up to `max_tokens`, and a block longer than that is cut into
windows that overlap by `overlap_tokens`. A chunk's id comes from its document and its
text, so an unchanged chunk keeps its id (and its vector) when the document is edited.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
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
) -> list[Chunk]:
    """Splits a document's blocks into chunks of at most `max_tokens` tokens, counted by
    `tokenizer` (the model's, without truncation: see `counting_tokenizer`)."""
    if max_tokens <= 0 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError(
            f"need max_tokens > 0 and 0 <= overlap_tokens < max_tokens, "
            f"got {max_tokens=} {overlap_tokens=}"
        )
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        return []
    encoded = [
        e.offsets
        for e in tokenizer.encode_batch([b.text for b in blocks], add_special_tokens=False)
    ]

    pieces_by_section: list[tuple[str | None, list[_Piece]]] = []
    indexed = list(zip(blocks, encoded, strict=True))
    for section, members in groupby(indexed, key=lambda pair: pair[0].heading):
        pieces: list[_Piece] = []
        for block, offsets in members:
            pieces.extend(_split_block(block, offsets, max_tokens, overlap_tokens))
        pieces_by_section.append((section, pieces))

    chunks: list[Chunk] = []
    seen: Counter[str] = Counter()
    for section, pieces in pieces_by_section:
        for group in _pack(pieces, max_tokens):
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


def _split_block(block: TextBlock, offsets, max_tokens: int, overlap: int) -> list[_Piece]:
    if len(offsets) <= max_tokens:
        return [_Piece(block.text.strip(), block.page, len(offsets))]
    step = max_tokens - overlap
    pieces = []
    for start in range(0, len(offsets), step):
        window = offsets[start : start + max_tokens]
        text = block.text[window[0][0] : window[-1][1]].strip()
        pieces.append(_Piece(text, block.page, len(window)))
        if start + max_tokens >= len(offsets):
            break
    return pieces


def _pack(pieces: list[_Piece], max_tokens: int) -> list[list[_Piece]]:
    """Greedily groups consecutive pieces while they fit in one chunk."""
    groups: list[list[_Piece]] = []
    current: list[_Piece] = []
    size = 0
    for piece in pieces:
        if current and size + piece.tokens > max_tokens:
            groups.append(current)
            current, size = [], 0
        current.append(piece)
        size += piece.tokens
    if current:
        groups.append(current)
    return groups
