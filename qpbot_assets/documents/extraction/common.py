"""What every format's reader shares: the result (a document's text blocks), the limits on
what one document may cost to read, and the error that quarantines a document, with the
wording its reasons share (sizes, decompression bombs, content that is no document).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
