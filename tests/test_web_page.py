"""The web page end to end in headless Chromium: ask, watch the answer stream in with
citations, open a citation, judge sources, give a thumbs up, upload a document and see its
status."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import need

from qpbot_assets.ingest import ingest_paths
from qpbot_serving.settings import QpbotSettings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def service(tmp_path, sample_documents, streaming_server, monkeypatch):
    """`qpbot serve` over the sample documents, answering through a chat server on 127.0.0.1."""
    home = tmp_path / "home"
    monkeypatch.setenv("QPBOT_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert ingest_paths(QpbotSettings(), [sample_documents], quiet=True)["success"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "QPBOT_HOME": str(home),
        "QPBOT_GENERATOR": "openai",
        "QPBOT_GENERATOR_URL": f"http://127.0.0.1:{streaming_server.server_address[1]}",
        "QPBOT_GENERATOR_MODEL": "test-model",
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
    need(
        Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
        "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
    )
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


def test_ask_cite_feedback_and_upload_in_a_browser(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, home = service
    wait = WebDriverWait(browser, 30)
    browser.get(url)
    browser.find_element(By.ID, "question").send_keys("How long does the battery last?")
    browser.find_element(By.ID, "ask-button").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "answer"), "The answer is 42."))

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
