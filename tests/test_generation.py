"""Generators: the real local model, and the two HTTP protocols against servers on 127.0.0.1
that speak them (streaming), are down (a closed port) or hang (accept and never answer)."""

from __future__ import annotations

import time

import pytest
from conftest import StreamingChatHandler

from qpbot_serving.generation import (
    AnswerGuard,
    DeadlinePassed,
    GeneratorUnavailable,
    LocalGenerator,
    OllamaGenerator,
    OpenAICompatibleGenerator,
    guarded,
)

MESSAGES = [
    {"role": "system", "content": "Answer only from the context. Be brief."},
    {
        "role": "user",
        "content": "Context: The Kestrel K2 battery lasts up to 150 minutes in Eco mode.\n\n"
        "Question: How many minutes does the battery last in Eco mode?",
    },
]


@pytest.mark.parametrize(
    ("kind", "path"),
    [(OllamaGenerator, "/api/chat"), (OpenAICompatibleGenerator, "/v1/chat/completions")],
)
def test_http_generators_stream_pieces(streaming_server, kind, path):
    url = f"http://127.0.0.1:{streaming_server.server_address[1]}"
    generator = kind(url, "some-model", timeout_s=5, api_key="secret")
    assert list(generator.stream(MESSAGES, max_new_tokens=20)) == StreamingChatHandler.pieces
    [(seen_path, request)] = streaming_server.requests
    assert seen_path == path and request["model"] == "some-model" and request["stream"] is True
    assert request["messages"] == MESSAGES


@pytest.mark.parametrize("kind", [OllamaGenerator, OpenAICompatibleGenerator])
def test_a_generator_that_is_down_fails_fast(closed_port, kind):
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="cannot reach"):
        "".join(kind(f"http://127.0.0.1:{closed_port}", "m", timeout_s=1.5).stream(MESSAGES, 20))
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("kind", [OllamaGenerator, OpenAICompatibleGenerator])
def test_a_generator_that_hangs_times_out_within_two_seconds(hanging_port, kind):
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="timeout"):
        "".join(kind(f"http://127.0.0.1:{hanging_port}", "m", timeout_s=1.5).stream(MESSAGES, 20))
    assert time.monotonic() - started < 2.5


@pytest.fixture(scope="module")
def local_generator(tmp_path_factory):
    generator = LocalGenerator(cache_dir=tmp_path_factory.mktemp("models"))
    generator.load()
    return generator


def test_the_packaged_local_model_answers_from_the_context(local_generator):
    generator = local_generator
    pieces = list(generator.stream(MESSAGES, max_new_tokens=30))
    assert len(pieces) > 1  # streamed, not returned at once
    assert "150" in "".join(pieces)
    # The converted copy is reused: a second generator loads without converting again.
    again = LocalGenerator(cache_dir=generator.cache_dir)
    assert (generator.cache_dir / "smollm2-135m-instruct" / "config.json").is_file()
    assert "150" in "".join(again.stream(MESSAGES, max_new_tokens=30))


def test_the_local_generator_dtype_follows_the_cpu(monkeypatch):
    import torch

    from qpbot_serving.generation import cpu_dtype

    assert cpu_dtype("float32") is torch.float32 and cpu_dtype("bfloat16") is torch.bfloat16
    for avx512_bf16, amx, expected in [
        (True, False, torch.bfloat16),
        (False, True, torch.bfloat16),
        (False, False, torch.float32),  # emulated bfloat16 would be slower
    ]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert cpu_dtype("auto") is expected
    with pytest.raises(ValueError, match="QPBOT_GENERATOR_DTYPE"):
        cpu_dtype("float16")


# --- the guard: stop strings, loops, the deadline, a reader that goes away -------------------
def test_a_repeated_sentence_ends_the_answer_at_the_repeat():
    guard = AnswerGuard()
    loop = ["The warranty", " period is 12 months.", " The warranty period", " is 12 months."]
    draft = "".join(guarded(iter(loop * 5), guard))
    assert guard.text == "The warranty period is 12 months."
    assert guard.stop_reason == "repetition"
    assert draft.count("The warranty period is 12 months.") == 1  # the repeat never shows whole


def test_a_repeated_run_of_words_ends_the_answer_without_a_full_stop():
    guard = AnswerGuard()
    words = "the filter is replaced every three months and cleaned weekly "
    for _ in guarded(iter([word + " " for word in words.split()] * 4), guard):
        pass
    assert guard.text == words and guard.stop_reason == "repetition"


def test_a_stop_string_ends_the_answer_before_it():
    guard = AnswerGuard(["Question:"])
    text = "".join(guarded(iter(["It is 30 days [1].", "\n\nQues", "tion: And?"]), guard))
    assert text.strip() == "It is 30 days [1]." and guard.stop_reason == "stop string"


def test_stopping_closes_the_generator_underneath():
    closed = []

    def endless():
        try:
            while True:
                yield "Again and again. "
        finally:
            closed.append(True)

    list(guarded(endless(), AnswerGuard()))
    assert closed == [True]


def test_an_answer_cancelled_before_its_thread_came_never_calls_the_generator():
    """An answer whose deadline passed while it queued for a generation thread must not open
    a stream to the generator after its client has its reply (bench/bench_overload.py)."""
    started = []

    def generator():
        started.append(True)  # a request to the generator would go out here
        yield "late"

    guard = AnswerGuard()
    guard.cancel("deadline")
    assert list(guarded(generator(), guard)) == [] and started == []


def test_a_generator_that_repeats_itself_is_cut_short(scripted_chat):
    server = scripted_chat(["The warranty period is 12 months. "] * 17)
    generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=5)
    guard = AnswerGuard()
    for _ in guarded(generator.stream(MESSAGES, 160), guard):
        pass
    assert guard.text.strip() == "The warranty period is 12 months."


@pytest.mark.parametrize("kind", [OllamaGenerator, OpenAICompatibleGenerator])
def test_a_slow_generator_stops_at_the_deadline(scripted_chat, kind):
    server = scripted_chat(["One", " token", " a", " second", " forever."] * 10, delay=0.3)
    generator = kind(server.url, "m", timeout_s=1.5)  # each piece is within the timeout
    started = time.monotonic()
    pieces = []
    with pytest.raises(DeadlinePassed):
        for piece in generator.stream(MESSAGES, 160, deadline=started + 1.0):
            pieces.append(piece)
    assert time.monotonic() - started < 1.6 and 1 <= len(pieces) <= 4


def test_the_local_generator_stops_at_the_deadline_and_when_closed(local_generator):
    import threading

    started = time.monotonic()
    next(local_generator.stream(MESSAGES, max_new_tokens=1))
    first_token = time.monotonic() - started  # the machine's own pace, loaded or not
    started = time.monotonic()
    with pytest.raises(DeadlinePassed):
        list(local_generator.stream(MESSAGES, max_new_tokens=2000, deadline=started + 0.5))
    assert time.monotonic() - started < max(0.5, first_token) + 1.5

    before = threading.active_count()
    stream = local_generator.stream(MESSAGES, max_new_tokens=2000)
    next(stream)
    stream.close()  # the reader went away: the model stops at its next token
    deadline = time.monotonic() + 2.0
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
