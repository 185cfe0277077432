"""The answer service over a real index of the sample documents, the real embedding model,
SQLite for the answer log, and real HTTP generators on 127.0.0.1."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import sqlalchemy as sa
from conftest import ingest_into, service_client
from fastapi.testclient import TestClient

from qpbot_assets.runtime.runs import ingest_paths
from qpbot_serving.answer_log import answers as answers_table
from qpbot_serving.answer_log import feedback as feedback_table
from qpbot_serving.generation import OpenAICompatibleGenerator
from qpbot_serving.prompting import NO_ANSWER
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import PROMOTED_INDEX, StateStore


@pytest.fixture(scope="module")
def indexed_home(tmp_path_factory, sample_documents):
    """A QPBOT_HOME with the sample documents ingested (once for the module)."""
    return ingest_into(tmp_path_factory.mktemp("service-home"), sample_documents)


def client_for(home, generator, **settings) -> TestClient:
    """The service with a generator to exercise: answers generated, checked, or quoted."""
    settings = {"answer_mode": "auto", **settings}
    return service_client(QpbotSettings(home=home, **settings), generator)


@pytest.fixture
def chat_url(streaming_server) -> str:
    return f"http://127.0.0.1:{streaming_server.server_address[1]}"


def test_health_ready_and_search(indexed_home, chat_url):
    with client_for(indexed_home, OpenAICompatibleGenerator(chat_url, "m", 5)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index_version"].startswith("chunks__")
        for mode in ("hybrid", "dense", "keyword"):
            body = client.post(
                "/v1/search", json={"query": "battery runtime in Eco mode", "k": 3, "mode": mode}
            ).json()
            assert len(body["hits"]) == 3, mode
            assert body["hits"][0]["title"] == "Kestrel K2 User Handbook", mode
            assert body["hits"][0]["page_start"] >= 1
        filtered = client.post(
            "/v1/search", json={"query": "battery", "filters": {"format": "markdown"}}
        ).json()["hits"]
        assert filtered and {h["document_id"].split(".")[-1][:2] for h in filtered} == {"md"}
        assert client.post("/v1/search", json={"query": "", "k": 3}).status_code == 422
        for endpoint in ("/v1/search", "/v1/answer"):  # whitespace is no query either
            assert client.post(endpoint, json={"query": " \n\t "}).status_code == 422
        assert client.post("/v1/search", json={"query": "x", "mode": "magic"}).status_code == 422
        metrics = client.get("/metrics").text
        assert 'qpbot_request_seconds_count{endpoint="/v1/search"' in metrics
        assert "qpbot_index_promoted_timestamp_seconds" in metrics


def test_answer_with_citations_logged_and_feedback(indexed_home, chat_url):
    with client_for(indexed_home, OpenAICompatibleGenerator(chat_url, "m", 5)) as client:
        answer = client.post(
            "/v1/answer", json={"query": "How long does the battery last?", "k": 8}
        ).json()
        # "The answer is 42." rests on no evidence: the answer quotes the evidence instead.
        assert answer["answer_mode"] == "extractive" and answer["grounded"]
        assert answer["fallback"] == "no generated sentence rests on the evidence"
        assert "150 minutes" in answer["answer"]
        citations, more = answer["citations"], answer["more_sources"]
        assert [c["number"] for c in citations] == list(range(1, len(citations) + 1))
        assert more and all(m["number"] is None for m in more)
        assert len(citations) + len(more) >= 8
        cited = [e for e in answer["evidence"] if e["cited"]]
        assert cited and {e["number"] for e in answer["evidence"]} <= {
            c["number"] for c in citations
        }
        assert f"[{cited[0]['number']}]" in answer["answer"]
        assert {"retrieval", "evidence", "generation", "total"} <= set(answer["timings_ms"])
        assert answer["index_version"].startswith("chunks__") and answer["prompt_version"]
        client.app.state.answer_log.flush()
        with client.app.state.answer_log.engine.connect() as connection:
            row = connection.execute(sa.select(answers_table)).mappings().one()
        assert row["answer_mode"] == "extractive" and row["grounded"] is True
        # The log keeps what the response shows, plus what rebuilds the prompt (LoRA).
        logged = row["evidence"]
        assert [{k: r[k] for k in e} for r, e in zip(logged, answer["evidence"], strict=True)] == (
            answer["evidence"]
        )
        assert {"text", "position", "header"} <= set(logged[0])
        assert (
            'qpbot_answer_fallbacks_total{reason="ungrounded"} 1.0' in client.get("/metrics").text
        )

        judgments = {citations[0]["chunk_id"]: "relevant", more[0]["chunk_id"]: "irrelevant"}
        ok = client.post(
            "/v1/feedback",
            json={"answer_id": answer["answer_id"], "rating": "up", "source_judgments": judgments},
        )
        assert ok.status_code == 202
        client.app.state.answer_log.flush()
        with client.app.state.answer_log.engine.connect() as connection:
            logged = connection.execute(sa.select(feedback_table.c.source_judgments)).scalar_one()
        assert logged == judgments
        unknown = "00000000-0000-4000-8000-000000000000"
        assert (
            client.post("/v1/feedback", json={"answer_id": unknown, "rating": "up"}).status_code
            == 404
        )
        # Ids are the service's own: anything else is refused before it reaches the log.
        for malformed in ("unknown", "x" * 64, unknown + "0", unknown.replace("0", "A")):
            refused = client.post("/v1/feedback", json={"answer_id": malformed, "rating": "up"})
            assert refused.status_code == 422 and "answer_id" in refused.json()["error"]
        assert (
            client.post(
                "/v1/feedback", json={"answer_id": answer["answer_id"], "rating": "meh"}
            ).status_code
            == 422
        )
        assert 'qpbot_feedback_total{rating="up"} 1.0' in client.get("/metrics").text


def test_streamed_answer_as_server_sent_events(indexed_home, chat_url):
    with client_for(indexed_home, OpenAICompatibleGenerator(chat_url, "m", 5)) as client:
        with client.stream(
            "POST",
            "/v1/answer",
            json={"query": "What does error code E4 mean?", "stream": True},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [block for block in response.read().decode().split("\n\n") if block]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert names[0] == "sources" and names[-1] == "done" and names.count("token") == 3
    sources = json.loads(events[0].split("data: ", 1)[1])
    assert sources["citations"] and sources["evidence"]
    done = json.loads(events[-1].split("data: ", 1)[1])
    # The draft was streamed; the checked answer replaces it.
    assert done["answer_mode"] == "extractive" and "Side brush stuck" in done["answer"]
    assert done["fallback"] == "no generated sentence rests on the evidence"
    assert done["error"] is None
    assert "first_token" in done["timings_ms"]


def test_a_grounded_generated_answer_keeps_a_corrected_citation(indexed_home, scripted_chat):
    server = scripted_chat(["The battery lasts up to ", "150 minutes in Eco mode [9]."])
    generator = OpenAICompatibleGenerator(server.url, "m", 5)
    with client_for(indexed_home, generator) as client:
        body = client.post(
            "/v1/answer", json={"query": "How long does the battery last in Eco mode?"}
        ).json()
    assert body["answer_mode"] == "generative" and body["grounded"] and body["fallback"] is None
    [number] = re.findall(r"\[(\d+)\]", body["answer"])
    assert body["answer"] == f"The battery lasts up to 150 minutes in Eco mode [{number}]."
    cited = [e for e in body["evidence"] if e["cited"]]
    assert cited and all(e["number"] == int(number) for e in cited)
    assert "150" in [cited[0]["quote"][a:b] for a, b in cited[0]["highlights"]]
    # The prompt the generator saw holds evidence units, not whole chunks.
    [(_, request)] = server.requests
    assert (
        "Question: How long does the battery last in Eco mode?" in request["messages"][1]["content"]
    )


@pytest.mark.parametrize("port_fixture", ["closed_port", "hanging_port"])
def test_a_down_or_hanging_generator_falls_back_to_the_quote_in_time(
    indexed_home, port_fixture, request
):
    port = request.getfixturevalue(port_fixture)
    generator = OpenAICompatibleGenerator(f"http://127.0.0.1:{port}", "m", timeout_s=1.5)
    with client_for(indexed_home, generator) as client:
        started = time.monotonic()
        body = client.post("/v1/answer", json={"query": "How long does the battery last?"}).json()
        # The generator's 1.5 s timeout, plus retrieval and evidence on a busy machine.
        assert time.monotonic() - started < 3.5
    assert "unavailable" in body["error"] and body["answer_mode"] == "extractive"
    assert "150 minutes" in body["answer"] and body["grounded"] and body["citations"]


def test_a_slow_generator_is_cut_at_the_answers_deadline(indexed_home, scripted_chat):
    server = scripted_chat(["The battery", " lasts", " and", " lasts", " and lasts."] * 20, 0.4)
    generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=1.5)
    with client_for(indexed_home, generator, answer_deadline_s=2.0) as client:
        started = time.monotonic()
        body = client.post("/v1/answer", json={"query": "How long does the battery last?"}).json()
        assert time.monotonic() - started < 3.5
    assert "deadline" in body["error"] and body["answer_mode"] == "extractive"
    assert "150 minutes" in body["answer"]


def test_the_generator_stops_when_the_client_goes_away(indexed_home, scripted_chat):
    server = scripted_chat(["word "] * 200, delay=0.05)
    generator = OpenAICompatibleGenerator(server.url, "m", timeout_s=5)
    with client_for(indexed_home, generator, answer_max_new_tokens=500) as client:
        with client.stream(
            "POST", "/v1/answer", json={"query": "How long does the battery last?", "stream": True}
        ) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break  # the client reads one token and hangs up
        deadline = time.monotonic() + 5
        while not server.client_gone and time.monotonic() < deadline:
            time.sleep(0.1)
    assert server.client_gone  # the service stopped reading the generator


def test_extractive_mode_and_unanswerable_questions_call_no_model(indexed_home, closed_port):
    generator = OpenAICompatibleGenerator(f"http://127.0.0.1:{closed_port}", "m", 1.5)
    with client_for(indexed_home, generator, answer_mode="extractive") as client:
        quoted = client.post(
            "/v1/answer", json={"query": "What is the hotel limit per night in Paris?"}
        ).json()
        declined = client.post(
            "/v1/answer", json={"query": "Who won the World Cup in 2014?"}
        ).json()
        filtered = client.post(
            "/v1/answer", json={"query": "battery", "filters": {"document_id": "no-such-document"}}
        ).json()
    assert quoted["answer_mode"] == "extractive" and quoted["error"] is None
    assert "190 EUR" in quoted["answer"] and quoted["timings_ms"]["total"] < 2000
    for body in (declined, filtered):
        assert body["answer_mode"] == "declined" and body["answer"] == NO_ANSWER
        assert not body["grounded"] and body["error"] is None
    assert filtered["citations"] == []


def test_upload_status_limits_and_tokens(indexed_home, chat_url, tmp_path):
    home = tmp_path / "upload-home"
    token = "s3cret-0123456789"
    with client_for(
        home, OpenAICompatibleGenerator(chat_url, "m", 5), api_token=token, max_upload_mb=1
    ) as client:
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/readyz").status_code == 503  # nothing promoted in this home yet
        assert client.post("/v1/search", json={"query": "x"}).status_code == 401
        assert client.post("/v1/search", json={"query": "x"}, headers=auth).status_code == 503
        files = {"file": ("notes.md", b"# Notes\n\nThe office closes at 18:00.", "text/markdown")}
        assert client.post("/v1/documents", files=files).status_code == 401
        created = client.post("/v1/documents", files=files, headers=auth)
        assert created.status_code == 201 and created.json()["replaced"] is False
        document_id = created.json()["document_id"]
        assert (home / "inbox" / "notes.md").read_bytes().startswith(b"# Notes")
        status = client.get(f"/v1/documents/{document_id}", headers=auth).json()
        assert status == {"document_id": document_id, "filename": "notes.md", "status": "queued"}
        assert client.get("/v1/documents/unknown-id", headers=auth).status_code == 404
        too_big = {"file": ("big.txt", b"x" * (1024 * 1024 + 1), "text/plain")}
        assert client.post("/v1/documents", files=too_big, headers=auth).status_code == 413
        exe = {"file": ("tool.exe", b"MZ", "application/octet-stream")}
        rejected = client.post("/v1/documents", files=exe, headers=auth)
        assert rejected.status_code == 415 and "not accepted" in rejected.json()["error"]


def test_the_service_switches_to_a_newly_promoted_index(
    indexed_home, chat_url, sample_documents, tmp_path, monkeypatch
):
    home = tmp_path / "switch-home"
    shutil.copytree(indexed_home, home)
    # The copied pointer names the same table and version under the new home.
    monkeypatch.setenv("QPBOT_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with client_for(home, OpenAICompatibleGenerator(chat_url, "m", 5)) as client:
        before = client.get("/readyz").json()["index_version"]
        extra = tmp_path / "extra"
        extra.mkdir()
        (extra / "canteen.md").write_text("# Canteen\n\nThe canteen serves pancakes on Fridays.")
        assert ingest_paths(QpbotSettings(), [extra], quiet=True)["success"]
        after = StateStore(home).read(PROMOTED_INDEX).label
        assert after != before
        deadline = time.monotonic() + 15
        while (
            client.get("/readyz").json()["index_version"] != after and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        hits = client.post("/v1/search", json={"query": "pancakes canteen", "k": 1}).json()["hits"]
        assert "pancakes" in hits[0]["text"]
