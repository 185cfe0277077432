"""The embedding model in a child process: the same tokenizer, window and vectors as in this
process, a clear error for a model that cannot load, and no child left behind by a killed run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qpbot_assets.indexing.embedding_process import child_embedder

REPO = Path(__file__).resolve().parents[1]

TEXTS = [
    "Charging takes four hours.",
    "Replace the filter every three months; wash it in cold water. " * 30,  # over the window
    "Ünïcödé, punctuation (brackets); and a claim: aspirin lowers the risk of stroke.",
]


def test_child_matches_the_embedder_in_this_process(embedder):
    child = child_embedder("all-MiniLM-L6-v2")

    assert child is child_embedder("all-MiniLM-L6-v2")  # one child per model, reused
    assert (child.max_tokens, child.dimension) == (embedder.max_tokens, embedder.dimension)
    for text in TEXTS:
        ours = child.tokenizer.encode(text, add_special_tokens=False)
        theirs = embedder.tokenizer.encode(text, add_special_tokens=False)
        assert ours.offsets == theirs.offsets
    assert np.abs(child.encode(TEXTS) - embedder.encode(TEXTS)).max() < 1e-6
    assert child.encode([]).shape == (0, embedder.dimension)


def test_a_model_that_cannot_load_says_why(tmp_path):
    child = child_embedder(str(tmp_path / "no-such-model"))
    with pytest.raises(Exception, match="no-such-model"):
        child.encode(["anything"])
    child.close()


def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    script = tmp_path / "unguarded.py"  # the child imports it, which starts a child again
    script.write_text(
        "from qpbot_assets.indexing.embedding_process import child_embedder\n"
        "child_embedder('all-MiniLM-L6-v2').encode(['anything'])\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "if __name__ == '__main__':" in done.stderr.splitlines()[-1]


def test_the_child_ends_with_a_killed_parent():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import multiprocessing, time\n"
            "from qpbot_assets.indexing.embedding_process import child_embedder\n"
            "child_embedder('all-MiniLM-L6-v2').dimension\n"
            "print(multiprocessing.active_children()[0].pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # as a crash or `kill -9` of an ingest would
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended; it waits to be reaped
        return stat.read().split(")")[1].split()[0] != "Z"
