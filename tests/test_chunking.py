import itertools
import re

import pytest

from qpbot_assets.documents import chunking
from qpbot_assets.documents.chunking import TooManyChunks, chunk_blocks
from qpbot_assets.documents.cleaning import clean_document
from qpbot_assets.documents.extraction import TextBlock, extract_document
from qpbot_serving.evidence import split_sentences


def test_chunks_fit_the_window_and_keep_pages_and_sections(embedder):
    sentence = "The filter should be replaced every three months for best suction. "
    blocks = [
        TextBlock("Charging takes four hours.", page=1, heading="Charging"),
        TextBlock(sentence * 40, page=2, heading="Maintenance"),  # longer than one window
        TextBlock("Brushes last a year.", page=3, heading="Maintenance"),
    ]
    chunks = chunk_blocks(blocks, "doc-1", embedder.tokenizer, max_tokens=64, overlap_tokens=8)

    assert chunks[0].section == "Charging" and chunks[0].page_start == chunks[0].page_end == 1
    assert all(c.token_count <= 64 for c in chunks)
    assert all(
        len(embedder.tokenizer.encode(c.text, add_special_tokens=False).ids) <= 66 for c in chunks
    )
    maintenance = [c for c in chunks if c.section == "Maintenance"]
    assert len(maintenance) > 5
    assert maintenance[-1].page_end == 3
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_chunk_ids_depend_on_document_and_text_only(embedder):
    blocks = [TextBlock("Alpha paragraph.", 1, None), TextBlock("Beta paragraph.", 2, None)]
    first = chunk_blocks(blocks, "doc-a", embedder.tokenizer, max_tokens=5, overlap_tokens=0)
    edited = chunk_blocks(
        [TextBlock("A new opening.", 1, None), *blocks], "doc-a", embedder.tokenizer, 5, 0
    )
    other_document = chunk_blocks(blocks, "doc-b", embedder.tokenizer, 5, 0)

    assert {c.chunk_id for c in first} <= {c.chunk_id for c in edited}  # unchanged text keeps ids
    assert not {c.chunk_id for c in first} & {c.chunk_id for c in other_document}


def test_repeated_text_gets_distinct_ids(embedder):
    blocks = [TextBlock("Same text.", 1, "A"), TextBlock("Same text.", 2, "B")]
    chunks = chunk_blocks(blocks, "doc", embedder.tokenizer, max_tokens=50, overlap_tokens=0)
    assert len(chunks) == 2 and chunks[0].chunk_id != chunks[1].chunk_id


def test_empty_document_has_no_chunks(embedder):
    assert chunk_blocks([TextBlock("   ", 1)], "doc", embedder.tokenizer, max_tokens=50) == []


def test_chunking_stops_past_the_cap(embedder):
    blocks = [TextBlock(f"Paragraph {i} of the manual.", 1, f"Section {i}") for i in range(10)]
    assert len(chunk_blocks(blocks, "doc", embedder.tokenizer, 50, max_chunks=10)) == 10
    with pytest.raises(TooManyChunks):
        chunk_blocks(blocks, "doc", embedder.tokenizer, 50, max_chunks=9)


def test_a_long_block_tokenized_by_slices_chunks_as_in_one_call(embedder, monkeypatch):
    sentence = "The pump delivers 40 litres a minute at 2.5 bar (see table 3). "
    blocks = [TextBlock("Intro.", 1, "A"), TextBlock(sentence * 4000, 2, "A")]  # 256,000 chars
    sliced = chunk_blocks(blocks, "doc", embedder.tokenizer, 128, overlap_tokens=16)
    monkeypatch.setattr(chunking, "_SLICE_CHARACTERS", 10**9)
    whole = chunk_blocks(blocks, "doc", embedder.tokenizer, 128, overlap_tokens=16)
    assert sliced == whole and len(whole) > 100


@pytest.fixture(scope="module")
def sample_blocks(sample_documents) -> dict[str, list[TextBlock]]:
    """The cleaned blocks of each sample document, by file name, as ingestion chunks them."""
    return {
        path.name: clean_document(extract_document(path)).blocks
        for path in sorted(sample_documents.iterdir())
    }


def is_table_line(line: str) -> bool:
    return " | " in line or line.lstrip().startswith("|")


def table_lines(text: str) -> list[list[str]]:
    """The tables of `text`: runs of two or more consecutive table lines."""
    runs, run = [], []
    for line in text.split("\n") + [""]:
        if line.strip() and is_table_line(line):
            run.append(line)
            continue
        if len(run) >= 2:
            runs.append(run)
        run = []
    return runs


def header_and_rows(table: list[str]) -> tuple[str, list[str]]:
    """A table's header (with a Markdown separator line) and its rows."""
    if len(table) > 2 and re.fullmatch(r"[|:\- ]+", table[1]):
        return "\n".join(table[:2]), table[2:]
    return table[0], table[1:]


