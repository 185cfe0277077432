"""Generators: the real local model, and the two HTTP protocols against servers on 127.0.0.1
that speak them (streaming), are down (a closed port), hang (accept and never answer), stall
(trickle bytes that never end a line, or fall silent) or fail (HTTP 500 with a body that must
not reach clients)."""

from __future__ import annotations

import json
import select
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import sqlalchemy as sa
from conftest import StreamingChatHandler, ingest_into, loopback_server, service_client

from qpbot_serving.answer_log import answers as answers_table
from qpbot_serving.app import GENERATION_POOL
from qpbot_serving.generation import (
    AnswerGuard,
    DeadlinePassed,
    GeneratorUnavailable,
    LocalGenerator,
    OllamaGenerator,
    OpenAICompatibleGenerator,
    guarded,
)
from qpbot_serving.settings import QpbotSettings

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
    with pytest.raises(GeneratorUnavailable, match=r"cannot be reached \(ConnectError\)"):
        "".join(kind(f"http://127.0.0.1:{closed_port}", "m", timeout_s=1.5).stream(MESSAGES, 20))
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("kind", [OllamaGenerator, OpenAICompatibleGenerator])
def test_a_generator_that_hangs_times_out_within_two_seconds(hanging_port, kind):
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="sent nothing for 1.5 s"):
        "".join(kind(f"http://127.0.0.1:{hanging_port}", "m", timeout_s=1.5).stream(MESSAGES, 20))
    assert time.monotonic() - started < 2.5


@pytest.fixture(scope="module")
def local_generator(tmp_path_factory):
    generator = LocalGenerator(home=tmp_path_factory.mktemp("home"))
    generator.load()
    return generator


def test_the_packaged_local_model_answers_from_the_context(local_generator):
    generator = local_generator
    pieces = list(generator.stream(MESSAGES, max_new_tokens=30))
    assert len(pieces) > 1  # streamed, not returned at once
    assert "150" in "".join(pieces)
    # The converted copy is reused: a second generator loads without converting again.
    again = LocalGenerator(home=generator.cache_dir.parent)
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
    # Sooner than its first token: a warm model on a fast CPU can finish a short answer
    # within half a second, and then no deadline passes.
    with pytest.raises(DeadlinePassed):
        list(local_generator.stream(MESSAGES, max_new_tokens=2000, deadline=started + 0.02))
    assert time.monotonic() - started < first_token + 1.5

    before = threading.active_count()
    stream = local_generator.stream(MESSAGES, max_new_tokens=2000)
    next(stream)
    stream.close()  # the reader went away: the model stops at its next token
    deadline = time.monotonic() + 2.0
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


# --- upstreams that misbehave: trickle bytes, fall silent, answer 500 -------------------------
class MisbehavingChatHandler(BaseHTTPRequestHandler):
    """An upstream on 127.0.0.1 scripted by its server's attributes: `status`, then `head`
    (bytes, or a list of parts sent as chunks of their own), then `trickle` bytes every
    `tick` seconds for `trickle_s` seconds, then silence, never a newline, until the client
    hangs up (or 30 s pass). `server.answers_started` counts the requests, and
    `server.open_streams` the answers it is still sending; a hang-up is seen at the next
    write or, in silence, as the socket's end."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        server = self.server
        self.rfile.read(int(self.headers["Content-Length"]))
        with server.lock:
            server.open_streams += 1
            server.answers_started += 1
        try:
            self.send_response(server.status)
            self.end_headers()
            head = server.head[self.path]
            for part in [head] if isinstance(head, bytes) else head:
                self.wfile.write(part)
                self.wfile.flush()
                time.sleep(0.05)  # each part its own chunk
            if server.status != 200:
                return
            started = time.monotonic()
            while time.monotonic() - started < 30:
                if time.monotonic() - started < server.trickle_s:
                    self.wfile.write(server.trickle)
                    self.wfile.flush()
                readable, _, _ = select.select([self.connection], [], [], server.tick)
                if readable and not self.connection.recv(1):
                    return  # the client closed the connection
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with server.lock:
                server.open_streams -= 1

    def log_message(self, *args):
        pass


STALLED_HEAD = {  # an answer that starts, and whose first line never ends
    "/api/chat": b'{"message": {"content": "The',
    "/v1/chat/completions": b'data: {"choices": [{"delta": {"content": "The',
}
LEAKED = b'{"error":"internal: /srv/secret/path key=sk-LEAKED-123 at worker 7"}'
SECRETS = ("sk-LEAKED-123", "/srv/secret", "s3cret", "/v1/chat/completions", "/api/chat")


@pytest.fixture
def misbehaving_chat():
    """`misbehaving_chat(**attributes)` starts a MisbehavingChatHandler server (its URL is
    `server.url`): by default one that trickles a space a second into an unfinished line."""
    servers = []

    def start(**attributes):
        script = {"status": 200, "head": STALLED_HEAD, "trickle": b" ", "tick": 1.0}
        server = loopback_server(
            MisbehavingChatHandler,
            lock=threading.Lock(),
            open_streams=0,
            answers_started=0,
            **{**script, "trickle_s": 30.0, **attributes},
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def wait_until_closed(server, seconds: float = 2.0) -> None:
    """The upstream saw every connection to it closed within `seconds`."""
    deadline = time.monotonic() + seconds
    while server.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.open_streams == 0


KINDS = [OllamaGenerator, OpenAICompatibleGenerator]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("upstream", ["trickling", "silent", "silent after trickling"])
def test_a_stalled_upstream_is_dropped_at_the_deadline(misbehaving_chat, kind, upstream):
    """A space a second resets the read timeout every time; the deadline still holds, and
    the upstream's connection is closed with it (red-team finding: 8 connections, the
    generation pool's size, were held 30 s after the answers had finished)."""
    trickle_s = {"trickling": 30.0, "silent": 0.0, "silent after trickling": 2.5}[upstream]
    server = misbehaving_chat(tick=0.5, trickle_s=trickle_s)
    generator = kind(server.url, "m", timeout_s=10)  # the timeout is not what ends it
    started = time.monotonic()
    with pytest.raises(DeadlinePassed):
        list(generator.stream(MESSAGES, 64, deadline=started + 3.0))
    assert time.monotonic() - started < 3.0 + 1.0
    wait_until_closed(server)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("upstream", ["trickling", "silent"])
