"""Document-level metadata: title, author, dates, pages, language."""

from __future__ import annotations

from pathlib import Path

from langdetect import DetectorFactory, LangDetectException, detect

from qpbot_assets.documents.extraction import ExtractedDocument

DetectorFactory.seed = 0  # langdetect is random unless seeded
LANGUAGE_SAMPLE_CHARS = 1000


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's main language, None when it cannot tell."""
    # langdetect's time grows with the sample, its answer hardly past a paragraph or two.
    sample = text[:LANGUAGE_SAMPLE_CHARS]
    if len(sample.strip()) < 20:
        return None
    try:
        return detect(sample)
    except LangDetectException:
        return None


def describe_document(doc: ExtractedDocument, source_name: str) -> dict:
    """Title (from the file's properties, else its first heading, else its name), author,
    created/modified dates, pages, language and format."""
    first_heading = next((b.heading for b in doc.blocks if b.heading), None)
    title = (doc.properties.get("title") or "").strip() or first_heading or Path(source_name).stem
    text_sample = " ".join(b.text for b in doc.blocks[:50])
    return {
        "title": title,
        "author": doc.properties.get("author"),
        "created": doc.properties.get("created"),
        "modified": doc.properties.get("modified"),
        "pages": doc.page_count,
        "language": detect_language(text_sample),
        "format": doc.format,
    }
