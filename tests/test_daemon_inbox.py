"""The real flow: the Dagster daemon's inbox sensor ingests a dropped file and promotes it,
then removes its chunks when the file is deleted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

from qpbot_serving.state import PROMOTED_INDEX, StateStore

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_daemon_ingests_and_removes_inbox_files(tmp_path, sample_documents):
    home = tmp_path / "home"
    env = {**os.environ, "QPBOT_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    # `qpbot dev` configures the instance the way the user gets it; the UI is not needed here.
    daemon = subprocess.Popen(
        [Path(sys.executable).parent / "qpbot", "dev", "--port", "0", "--daemon-only"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        inbox = home / "inbox"
        wait_for(inbox.is_dir, 60, "the inbox folder")
        shutil.copy(sample_documents / "release-notes.html", inbox)
        shutil.copy(sample_documents / "travel-and-expense-policy.md", inbox)

        def promoted_documents():
            promoted = StateStore(home).read(PROMOTED_INDEX)
            return promoted and promoted.documents == 2 and promoted

        first = wait_for(promoted_documents, 600, "two promoted documents")
        assert first.chunks > 0

        (inbox / "release-notes.html").unlink()

        def one_document_left():
            promoted = StateStore(home).read(PROMOTED_INDEX)
            return promoted.documents == 1 and promoted

        second = wait_for(one_document_left, 600, "the deleted file's chunks to go")
        assert second.chunks < first.chunks
        status = subprocess.run(
            [Path(sys.executable).parent / "qpbot", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(status.stdout)["documents"] == 1
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(timeout=60)
