"""The web page end to end in headless Chromium: ask, see the checked answer with clickable
citation markers and its quoted evidence, open a citation, judge sources, give a thumbs up,
upload a document and see its status; with tokens configured, give the page a token when it
asks and see a read-only one refused an upload. No page may break its Content-Security-Policy."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import StreamingChatHandler, ingest_into, need

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
READ_WRITE_TOKEN = "web-test-read-write-0123456789"
READ_ONLY_TOKEN = "web-test-read-only-0123456789"
TOKEN_KEY = "qpbot.api-token"  # where app.js keeps the token given (sessionStorage)


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
def ingested_home(tmp_path_factory, sample_documents) -> Path:
    """A QPBOT_HOME with the sample documents ingested: most of the module's time, so once."""
    _browser_installed()  # before the slow part, which is wasted when the browser is missing
    return ingest_into(tmp_path_factory.mktemp("web") / "home", sample_documents)


@contextmanager
def _serving(home: Path, chat_server, **settings: str) -> Iterator[str]:
    """`qpbot serve` over `home`, answering through the chat server, with QPBOT_ settings
    (`api_tokens="..."`) besides; yields its URL once it is ready."""
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
        **{f"QPBOT_{name.upper()}": value for name, value in settings.items()},
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
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def service(ingested_home, chat_server):
    """`qpbot serve` over the sample documents, open (no token configured)."""
    with _serving(ingested_home, chat_server) as url:
        yield url, ingested_home


@pytest.fixture(scope="module")
def token_service(ingested_home, chat_server, tmp_path_factory):
    """The same documents served with two tokens configured: one may read and write, the
    other only read. On a copy of the home, so that uploads and feedback stay apart."""
    home = tmp_path_factory.mktemp("web-tokens") / "home"
    # Not the answer log (feedback.db): the document records (documents.db) are needed.
    apart = shutil.ignore_patterns("inbox", "spool", "feedback.db*")
    shutil.copytree(ingested_home, home, ignore=apart)
    tokens = [
        {"token": READ_WRITE_TOKEN, "scopes": ["read", "write"]},
        {"token": READ_ONLY_TOKEN, "scopes": ["read"]},
    ]
    with _serving(home, chat_server, api_tokens=json.dumps(tokens)) as url:
        yield url, home


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium; its console (CSP violations are reported there) and its network
    log (the headers each request carried) are read by the tests. Downloads go to
    tmp_path / "downloads"."""
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
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option(
        "perfLoggingPrefs", {"enableNetwork": True, "enablePage": False}
    )
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(tmp_path / "downloads"),
            "download.prompt_for_download": False,
        },
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.console = []  # the console's entries read so far (reading the log empties it)
    yield driver
    driver.quit()


def _console(browser) -> list[str]:
    """Every console message of the browser so far."""
    browser.console += [entry["message"] for entry in browser.get_log("browser")]
    return browser.console


def _assert_no_csp_violation(browser) -> None:
    violations = [m for m in _console(browser) if "Content Security Policy" in m]
    assert not violations, violations


def _requests_sent(browser) -> list[dict]:
    """The requests the browser sent since the last call: url, method, headers (their
    names in lower case)."""
    sent = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            headers = {name.lower(): value for name, value in request["headers"].items()}
            sent.append({**request, "headers": headers})
    return sent


def _submit_question(browser, url: str, question: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    browser.find_element(By.ID, "question").send_keys(question)
    browser.find_element(By.ID, "ask-button").click()


def _answer_shown(browser, url: str, question: str, token: str | None = None):
    """Waits for the checked answer; returns it as the API gives it (the streamed draft is
    replaced by it) and the #answer element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    answer = browser.find_element(By.ID, "answer")
    WebDriverWait(browser, 30).until(
        lambda _: (
            answer.get_attribute("aria-busy") == "false"
            and browser.find_element(By.ID, "feedback").is_displayed()
        )
    )
    assert browser.find_element(By.ID, "error").text == ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    expected = httpx.post(
        f"{url}/v1/answer", json={"query": question, "k": 8}, headers=headers, timeout=60
    )
    assert expected.status_code == 200
    return expected.json(), answer


