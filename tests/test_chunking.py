from qpbot_assets.documents.chunking import chunk_blocks
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
