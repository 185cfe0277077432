"""PDF tables: each ruled table is one block, a line per row with cells joined by " | "."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pymupdf
import pytest

from qpbot_assets.documents.extraction import TextBlock, extract_document

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# examples/ is not a package, so load the script by path.
_spec = importlib.util.spec_from_file_location(
    "make_sample_documents", EXAMPLES / "make_sample_documents.py"
)
make_sample_documents = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_sample_documents)


@pytest.fixture(scope="module")
def handbook(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("handbook") / "kestrel-k2-user-handbook.pdf"
    make_sample_documents.write_handbook_pdf(path)
    return path


def table_blocks(blocks: list[TextBlock]) -> list[TextBlock]:
    return [b for b in blocks if all(" | " in line for line in b.text.strip().split("\n"))]


def lines_of(blocks: list[TextBlock]) -> list[str]:
    return [line for block in blocks for line in block.text.strip().split("\n")]


def test_troubleshooting_table_is_one_block_of_rows_under_its_heading(handbook):
    doc = extract_document(handbook)
    page = [block for block in doc.blocks if block.page == 6]
    [table] = table_blocks(page)
    rows = table.text.strip().split("\n")

    assert rows[0] == "Code | Meaning | Likely cause | What to do"
    assert rows[4] == (
        "E4 | Side brush stuck | Hair wrapped around the side brush | Unscrew the side brush, "
        "remove the hair and refit it, or fit the spare brush."
    )
    assert [row.split(" | ")[0] for row in rows[1:]] == [f"E{n}" for n in range(1, 9)]
    assert table.heading == "5 Troubleshooting"
    # Nothing is said twice, and the table sits between the text above and below it.
    texts = [block.text for block in page]
    assert sum(text.count("Side brush stuck") for text in texts) == 1
    above = next(i for i, text in enumerate(texts) if text.startswith("When the robot stops"))
    below = next(i for i, text in enumerate(texts) if text.startswith("5.1 Other problems"))
    assert above < texts.index(table.text) < below


def test_maintenance_and_specification_tables(handbook):
    lines = lines_of(table_blocks(extract_document(handbook).blocks))

    assert "Part | Clean | Replace" in lines
    assert "HEPA filter KF-12 | Weekly | Every 3 months" in lines
    assert "Cliff sensors and charging contacts | Monthly, with a dry cloth | —" in lines
    assert "Item | Value" in lines
    assert "Charging time | About 4 hours" in lines
    assert "Mode | Suction | Noise | Best for" in lines


def test_pages_without_tables_keep_their_text_blocks(handbook):
    doc = extract_document(handbook)
    with pymupdf.open(handbook) as pdf:
        for page in pdf:
            if page.number + 1 not in (1, 2, 3):
                continue
            raw = page.get_text(
                "blocks", flags=pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP
            )
            expected = sorted(b[4] for b in raw if b[6] == 0 and b[4].strip())
            got = sorted(block.text for block in doc.blocks if block.page == page.number + 1)
            assert got == expected


def make_table_pdf(path: Path, rows: list[list[str]], widths: list[float]) -> Path:
    """A page with a heading, the rows in a grid of drawn rules, and a paragraph below."""
    pdf = pymupdf.open()
    page = pdf.new_page()
    page.insert_text((72, 60), "Error codes")
    top, height = 80.0, 40.0
    for r, row in enumerate(rows):
        x = 72.0
        for text, width in zip(row, widths, strict=True):
            cell = pymupdf.Rect(x, top + r * height, x + width, top + (r + 1) * height)
            page.draw_rect(cell, color=(0, 0, 0), width=0.5)
            page.insert_textbox(cell + (3, 3, -3, -3), text, fontsize=9)
            x += width
    page.insert_text((72, top + len(rows) * height + 30), "Call support if a code stays.")
    pdf.save(path)
    pdf.close()
    return path


ROWS = [
    ["Code", "Meaning", "What to do"],
    ["E1", "Left wheel stuck", "Lift the robot and turn the wheel by hand to free it."],
    ["E2", "Right wheel stuck", "Remove hair from the axle."],
]


def test_ruled_table_with_wrapped_cells_reads_row_by_row(tmp_path):
    path = make_table_pdf(tmp_path / "codes.pdf", ROWS, [50, 120, 150])

    texts = [block.text for block in extract_document(path).blocks]

    assert texts == [
        "Error codes\n",
        "Code | Meaning | What to do\n"
        "E1 | Left wheel stuck | Lift the robot and turn the wheel by hand to free it.\n"
        "E2 | Right wheel stuck | Remove hair from the axle.\n",
        "Call support if a code stays.\n",
    ]


def test_a_failing_table_finder_keeps_the_page_text(tmp_path, monkeypatch):
    path = make_table_pdf(tmp_path / "codes.pdf", ROWS, [50, 120, 150])

    def broken(*args, **kwargs):
        raise RuntimeError("table finder broke")

    monkeypatch.setattr(pymupdf.Page, "find_tables", broken)
    text = "\n".join(block.text for block in extract_document(path).blocks)

    assert " | " not in text
    assert "Left wheel stuck" in text and "Remove hair from the axle." in text


def test_framed_two_column_text_is_not_a_table(tmp_path):
    pdf = pymupdf.open()
    page = pdf.new_page()
    left = " ".join(f"left{i}" for i in range(60))
    right = " ".join(f"right{i}" for i in range(60))
    page.draw_rect(pymupdf.Rect(45, 95, 555, 405), color=(0, 0, 0))
    page.draw_line((300, 95), (300, 405), color=(0, 0, 0))
    page.insert_textbox(pymupdf.Rect(50, 100, 280, 400), left)
    page.insert_textbox(pymupdf.Rect(320, 100, 550, 400), right)
    pdf.save(tmp_path / "framed.pdf")

    text = "\n".join(block.text for block in extract_document(tmp_path / "framed.pdf").blocks)

    assert " | " not in text
    assert text.index("left59") < text.index("right0")