def test_cancelling_the_guard_frees_the_thread_at_once(misbehaving_chat, kind, upstream):
    """The service cancels the guard when the client goes away or the deadline passes (on the
    event loop's thread); the generation thread, blocked on the upstream, is free at once."""
    server = misbehaving_chat(trickle_s=30.0 if upstream == "trickling" else 0.0)
    generator = kind(server.url, "m", timeout_s=30)
    guard = AnswerGuard()
    pieces = guarded(generator.stream(MESSAGES, 64, deadline=time.monotonic() + 30), guard)
    reader = threading.Thread(target=list, args=(pieces,))
    reader.start()
    deadline = time.monotonic() + 5
    while not server.open_streams and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the reader waits on the upstream now
    cancelled = time.monotonic()
    guard.cancel("the client went away")
    reader.join(timeout=1.0)
    assert not reader.is_alive() and time.monotonic() - cancelled < 1.0
    wait_until_closed(server)


@pytest.mark.parametrize("kind", KINDS)
def test_an_endless_line_is_refused_at_64_kb(misbehaving_chat, kind):
    server = misbehaving_chat(trickle=b"x" * 4096, tick=0.001)
    generator = kind(server.url, "m", timeout_s=5)
    started = time.monotonic()
    with pytest.raises(GeneratorUnavailable, match="longer than 64 KB"):
        list(generator.stream(MESSAGES, 64, deadline=started + 10))
    assert time.monotonic() - started < 2
    wait_until_closed(server)


def test_lines_split_across_chunks_and_crlf_endings_are_read_whole(misbehaving_chat):
    event = b'data: {"choices": [{"delta": {"content": "The answer is 42."}}]}\r\n\r\n'
    head = {"/v1/chat/completions": [event[:9], event[9:30], event[30:] + b"data: [DONE]\r\n"]}
    server = misbehaving_chat(head=head, trickle_s=0.0)
    generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=5)
    assert list(generator.stream(MESSAGES, 64, deadline=time.monotonic() + 5)) == [
        "The answer is 42."
    ]


# --- what a failing upstream may tell a client: what happened, not where or what it said -------
def credentialed(url: str) -> str:
    return url.replace("http://", "http://admin:s3cret@")


@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_error_body_and_the_urls_password_stay_in_the_server_log(
    misbehaving_chat, kind, caplog
):
    server = misbehaving_chat(status=500, head={path: LEAKED for path in STALLED_HEAD})
    with pytest.raises(GeneratorUnavailable) as failure:
        list(kind(credentialed(server.url), "m", timeout_s=5).stream(MESSAGES, 64))
    assert str(failure.value) == "the generator answered HTTP 500"
    logged = caplog.text
    assert "sk-LEAKED-123" in logged and "admin:***@127.0.0.1" in logged  # for the operator
    assert "s3cret" not in logged


