"""How text becomes vectors, the same way at ingestion and at query time."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

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

    @property
    def tokenizer(self):
        """The model's own tokenizer, so chunk sizes are counted as the model counts them."""
        return self.model.tokenizer

    @cached_property
    def max_tokens(self) -> int:
        """Tokens of text that fit the model's window, special tokens excluded."""
        return int(self.model.max_seq_length) - self.tokenizer.num_special_tokens_to_add(pair=False)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        """Encodes texts into an (n, dimension) float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
        )
        return vectors.astype(np.float32, copy=False)
