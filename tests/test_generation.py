"""Generators: the real local model, and the two HTTP protocols against servers on 127.0.0.1
that speak them (streaming), are down (a closed port) or hang (accept and never answer)."""

from __future__ import annotations

import time

import pytest
from conftest import StreamingChatHandler

from qpbot_serving.generation import (
    GeneratorUnavailable,
    LocalGenerator,
    OllamaGenerator,
    OpenAICompatibleGenerator,
    generate,
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
        generate(kind(f"http://127.0.0.1:{closed_port}", "m", timeout_s=1.5), MESSAGES, 20)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("kind", [OllamaGenerator, OpenAICompatibleGenerator])
def test_a_generator_that_hangs_times_out_within_two_seconds(hanging_port, kind):
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="timeout"):
        generate(kind(f"http://127.0.0.1:{hanging_port}", "m", timeout_s=1.5), MESSAGES, 20)
    assert time.monotonic() - started < 2.5


def test_the_packaged_local_model_answers_from_the_context(tmp_path_factory):
    generator = LocalGenerator(cache_dir=tmp_path_factory.mktemp("models"))
    pieces = list(generator.stream(MESSAGES, max_new_tokens=30))
    assert len(pieces) > 1  # streamed, not returned at once
    assert "150" in "".join(pieces)
    # The converted copy is reused: a second generator loads without converting again.
    again = LocalGenerator(cache_dir=generator.cache_dir)
    assert (generator.cache_dir / "smollm2-135m-instruct" / "config.json").is_file()
    assert "150" in generate(again, MESSAGES, max_new_tokens=30)


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