def test_an_unreachable_generator_names_no_url(closed_port, caplog):
    url = credentialed(f"http://127.0.0.1:{closed_port}")
    with pytest.raises(GeneratorUnavailable) as failure:
        list(OpenAICompatibleGenerator(url, "m", timeout_s=1.5).stream(MESSAGES, 64))
    assert str(failure.value) == "the generator cannot be reached (ConnectError)"
    assert "admin:***@" in caplog.text and "s3cret" not in caplog.text


def test_an_ollama_error_event_is_not_quoted_to_clients(misbehaving_chat, caplog):
    error_event = b'{"error": "model load failed: /srv/secret/path key=sk-LEAKED-123"}\n'
    server = misbehaving_chat(head={"/api/chat": error_event}, trickle_s=0.0)
    with pytest.raises(GeneratorUnavailable) as failure:
        list(OllamaGenerator(server.url, "m", timeout_s=5).stream(MESSAGES, 64))
    assert str(failure.value) == "Ollama reported an error"
    assert "sk-LEAKED-123" in caplog.text


@pytest.fixture(scope="module")
def indexed_home(tmp_path_factory, sample_documents):
    return ingest_into(tmp_path_factory.mktemp("generation-home"), sample_documents)


def test_the_service_tells_clients_the_generator_failed_without_its_secrets(
    indexed_home, misbehaving_chat
):
    server = misbehaving_chat(status=500, head={path: LEAKED for path in STALLED_HEAD})
    generator = OpenAICompatibleGenerator(credentialed(server.url), "m", timeout_s=5)
    question = {"query": "How long does the battery last?"}
    with service_client(QpbotSettings(home=indexed_home, answer_mode="auto"), generator) as client:
        body = client.post("/v1/answer", json=question).json()
        streamed = client.post("/v1/answer", json={**question, "stream": True}).text
        client.app.state.answer_log.flush()
        with client.app.state.answer_log.engine.connect() as connection:
            logged = [row.error for row in connection.execute(sa.select(answers_table))]
    assert body["answer_mode"] == "extractive" and "150 minutes" in body["answer"]
    assert body["error"] == "the answer generator is unavailable: the generator answered HTTP 500"
    assert "event: error" in streamed and "the generator answered HTTP 500" in streamed
    assert len(logged) == 2 and all("HTTP 500" in error for error in logged)
    for text in (json.dumps(body), streamed, *logged):
        assert not [secret for secret in SECRETS if secret in text]


def test_the_service_drops_a_stalled_upstream_when_the_client_goes_away(
    indexed_home, misbehaving_chat
):
    """The guard's cancellation from app.py reaches the generation thread that waits on the
    upstream: the upstream's connection is closed long before the deadline or the timeout."""
    server = misbehaving_chat(tick=0.5)
    generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=30)
    settings = QpbotSettings(home=indexed_home, answer_mode="auto", answer_deadline_s=30.0)
    question = {"query": "How long does the battery last?", "stream": True}
    with service_client(settings, generator) as client:
        started = time.monotonic()
        with client.stream("POST", "/v1/answer", json=question) as response:
            lines = response.iter_lines()
            assert next(lines) == "event: sources"
            deadline = time.monotonic() + 5
            while not server.open_streams and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.open_streams == 1  # the generation thread waits on the upstream
        # The client hung up.
        wait_until_closed(server, seconds=3.0)
        assert time.monotonic() - started < 10  # neither the 30 s deadline nor the timeout


def test_answers_on_a_stalled_upstream_leave_the_generation_pool_free(
    indexed_home, misbehaving_chat
):
    """The red-team run: one answer after another on an upstream that trickles a space a
    second (here four: more often than the deadline's second, so that each read succeeds).
    Each ends at its deadline and frees its thread, so the answer after the pool's size
    still reaches the generator (it used to find every thread stuck)."""
    server = misbehaving_chat(tick=0.25)
    generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=30)
    settings = QpbotSettings(home=indexed_home, answer_mode="auto", answer_deadline_s=1.0)
    answers = GENERATION_POOL._max_workers + 1
    with service_client(settings, generator) as client:
        for _ in range(answers):
            started = time.monotonic()
            body = client.post("/v1/answer", json={"query": "How long does the battery last?"})
            assert time.monotonic() - started < 1.0 + 1.5
            assert "deadline" in body.json()["error"] and body.json()["answer_mode"] == "extractive"
        assert server.answers_started == answers
        wait_until_closed(server)
