"""Reads a document file into text blocks: PDF, DOCX, plain text, Markdown and HTML.

The format comes from the file's content (its magic bytes); the extension only says what
the file claims to be, so a PDF named `.txt` is still read as a PDF. Anything that cannot
become text raises `UnreadableDocument` with a `kind` (what to quarantine it as) and a
`reason` a person can act on. Raw pymupdf and python-docx errors never escape.

Callers import from here. One module per format, each importing its own parser:

- `dispatch`: `extract_document`, which detects the format and picks the reader
- `pdf` (PyMuPDF, with tables and the check of page content for decompression bombs),
  `docx` (python-docx, with the checks of ZIP packages and legacy Office files), `html`
  (BeautifulSoup), `text` (plain text and Markdown)
- `common`: the result types, `DocumentLimits`, `UnreadableDocument` and the wording of
  reasons that several formats share

Importing this package imports every parser (about 0.7 s), so `resources.py` imports it
only when it needs the limits.
"""

from .common import (
    UNREADABLE_KINDS,
    DocumentLimits,
    ExtractedDocument,
    TextBlock,
    UnreadableDocument,
)
from .dispatch import extract_document

__all__ = [
    "UNREADABLE_KINDS",
    "DocumentLimits",
    "ExtractedDocument",
    "TextBlock",
    "UnreadableDocument",
    "extract_document",
]
