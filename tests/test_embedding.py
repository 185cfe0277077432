"""The embedder batches by token count; its vectors are those of plain sentence-transformers."""

import json

import numpy as np
import pytest


@pytest.fixture
def texts(shared_data):
    """SciFact abstracts cut to mixed lengths: short claims to texts over the window."""
    with open(shared_data / "scifact" / "corpus.jsonl") as lines:
        abstracts = [json.loads(line)["text"] for _, line in zip(range(90), lines, strict=False)]
    rng = np.random.default_rng(7)
    return [text[: int(rng.integers(20, len(text) + 1))] for text in abstracts]


def test_vectors_match_plain_sentence_transformers_in_input_order(embedder, texts):
    ours = embedder.encode(texts, batch_size=16)
    plain = embedder.model.encode(texts, batch_size=16, normalize_embeddings=True)

    assert ours.dtype == np.float32 and ours.shape == (len(texts), embedder.dimension)
    assert np.abs(ours - plain).max() < 1e-5  # only the batches' composition differs
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_batches_group_texts_of_similar_token_counts(embedder, texts, monkeypatch):
    batches = []
    encode = embedder.model.encode
    monkeypatch.setattr(
        embedder.model, "encode", lambda batch, **kw: batches.append(batch) or encode(batch, **kw)
    )
    embedder.encode(texts, batch_size=16)

    def tokens(text):
        return min(
            len(embedder.tokenizer.encode(text, add_special_tokens=False)), embedder.max_tokens
        )

    counts = [[tokens(t) for t in batch] for batch in batches]
    assert sorted(t for batch in batches for t in batch) == sorted(texts)
    assert all(len(batch) <= 16 for batch in batches)
    # Longest first, and no batch reaches past the next one's longest text.
    assert all(min(a) >= max(b) for a, b in zip(counts, counts[1:], strict=False))


def test_counting_tokenizer_does_not_truncate_after_encoding(embedder):
    long_text = "Suction power depends on the filter. " * 100
    embedder.encode([long_text])  # the model's own tokenizer is left truncating to the window
    assert len(embedder.tokenizer.encode(long_text, add_special_tokens=False)) > 600


def test_empty_input(embedder):
    assert embedder.encode([]).shape == (0, embedder.dimension)
