"""The web page end to end in headless Chromium: ask, see the checked answer with clickable
citation markers and its quoted evidence, open a citation, judge sources, give a thumbs up,
upload a document and see its status."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import StreamingChatHandler, need

from qpbot_assets.ingest import ingest_paths
from qpbot_serving.settings import QpbotSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser_installed() -> None:
    need(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
    )


@pytest.fixture(scope="module")
def chat_server():
    """The fake OpenAI-compatible chat server (conftest's), for the whole module."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StreamingChatHandler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def service(tmp_path_factory, sample_documents, chat_server):
    """`qpbot serve` over the sample documents, answering through a chat server on 127.0.0.1.
    One for the module: ingesting and loading the models is most of the tests' time."""
    _browser_installed()  # before the slow part, which is wasted when the browser is missing
    home = tmp_path_factory.mktemp("web") / "home"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("QPBOT_HOME", str(home))
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        assert ingest_paths(QpbotSettings(), [sample_documents], quiet=True)["success"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **{name: value for name, value in os.environ.items() if name != "DAGSTER_HOME"},
        "QPBOT_HOME": str(home),
        "QPBOT_GENERATOR": "openai",
        "QPBOT_GENERATOR_URL": f"http://127.0.0.1:{chat_server.server_address[1]}",
        "QPBOT_GENERATOR_MODEL": "test-model",
        "QPBOT_ANSWER_MODE": "auto",  # a streamed draft, then the checked answer replacing it
    }
    process = subprocess.Popen(
        [Path(sys.executable).parent / "qpbot", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("qpbot serve did not become ready")
        time.sleep(0.5)
    try:
        yield url, home
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    _browser_installed()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _ask(browser, url: str, question: str):
    """Asks on the page and waits for the checked answer; returns it as the API gives it
    (the streamed draft is replaced by it) and the #answer element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "ask-button").click()
    answer = browser.find_element(By.ID, "answer")
    WebDriverWait(browser, 30).until(
        lambda _: (
            answer.get_attribute("aria-busy") == "false"
            and browser.find_element(By.ID, "feedback").is_displayed()
        )
    )
    assert browser.find_element(By.ID, "error").text == ""
    expected = httpx.post(f"{url}/v1/answer", json={"query": question, "k": 8}, timeout=60)
    assert expected.status_code == 200
    return expected.json(), answer


def _assert_marker_opens_its_source(browser, answer) -> int:
    """A citation marker in the answer points at a listed source and highlights it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    markers = answer.find_elements(By.CSS_SELECTOR, "a.cite-marker")
    assert markers, "the answer has no clickable citation marker"
    number = re.fullmatch(r".*#source-(\d+)", markers[0].get_attribute("href")).group(1)
    assert f"[{number}]" in answer.get_attribute("textContent")
    source = browser.find_element(By.CSS_SELECTOR, f"#citations li#source-{number}")
    assert source.find_element(By.CSS_SELECTOR, "a.citation").text
    markers[0].click()
    WebDriverWait(browser, 5).until(lambda _: "flash" in source.get_attribute("class"))
    return int(number)


def _mode_line(response: dict) -> str:
    if response["answer_mode"] == "extractive":
        return "Quoted from the sources"
    if response["answer_mode"] == "generative" and response["grounded"]:
        return "Generated and checked against the sources"
    return ""


def test_ask_cite_feedback_and_upload_in_a_browser(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, home = service
    wait = WebDriverWait(browser, 30)
    response, answer = _ask(browser, url, "How long does the battery last?")
    # The fake generator's "The answer is 42." rests on nothing: the checked answer replaces it.
    assert response["answer"] and answer.get_attribute("textContent") == response["answer"]
    assert _mode_line(response) in browser.find_element(By.ID, "answer-mode").text

    citations = browser.find_elements(By.CSS_SELECTOR, "#citations a.citation")
    assert citations and "Kestrel K2 User Handbook, page" in citations[0].text
    href = citations[0].get_attribute("href")
    assert "#page=" in href
    document = httpx.get(href.split("#")[0])
    assert document.status_code == 200 and document.content.startswith(b"%PDF")

    # Judge the first cited source and the first of the sources not given to the model.
    wait.until(ready.visibility_of_element_located((By.ID, "more-sources")))
    browser.find_element(By.CSS_SELECTOR, "#citations .judge[data-verdict=relevant]").click()
    browser.find_element(By.CSS_SELECTOR, "#more-sources .judge[data-verdict=irrelevant]").click()
    browser.find_element(By.ID, "thumbs-up").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "feedback-status"), "Thanks"))
    deadline = time.monotonic() + 10
    ratings = []
    while not ratings and time.monotonic() < deadline:
        with sqlite3.connect(home / "feedback.db") as db:
            ratings = db.execute("SELECT rating, source_judgments FROM feedback").fetchall()
        time.sleep(0.2)
    assert [rating for rating, _ in ratings] == ["up"]
    assert sorted(json.loads(ratings[0][1]).values()) == ["irrelevant", "relevant"]

    note = tmp_path / "canteen-hours.md"
    note.write_text("# Canteen\n\nThe canteen opens at 11:30.")
    browser.find_element(By.ID, "file").send_keys(str(note))
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait.until(
        ready.text_to_be_present_in_element((By.ID, "upload-status"), "canteen-hours.md: queued")
    )
    assert (home / "inbox" / "canteen-hours.md").exists()
    browser.save_screenshot(str(tmp_path / "page.png"))


@pytest.mark.parametrize(
    ("question", "document_kind"),
    [
        ("What is the hotel limit per night in Paris?", "markdown"),  # a table row
        ("What is the suction power of the Kestrel K2 in Max mode?", "pdf"),
    ],
)
def test_answer_shows_its_quoted_evidence_in_a_browser(service, browser, question, document_kind):
    from selenium.webdriver.common.by import By

    url, _ = service
    response, answer = _ask(browser, url, question)
    text = answer.get_attribute("textContent")
    assert response["answer"] and text == response["answer"]
    if document_kind == "markdown":
        assert "190 EUR" in text
    mode_line = browser.find_element(By.ID, "answer-mode").text
    assert _mode_line(response) and _mode_line(response) in mode_line
    if response["fallback"]:
        assert "instead of the generated answer" in mode_line
    number = _assert_marker_opens_its_source(browser, answer)

    quotes = browser.find_elements(By.CSS_SELECTOR, "#evidence figure")
    assert str(number) in [q.get_attribute("data-source") for q in quotes]
    marks = browser.find_elements(By.CSS_SELECTOR, "#evidence blockquote mark")
    assert marks and any(mark.text and mark.text in text for mark in marks)
    cited = [unit for unit in response["evidence"] if unit["cited"]] or response["evidence"]
    blockquotes = [q.find_element(By.TAG_NAME, "blockquote") for q in quotes]
    assert [b.get_attribute("textContent") for b in blockquotes] == [
        unit["quote"] for unit in cited
    ]
    assert quotes and all(b.is_displayed() for b in blockquotes)

    links = [q.find_element(By.CSS_SELECTOR, "a.evidence-link") for q in quotes]
    href = links[0].get_attribute("href")
    assert re.search(r"/v1/documents/[^/]+/content#page=\d+$", href), href
    document = httpx.get(href.split("#")[0])
    assert document.status_code == 200
    if document_kind == "pdf":
        assert document.content.startswith(b"%PDF")
