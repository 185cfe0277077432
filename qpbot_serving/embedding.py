"""How text becomes vectors, the same way at ingestion and at query time."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from qpbot_serving.settings import resolve_model_path


class Embedder:
    """A sentence-transformers model producing L2-normalized float32 vectors.

    `model_name` is a hub id or a path; the default resolves to the packaged copy.
    The model is loaded on first use, so building an Embedder is cheap.
    """

    def __init__(self, model_name: str, device: str = "cpu"):
        self.model_name = model_name
        self.device = device

    @cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer  # heavy import, only when used

        return SentenceTransformer(resolve_model_path(self.model_name), device=self.device)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, so chunk sizes are counted as the model counts them."""
        return counting_tokenizer(self.model.tokenizer.backend_tokenizer)

    @cached_property
    def max_tokens(self) -> int:
        """Tokens of text that fit the model's window, special tokens excluded."""
        special = self.model.tokenizer.num_special_tokens_to_add(pair=False)
        return int(self.model.max_seq_length) - special

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        """Encodes texts into an (n, dimension) float32 array of unit vectors.

        Batches hold texts of similar token counts: sentence-transformers sorts by characters,
        which on SciFact chunks pads 20 % more tokens than sorting by tokens, and every padded
        token is computed (bench/bench_ingest.py: the same encode about 1.2 times as fast).
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = list(texts)
        window = self.max_tokens  # longer texts are truncated to the same length
        counted = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        tokens = [min(len(e), window) for e in counted]
        order = np.argsort(tokens, kind="stable")[::-1]
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for batch in tqdm(batches, desc="Batches", disable=not show_progress_bar):
            vectors[batch] = self.model.encode(
                [texts[i] for i in batch],
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,  # one bar over all batches, above
            )
        return vectors


def counting_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of a fast tokenizer that neither truncates nor pads, for counting tokens.

    The model's tokenizer truncates and pads as its last call left it (encoding truncates to
    the window), so counting with it directly would cut long texts short.
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy
