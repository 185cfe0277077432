"""How text becomes vectors, the same way at ingestion and at query time.

Three backends compute the same sentence-transformers model (a transformer, mean pooling,
normalization): `torch` (sentence-transformers itself), `onnx` (ONNX Runtime, float32: the
same vectors within EXPORT_TOLERANCE) and `onnx-int8` (ONNX Runtime with int8 weights:
faster on CPUs, vectors about 0.99 cosine to float32, so an index made with it is searched
with it only: `index.vector_family`). The ONNX export is made once per model and version, with torch, and cached
in `QpbotSettings.embedding_exports_dir`; after that an ONNX backend imports neither torch nor
sentence-transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from qpbot_serving.index import model_slug, same_vectors, vector_family, vectors_key
from qpbot_serving.settings import QpbotSettings, resolve_model_path

EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]

EXPORT_VERSION = 1  # a change to the export below makes new exports
EXPORT_TOLERANCE = 1e-4  # largest difference of an ONNX float32 vector to torch's
INT8_MIN_COSINE = 0.97  # an int8 export whose probe vectors fall below this is refused
# Measured (BENCHMARKS.md, "Encoder backends"): int8 encodes 1.73 times as fast as torch and
# loses 0.0035 / 0.0011 nDCG@10 (dense / hybrid) on SciFact; ONNX float32 is no faster.
AUTO_BACKEND: EmbeddingBackend = "onnx-int8"


def resolve_backend(setting: str) -> EmbeddingBackend:
    """The backend QPBOT_EMBEDDING_BACKEND names; `auto` is the one measured best
    (BENCHMARKS.md, "Encoder backends")."""
    if setting == "auto":
        return AUTO_BACKEND
    vector_family(setting)  # an unknown name fails here
    return setting  # type: ignore[return-value]


def index_embedder(
    model_name: str,
    index_backend: str,
    preferred: str | None = None,
    cache_dir: Path | None = None,
    model_cache: Path | None = None,
) -> Embedder:
    """An embedder that makes an index's vectors (its model, made with `index_backend`):
    with the `preferred` backend when that makes the same vectors, else the index's own."""
    if preferred is None or not same_vectors(preferred, index_backend):
        preferred = index_backend
    return Embedder(
        model_name,
        backend=preferred,  # type: ignore[arg-type]
        cache_dir=cache_dir,
        model_cache=model_cache,
    )


class Embedder:
    """A sentence-transformers model producing L2-normalized float32 vectors.

    `model_name` is a hub id, a path or a stored fine-tune's `s3://` URI (copied once into
    `model_cache`, default `QpbotSettings().cache_dir`); the default resolves to the packaged
    copy. The ONNX backends keep their export in `cache_dir` (default
    `QpbotSettings().embedding_exports_dir`). The model is loaded on first use, so building
    an Embedder is cheap.
    """

    def __init__(
        self,
        model_name: str,
        device: str = "cpu",
        backend: EmbeddingBackend = "torch",
        cache_dir: Path | None = None,
        model_cache: Path | None = None,
    ):
        vector_family(backend)  # an unknown backend fails here, not at the first encode
        self.model_name = model_name
        self.device = device
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_cache = Path(model_cache) if model_cache is not None else None

    @property
    def vectors_key(self) -> str:
        """What the vectors are keyed by in tables and the store (see `index.vectors_key`)."""
        return vectors_key(self.model_name, self.backend)

    @cached_property
    def model(self):
        """The sentence-transformers model (the torch backend's, and the ONNX export's source)."""
        from sentence_transformers import SentenceTransformer  # heavy import, only when used

        return SentenceTransformer(self.model_path, device=self.device)

    @cached_property
    def model_path(self) -> str:
        """What the model is loaded from (`resolve_model_path`: a stored model's local copy)."""
        model_cache = self.model_cache
        if model_cache is None and self.model_name.startswith("s3://"):
            model_cache = QpbotSettings().cache_dir
        return resolve_model_path(self.model_name, model_cache)

    @cached_property
    def onnx(self) -> OnnxModel:
        cache_dir = self.cache_dir or QpbotSettings().embedding_exports_dir
        folder = onnx_export(self.model_name, cache_dir, self.model_path)
        return OnnxModel(folder, quantized=self.backend == "onnx-int8")

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The model's own tokenizer, so chunk sizes are counted as the model counts them."""
        if self.backend == "torch":
            return counting_tokenizer(self.model.tokenizer.backend_tokenizer)
        return counting_tokenizer(self.onnx.tokenizer)

    @cached_property
    def max_tokens(self) -> int:
        """Tokens of text that fit the model's window, special tokens excluded."""
        if self.backend == "torch":
            special = self.model.tokenizer.num_special_tokens_to_add(pair=False)
            return int(self.model.max_seq_length) - special
        return self.onnx.max_tokens

    @property
    def dimension(self) -> int:
        if self.backend == "torch":
            return int(self.model.get_embedding_dimension())
        return self.onnx.dimension

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
            vectors[batch] = self._encode_batch([texts[i] for i in batch])
        return vectors

    def encode_query(self, text: str) -> np.ndarray:
        """One text, on one thread with ONNX Runtime (queries run several at once)."""
        if self.backend == "torch":
            return self.encode([text])[0]
        return self.onnx.encode([text], threads=1)[0]

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self.backend != "torch":
            return self.onnx.encode(texts)
        return self.model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,  # one bar over all batches, in `encode`
        )


