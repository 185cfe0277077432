"""describe_document's language on real papers in three languages, and when it says nothing."""

from __future__ import annotations

import pytest

from qpbot_assets.documents.extraction import extract_document
from qpbot_assets.documents.metadata import describe_document, detect_language


@pytest.mark.parametrize(
    ("relative_path", "language"),
    [
        ("docs/pdf/non_english/unstr__fr_olap.pdf", "fr"),
        ("docs/pdf/large/pypdf__GeoTopo-komprimiert.pdf", "de"),
        ("docs/pdf/multicolumn/unstr__multi-column-2p.pdf", "en"),
    ],
)
def test_language_of_real_papers(shared_data, relative_path, language):
    path = shared_data / relative_path
    assert describe_document(extract_document(path), path.name)["language"] == language


def test_language_from_the_start_of_the_text():
    english = "The warranty covers defects in materials and workmanship for two years. " * 15
    german = "Die Garantie deckt Material- und Verarbeitungsfehler für zwei Jahre ab. " * 30
    assert detect_language(english + german) == "en"  # the first 1,000 characters decide
    assert detect_language(german + english) == "de"


def test_no_language_for_too_little_text():
    assert detect_language("  Table 3  ") is None
    assert detect_language("12.5 % 13.0 % 7.25") is None