def _ask(browser, url: str, question: str):
    """Asks on the page and waits for the checked answer (see _answer_shown)."""
    _submit_question(browser, url, question)
    return _answer_shown(browser, url, question)


# Notes each blob URL the page makes, with its blob: the tests read what a tab or a download
# was given without fetching the blob: URL (the page's connect-src does not allow that).
NOTE_BLOBS = """
if (!window.blobsMade) {
  window.blobsMade = [];
  const createObjectURL = URL.createObjectURL;
  URL.createObjectURL = (blob) => {
    const url = createObjectURL.call(URL, blob);
    window.blobsMade.push({url, blob});
    return url;
  };
}
"""
# The type and first bytes of each blob the page made: [(url, type, head)].
READ_BLOBS = """
const done = arguments[arguments.length - 1];
Promise.all(window.blobsMade.map(async ({url, blob}) => [url, blob.type, await blob.slice(0, 5).text()]))
  .then(done, (error) => done(String(error)));
"""


def _assert_link_opens_the_pdf(browser, link) -> None:
    """Clicking a PDF's link opens a new tab on a blob of the PDF, at the linked page (the
    service sends originals as downloads: the page opens them itself). The page's own tab is
    the current one again afterwards."""
    from selenium.webdriver.support.ui import WebDriverWait

    page = re.search(r"/content#page=(\d+)$", link.get_attribute("href")).group(1)
    page_window = browser.current_window_handle
    before = set(browser.window_handles)
    browser.execute_script(NOTE_BLOBS)
    link.click()
    WebDriverWait(browser, 10).until(lambda _: set(browser.window_handles) - before)
    (tab,) = set(browser.window_handles) - before
    browser.switch_to.window(tab)
    WebDriverWait(browser, 10).until(lambda _: browser.current_url.startswith("blob:"))
    blob_url = browser.current_url
    assert blob_url.endswith(f"#page={page}")
    assert browser.execute_script("return document.contentType") == "application/pdf"
    browser.close()
    browser.switch_to.window(page_window)
    blobs = browser.execute_async_script(READ_BLOBS)
    assert [blob_url.split("#")[0], "application/pdf", "%PDF-"] in blobs, blobs


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
    _assert_link_opens_the_pdf(browser, citations[0])

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
    _assert_no_csp_violation(browser)


