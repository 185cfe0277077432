"""The embedding model in a child process, loaded while a run does its other work.

Importing sentence-transformers (torch, transformers, scikit-learn, ...) and loading the
model take 5 to 10 s of one core on the development machines. In the run's own process that
time is added to every ingest; in a child started when the run begins it overlaps fetching,
extraction, cleaning and metadata, which use the other core. The run's process keeps only
the model's fast tokenizer (no torch) to count chunk tokens. A process keeps its children
for later runs.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.util
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from qpbot_serving import index as contract
from qpbot_serving.embedding import Embedder

MAX_CHILDREN = 2  # a base model and its fine-tune; each holds torch and a model in memory

_children: dict[tuple[str, str], ChildProcessEmbedder] = {}
_embedder: Embedder | None = None  # the child's model


class ChildProcessEmbedder:
    """An `Embedder` whose model lives in a child process that starts loading at once."""

    def __init__(
        self,
        model_name: str,
        backend: str = "torch",
        cache_dir: Path | None = None,
        model_cache: Path | None = None,
    ):
        self.model_name = model_name
        self.backend = backend
        self.broken = False
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded process
            initializer=_exit_with_parent,
        )
        self._loaded = self._pool.submit(_load, model_name, backend, cache_dir, model_cache)

    @property
    def vectors_key(self) -> str:
        return contract.vectors_key(self.model_name, self.backend)

    @cached_property
    def _model_info(self) -> dict:
        return self._call(self._loaded)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self._model_info["tokenizer"])  # the child's counting one

    @property
    def max_tokens(self) -> int:
        return self._model_info["max_tokens"]

    @property
    def dimension(self) -> int:
        return self._model_info["dimension"]

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool = False
    ) -> np.ndarray:
        """`Embedder.encode`, computed in the child."""
        self._model_info  # noqa: B018 (a failed load raises its own error, not the encode's)
        return self._call(self._pool.submit(_encode, list(texts), batch_size, show_progress_bar))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _call(self, future):
        try:
            return future.result()
        except BrokenProcessPool:
            self.broken = True
            raise RuntimeError(
                f"the process computing embeddings with {self.model_name} died: out of "
                "memory (run again, with a smaller embedding batch size if it repeats), or "
                "started from a script without `if __name__ == '__main__':` (the process "
                "imports the script that started it, which must not start it again)"
            ) from None


def child_embedder(
    model_name: str,
    backend: str = "torch",
    cache_dir: Path | None = None,
    model_cache: Path | None = None,
) -> ChildProcessEmbedder:
    """This process's child for `model_name` and `backend`, started on first request and then
    reused. `cache_dir` and `model_cache` are `Embedder`'s."""
    child = _children.pop((model_name, backend), None)
    if child is None or child.broken:
        child = ChildProcessEmbedder(model_name, backend, cache_dir, model_cache)
    _children[(model_name, backend)] = child  # the most recently asked for is last
    while len(_children) > MAX_CHILDREN:
        _children.pop(next(iter(_children))).close()
    return child


def _close_children() -> None:
    for child in _children.values():
        child.close()
    _children.clear()


# A Dagster step process (a multiprocessing child) ends through multiprocessing's exit
# function, which runs no atexit hooks and joins every child process: without this, it would
# wait forever for the idle model child.
multiprocessing.util.Finalize(None, _close_children, exitpriority=100)


# --- in the child ---------------------------------------------------------------------
def _exit_with_parent() -> None:
    """A killed run must not leave its encoder computing for nobody."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _load(model_name: str, backend: str, cache_dir: Path | None, model_cache: Path | None) -> dict:
    global _embedder
    _embedder = Embedder(model_name, backend=backend, cache_dir=cache_dir, model_cache=model_cache)
    return {
        "max_tokens": _embedder.max_tokens,
        "dimension": _embedder.dimension,
        "tokenizer": _embedder.tokenizer.to_str(),
    }


def _encode(texts: list[str], batch_size: int, show_progress_bar: bool) -> np.ndarray:
    return _embedder.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
