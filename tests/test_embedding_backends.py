"""The ONNX backends: the same vectors as torch (float32) or close ones (int8), an export made
once per model version, and indexes that are searched only with vectors of their own kind."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qpbot_serving import index as contract
from qpbot_serving.embedding import (
    EXPORT_TOLERANCE,
    Embedder,
    _export_key,
    onnx_export,
    resolve_backend,
)
from qpbot_serving.state import PROMOTED_INDEX, StateStore

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def texts(shared_data):
    """SciFact abstracts cut to mixed lengths, from a few words to past the model's window."""
    with open(shared_data / "scifact" / "corpus.jsonl") as lines:
        abstracts = [json.loads(line)["text"] for _, line in zip(range(60), lines, strict=False)]
    rng = np.random.default_rng(11)
    cut = [text[: int(rng.integers(20, len(text) + 1))] for text in abstracts]
    return [*cut, "  spaces around  ", "Ünïcödé and 0-9", "word " * 400]


@pytest.fixture(scope="module")
def backends(embedding_exports):
    return {
        b: Embedder(MODEL, backend=b, cache_dir=embedding_exports)
        for b in contract.EMBEDDING_BACKENDS
    }


def test_onnx_float32_makes_the_torch_vectors(backends, texts):
    torch_vectors = backends["torch"].encode(texts, batch_size=16)
    onnx_vectors = backends["onnx"].encode(texts, batch_size=16)
    assert onnx_vectors.dtype == np.float32 and onnx_vectors.shape == torch_vectors.shape
    assert np.abs(onnx_vectors - torch_vectors).max() < EXPORT_TOLERANCE
    # The counting tokenizer and window are the model's, whichever backend computes.
    assert backends["onnx"].max_tokens == backends["torch"].max_tokens
    assert backends["onnx"].dimension == backends["torch"].dimension == 384
    long = "word " * 400
    assert len(backends["onnx"].tokenizer.encode(long).ids) > backends["onnx"].max_tokens


def test_int8_vectors_are_close_but_not_the_same(backends, texts):
    float32 = backends["torch"].encode(texts, batch_size=16)
    int8 = backends["onnx-int8"].encode(texts, batch_size=16)
    cosine = (int8 * float32).sum(1)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1, atol=1e-4)
    assert cosine.min() > 0.97 and cosine.mean() > 0.985
    assert np.abs(int8 - float32).max() > EXPORT_TOLERANCE  # so it keeps an index of its own
    assert not contract.same_vectors("onnx-int8", "torch")
    assert contract.same_vectors("onnx", "torch")


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_a_text_gets_one_vector_alone_or_in_any_batch(backends, texts, backend):
    """int8 too: its activations are quantized per run, so it encodes one text per run."""
    embedder = backends[backend]
    in_batches = embedder.encode(texts, batch_size=16)
    other_batches = embedder.encode(texts[::-1], batch_size=5)[::-1]
    alone = np.stack([embedder.encode_query(text) for text in texts[:8]])
    assert np.abs(in_batches - other_batches).max() < 1e-5
    assert np.abs(in_batches[:8] - alone).max() < 1e-5


def test_the_export_is_made_once_per_model_version(embedding_exports, tmp_path):
    folder = onnx_export(MODEL, embedding_exports)
    again = onnx_export(MODEL, embedding_exports)
    assert again == folder and {p.name for p in folder.iterdir()} >= {
        "model.onnx",
        "model.int8.onnx",
        "tokenizer.json",
        "export.json",
    }
    checked = json.loads((folder / "export.json").read_text())["checked"]
    assert checked["float32_max_difference"] < EXPORT_TOLERANCE
    # A fine-tune saved over the same folder (new weights) is a new version: a new key.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights v1")
    first = _export_key(str(model), str(model))
    (model / "model.safetensors").write_bytes(b"weights v2")
    assert _export_key(str(model), str(model)) != first


def test_an_onnx_backend_never_imports_torch(embedding_exports):
    onnx_export(MODEL, embedding_exports)  # the export itself needs torch, once
    script = (
        "import sys; from pathlib import Path; from qpbot_serving.embedding import Embedder; "
        f"e = Embedder({MODEL!r}, backend='onnx-int8', cache_dir=Path({str(embedding_exports)!r})); "
        "v = e.encode(['a question about the handbook']); "
        "print(v.shape[1], 'torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["384", "False", "False"]


def test_unknown_backends_are_refused_and_auto_is_int8():
    with pytest.raises(ValueError, match="unknown embedding backend 'cuda'"):
        Embedder(MODEL, backend="cuda")
    with pytest.raises(ValueError, match="unknown embedding backend"):
        resolve_backend("fast")
    assert resolve_backend("onnx") == "onnx"
    assert resolve_backend("auto") == "onnx-int8"  # measured: BENCHMARKS.md


def test_the_index_records_its_backend_and_queries_match_it(
    qpbot_home, sample_documents, monkeypatch, embedding_exports
):
    from qpbot_assets.runtime.runs import ingest_paths
    from qpbot_serving.retrieval import Retriever
    from qpbot_serving.settings import QpbotSettings

    monkeypatch.setenv("QPBOT_EMBEDDING_BACKEND", "torch")
    settings = QpbotSettings()
    assert ingest_paths(settings, [sample_documents], quiet=True)["success"]
    float32 = StateStore(settings.home).read(PROMOTED_INDEX)
    assert float32.embedding_backend == "torch" and float32.table == "chunks__all-minilm-l6-v2"

    # ONNX float32 makes the same vectors: the stored ones are reused, nothing is embedded.
    monkeypatch.setenv("QPBOT_EMBEDDING_BACKEND", "onnx")
    settings = QpbotSettings()
    again = ingest_paths(settings, [sample_documents], quiet=True)
    assert again["success"] and again["runs"] == 0
    retriever = Retriever.from_settings(settings)
    assert retriever.embedder.backend == "onnx"  # queries of the torch-made index, by ONNX
    hits = retriever.search("How long is the warranty on the Kestrel K2?", k=3)
    assert hits and retriever.info.embedding_backend == "torch"

    # int8 vectors get a table of their own, beside the float32 one, and become the index.
    monkeypatch.setenv("QPBOT_EMBEDDING_BACKEND", "onnx-int8")
    settings = QpbotSettings()
    assert ingest_paths(settings, [sample_documents], quiet=True)["success"]
    int8 = StateStore(settings.home).read(PROMOTED_INDEX)
    assert int8.table == "chunks__all-minilm-l6-v2-int8" and int8.embedding_backend == "onnx-int8"
    assert int8.chunks == float32.chunks
    db = contract.connect(StateStore.from_settings(settings))
    assert {float32.table, int8.table} <= set(db.list_tables().tables)

    # A service configured for torch still embeds queries of the int8 index with int8...
    monkeypatch.setenv("QPBOT_EMBEDDING_BACKEND", "torch")
    retriever = Retriever.from_settings(QpbotSettings())
    assert retriever.embedder.backend == "onnx-int8"
    top = retriever.search("How long is the warranty on the Kestrel K2?", k=3)
    assert {h.chunk_id for h in top} & {h.chunk_id for h in hits}
    # ...and a float32 embedder is refused for it.
    with pytest.raises(ValueError, match=r"\(onnx-int8\), not all-MiniLM-L6-v2 \(torch\)"):
        Retriever.from_settings(QpbotSettings(), embedder=Embedder(MODEL))