@pytest.mark.parametrize("max_tokens", [None, 100, 60])
def test_tables_are_cut_between_rows_and_each_part_starts_with_the_header(
    sample_blocks, embedder, max_tokens
):
    """The handbook's error-code table (PDF) is longer than the model's window; the DOCX,
    Markdown and HTML tables are longer than the smaller windows."""
    max_tokens = max_tokens or embedder.max_tokens
    continued = set()
    for name, blocks in sample_blocks.items():
        header_of = {}  # every row of the document's tables -> its header
        for block in blocks:
            for table in table_lines(block.text):
                header, rows = header_and_rows(table)
                header_of.update(dict.fromkeys(rows, header))
        chunks = chunk_blocks(blocks, name, embedder.tokenizer, max_tokens)
        seen = set()
        for chunk in chunks:
            assert chunk.token_count <= max_tokens
            for table in table_lines(chunk.text):
                header, rows = header_and_rows(table)
                # Whole rows only, under their own table's header.
                assert rows and all(header_of.get(row) == header for row in rows), chunk.text
                if rows[0] != next(r for r, h in header_of.items() if h == header):
                    continued.add(name)
                seen.update(rows)
            # No table line outside a table: not a row cut from its header.
            assert not [
                line
                for paragraph in chunk.text.split("\n\n")
                if len(table_lines(paragraph)) == 0
                for line in paragraph.split("\n")
                if is_table_line(line)
            ], chunk.text
        assert seen == set(header_of), name  # every row is in a chunk
    expected = {"kestrel-k2-user-handbook.pdf"}
    if max_tokens <= 100:
        expected |= {"warranty-and-returns-policy.docx", "travel-and-expense-policy.md"}
    assert expected <= continued


def test_the_handbook_error_table_continues_with_its_header(sample_blocks, embedder):
    blocks = sample_blocks["kestrel-k2-user-handbook.pdf"]
    chunks = chunk_blocks(blocks, "handbook", embedder.tokenizer, embedder.max_tokens)
    [e8] = [chunk for chunk in chunks if "E8 | Battery temperature" in chunk.text]
    assert e8.text.startswith("Code | Meaning | Likely cause | What to do\nE8 | ")
    assert e8.text.endswith("let it rest for one hour.")
    assert e8.token_count == len(embedder.tokenizer.encode(e8.text, add_special_tokens=False).ids)


def cut_between_sentences(block: str, part: str) -> bool:
    """Whether `part` is a piece of `block` that starts and ends where a sentence or a list
    item does (or where the block does)."""
    if part not in block:
        return False
    start = block.index(part)
    end = start + len(part)
    starts = start == 0 or block[start - 2] in ".!?" or part.startswith("- ")
    return starts and (end == len(block) or part.rstrip(")").endswith((".", "!", "?")))


def test_long_paragraphs_are_cut_between_sentences(sample_blocks, embedder):
    """A window longer than any sentence of the sample documents (45 tokens) and shorter
    than many of their paragraphs (up to 90): each chunk starts and ends where a sentence
    (or list item) does, and a window shares with the next only whole sentences that fit in
    the overlap."""
    names = ("warranty-and-returns-policy.docx", "kestrel-k2-user-handbook.pdf")
    for name in (*names, "data-privacy-notice.md"):
        prose = [b for b in sample_blocks[name] if not table_lines(b.text)]  # tables: above
        blocks = [" ".join(b.text.split()) for b in prose]
        chunks = chunk_blocks(prose, name, embedder.tokenizer, 48, overlap_tokens=24)
        assert sum(len(embedder.tokenizer.encode(b).ids) > 60 for b in blocks) >= 3
        for chunk in chunks:
            for paragraph in (" ".join(p.split()) for p in chunk.text.split("\n\n")):
                assert any(cut_between_sentences(b, paragraph) for b in blocks), paragraph
        shared = [
            set(split_sentences(a.text)) & set(split_sentences(b.text))
            for a, b in itertools.pairwise(chunks)
        ]
        assert any(shared)
        for sentence in set().union(*shared):
            assert len(embedder.tokenizer.encode(sentence, add_special_tokens=False).ids) <= 24


def test_a_row_longer_than_the_window_is_cut_at_its_sentences_under_the_header(embedder):
    step = "Remove the brush guard and take out the roller brush. "
    table = "Code | What to do\nE1 | Restart.\nE2 | " + step * 12 + "\nE3 | Call support."
    chunks = chunk_blocks([TextBlock(table, 1, "Errors")], "doc", embedder.tokenizer, 48, 8)
    assert all(c.text.startswith("Code | What to do\n") for c in chunks)
    assert all(c.token_count <= 48 for c in chunks)
    parts = [" ".join(c.text.removeprefix("Code | What to do\n").split()) for c in chunks]
    # The long row cut between its sentences, without overlap; the rows around it whole.
    assert len(parts) >= 4 and all(part.endswith(".") for part in parts)
    assert parts[0] == "E1 | Restart."
    assert " ".join(parts) == " ".join(table.split("\n", 1)[1].split())
