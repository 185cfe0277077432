import pytest

from qpbot_assets.documents import chunking
from qpbot_assets.documents.chunking import TooManyChunks, chunk_blocks
from qpbot_assets.documents.extraction import TextBlock


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