def counting_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of a fast tokenizer that neither truncates nor pads, for counting tokens.

    The model's tokenizer truncates and pads as its last call left it (encoding truncates to
    the window), so counting with it directly would cut long texts short.
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


# --- ONNX Runtime ------------------------------------------------------------------------
class OnnxModel:
    """An exported model (see `onnx_export`) run by ONNX Runtime: text in, unit vectors out."""

    def __init__(self, folder: Path, quantized: bool):
        self.folder = folder
        self.export = json.loads((folder / "export.json").read_text())
        self.quantized = quantized
        self.file = folder / ("model.int8.onnx" if quantized else "model.onnx")
        self.dimension = int(self.export["dimension"])
        self.max_tokens = int(self.export["max_seq_length"]) - int(self.export["special_tokens"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=int(self.export["max_seq_length"]))
        self.tokenizer.enable_padding(
            pad_id=int(self.export["pad_id"]), pad_token=self.export["pad_token"]
        )
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()

    def encode(self, texts: list[str], threads: int | None = None) -> np.ndarray:
        if self.quantized and len(texts) > 1:
            # Dynamic quantization scales each activation over the whole batch, padding
            # included: in a batch, a text's int8 vector would depend on its neighbours (0.993
            # cosine between batchings of the same SciFact texts, as far as int8 is from
            # float32). One text per run makes it a function of the text alone; one run per
            # core at once, each on one thread, keeps about the speed of batches (one text
            # at a time on all cores took twice as long; BENCHMARKS.md).
            workers = threads or len(os.sched_getaffinity(0))
            with ThreadPoolExecutor(workers, thread_name_prefix="qpbot-int8") as pool:
                return np.vstack(list(pool.map(lambda text: self.encode([text], 1), texts)))
        # As sentence-transformers tokenizes: stripped texts, padded to the longest.
        encodings = self.tokenizer.encode_batch([text.strip() for text in texts])
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return self._session(threads).run(["sentence_embedding"], feeds)[0]

    def _session(self, threads: int | None):
        """A session per thread count: None, every core this process may use."""
        threads = threads or len(os.sched_getaffinity(0))
        with self._lock:
            session = self._sessions.get(threads)
            if session is None:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(
                    str(self.file), options, providers=["CPUExecutionProvider"]
                )
                self._sessions[threads] = session
            return session


def onnx_export(model_name: str, cache_dir: Path, source: str | None = None) -> Path:
    """The folder of `model_name`'s ONNX export (float32 and int8), made now if missing.
    `source` is what the model loads from (default `resolve_model_path(model_name)`; a
    stored model's local copy).

    Keyed by the model's files (a fine-tune gets its own export) and EXPORT_VERSION; written
    to a temporary folder and renamed, so concurrent processes never read half an export.
    Both files are checked against sentence-transformers on probe texts before use.
    """
    source = source or resolve_model_path(model_name)
    root = Path(cache_dir)
    folder = root / f"{model_slug(model_name)}-{_export_key(model_name, source)}"
    if (folder / "export.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".export-"))
    try:
        _export(model_name, source, work)
        try:
            os.rename(work, folder)
        except OSError:  # another process finished first: its export is the same
            if not (folder / "export.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


PROBES = (
    "warm up",
    "  Leading and trailing spaces, MiXeD case and digits 0-9  ",
    "Ünïcödé, punctuation (brackets); and a claim: aspirin lowers the risk of stroke.",
    "a long text that the model must truncate " * 60,
)


def mean_pooled(model):
    """`model` (a sentence-transformers model of the usual layout) as one torch module:
    (input_ids, attention_mask, token_type_ids) -> unit vectors. Raises ValueError for any
    other layout, which the ONNX backends and the traced query encoder cannot compute."""
    import torch

    layout = [type(module).__name__ for module in model]
    if layout != ["Transformer", "Pooling", "Normalize"]:
        raise ValueError(f"modules {layout}, not Transformer, Pooling, Normalize")
    pooling = model[1].get_config_dict()
    if pooling.get("pooling_mode") != "mean":
        raise ValueError(f"pooling {pooling.get('pooling_mode')}, not mean")
    transformer = model[0].auto_model.eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.transformer(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=False,
            )[0]
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    return MeanPooled().eval()


def _export(model_name: str, source: str, folder: Path) -> None:
    import torch
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(source, device="cpu")
    module = mean_pooled(model)
    example = model.preprocess(["an example", "a second, longer example text"])
    inputs = tuple(example[name] for name in ("input_ids", "attention_mask", "token_type_ids"))
    axes = {"batch": 0, "tokens": 1}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on Python-side shape checks
        torch.onnx.export(
            module,
            inputs,
            str(folder / "model.onnx"),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                **{
                    name: {axes["batch"]: "batch", axes["tokens"]: "tokens"}
                    for name in ("input_ids", "attention_mask", "token_type_ids")
                },
                "sentence_embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, seconds not minutes
        )
    # Dynamic quantization: int8 weights per output channel, activations quantized as they
    # come. 7-bit weights (reduce_range) keep AVX2's u8 x s8 products from saturating.
    logging.disable(logging.WARNING)  # its notice, on every export, that pre-processing may help
    try:
        quantize_dynamic(
            folder / "model.onnx",
            folder / "model.int8.onnx",
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = model.tokenizer.backend_tokenizer
    tokenizer.save(str(folder / "tokenizer.json"))
    pad_token = model.tokenizer.pad_token
    export = {
        "model": model_name,
        "source": source,
        "export_version": EXPORT_VERSION,
        "dimension": int(model.get_embedding_dimension()),
        "max_seq_length": int(model.max_seq_length),
        "special_tokens": int(model.tokenizer.num_special_tokens_to_add(pair=False)),
        "pad_token": pad_token,
        "pad_id": int(model.tokenizer.convert_tokens_to_ids(pad_token)),
    }
    (folder / "export.json").write_text(json.dumps(export, indent=2))
    expected = model.encode(list(PROBES), normalize_embeddings=True, convert_to_numpy=True)
    float32 = OnnxModel(folder, quantized=False).encode(list(PROBES))
    difference = float(np.abs(float32 - expected).max())
    int8_cosine = float(
        (OnnxModel(folder, quantized=True).encode(list(PROBES)) * expected).sum(1).min()
    )
    if not difference <= EXPORT_TOLERANCE:
        raise ValueError(
            f"the ONNX export of {model_name} differs from sentence-transformers by "
            f"{difference:.2e} (over {EXPORT_TOLERANCE}): use QPBOT_EMBEDDING_BACKEND=torch"
        )
    if not int8_cosine >= INT8_MIN_COSINE:
        raise ValueError(
            f"the int8 export of {model_name} reaches only {int8_cosine:.3f} cosine to "
            f"float32 (under {INT8_MIN_COSINE}): use QPBOT_EMBEDDING_BACKEND=onnx or torch"
        )
    export["checked"] = {"float32_max_difference": difference, "int8_min_cosine": int8_cosine}
    (folder / "export.json").write_text(json.dumps(export, indent=2))


def _export_key(model_name: str, source: str) -> str:
    """Changes with the model's files (a local folder) or its name (a hub id), and with
    EXPORT_VERSION."""
    digest = hashlib.sha256(f"{model_name}\n{EXPORT_VERSION}".encode())
    folder = Path(source)
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            with open(path, "rb") as content:
                for block in iter(lambda: content.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