@pytest.mark.parametrize(
    ("question", "document_kind"),
    [
        ("What is the hotel limit per night in Paris?", "markdown"),  # a table row
        ("What is the suction power of the Kestrel K2 in Max mode?", "pdf"),
    ],
)
def test_answer_shows_its_quoted_evidence_in_a_browser(
    service, browser, tmp_path, question, document_kind
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

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
    # A PDF's link opens its page; a Markdown file has no pages, so no "#page=1" either.
    page_anchor = r"#page=\d+" if document_kind == "pdf" else ""
    assert re.search(rf"/v1/documents/[^/]+/content{page_anchor}$", href), href
    assert document_kind == "pdf" or "page" not in links[0].text
    document = httpx.get(href.split("#")[0])
    assert document.status_code == 200
    if document_kind == "pdf":
        assert document.content.startswith(b"%PDF")
        _assert_link_opens_the_pdf(browser, links[0])
    else:
        # Anything but a PDF is downloaded (never shown in the page's origin), by its name.
        downloads = tmp_path / "downloads"
        windows = browser.window_handles
        browser.execute_script(NOTE_BLOBS)
        links[0].click()
        WebDriverWait(browser, 10).until(
            lambda _: [p for p in downloads.glob("*") if not p.name.endswith(".crdownload")]
        )
        (saved,) = downloads.glob("*")
        assert saved.name == "travel-and-expense-policy.md"
        assert saved.read_bytes() == document.content
        assert browser.window_handles == windows
        # Saved from a blob no browser would render (a text/html one would be a page of ours).
        blobs = browser.execute_async_script(READ_BLOBS)
        assert [type for _, type, _ in blobs] == ["application/octet-stream"]
    _assert_no_csp_violation(browser)


def test_the_page_asks_for_a_token_and_sends_it_on_every_call(token_service, browser, tmp_path):
    """With tokens configured the page asks for one at the first 401 (again when the one
    typed is refused), keeps it for the session, sends it on every call (the answer, the
    original behind a citation, uploads) and says plainly when the token may not upload."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, home = token_service
    wait = WebDriverWait(browser, 30)
    question = "How long does the battery last?"
    _submit_question(browser, url, question)
    dialog = browser.find_element(By.ID, "token-dialog")
    wait.until(lambda _: dialog.is_displayed())
    assert "needs an access token" in dialog.text
    token_input = browser.find_element(By.ID, "token")
    assert token_input.get_attribute("type") == "password"

    token_input.send_keys("not-a-token-this-service-knows")
    browser.find_element(By.ID, "token-submit").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "token-error"), "not accepted"))
    assert dialog.is_displayed()  # asked again, with the reason
    token_input.send_keys(READ_ONLY_TOKEN)
    browser.find_element(By.ID, "token-submit").click()
    response, answer = _answer_shown(browser, url, question, token=READ_ONLY_TOKEN)
    assert not dialog.is_displayed()
    assert response["answer"] and answer.get_attribute("textContent") == response["answer"]
    assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == (
        READ_ONLY_TOKEN
    )

    # The original behind a citation is fetched with the token, and opens at its page.
    citation = browser.find_element(By.CSS_SELECTOR, "#citations a.citation")
    assert httpx.get(citation.get_attribute("href").split("#")[0]).status_code == 401
    _requests_sent(browser)  # only what follows
    _assert_link_opens_the_pdf(browser, citation)
    content = [r for r in _requests_sent(browser) if r["url"].endswith("/content")]
    assert content, "the original was not fetched"
    assert {r["headers"].get("authorization") for r in content} == {f"Bearer {READ_ONLY_TOKEN}"}

    # A read-only token may not upload: the page says so, and nothing reaches the inbox.
    note = tmp_path / "canteen-hours.md"
    note.write_text("# Canteen\n\nThe canteen opens at 11:30.")
    browser.find_element(By.ID, "file").send_keys(str(note))
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    status = browser.find_element(By.ID, "upload-status")
    wait.until(lambda _: "may not" in status.text)
    assert "write" in status.text, status.text
    assert not (home / "inbox" / "canteen-hours.md").exists()

    # Another token, one that may write: the upload is queued, and a second one updates it.
    browser.find_element(By.ID, "change-token").click()
    wait.until(lambda _: dialog.is_displayed())
    token_input.send_keys(READ_WRITE_TOKEN)
    browser.find_element(By.ID, "token-submit").click()
    wait.until(lambda _: not dialog.is_displayed())
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait.until(
        ready.text_to_be_present_in_element((By.ID, "upload-status"), "canteen-hours.md: queued")
    )
    assert (home / "inbox" / "canteen-hours.md").exists()
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait.until(
        ready.text_to_be_present_in_element((By.ID, "upload-status"), "canteen-hours.md: updated")
    )
    uploads = [r for r in _requests_sent(browser) if r["url"].endswith("/v1/documents")]
    assert len(uploads) == 3
    assert [r["headers"].get("authorization") for r in uploads] == [
        f"Bearer {READ_ONLY_TOKEN}",
        f"Bearer {READ_WRITE_TOKEN}",
        f"Bearer {READ_WRITE_TOKEN}",
    ]
    _assert_no_csp_violation(browser)
