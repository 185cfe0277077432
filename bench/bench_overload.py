"""Overload benchmark (issue 13, item 7): does search keep its latency while every answer is
stuck on a generator that sends one token a second?

    .venv/bin/python bench/bench_overload.py [--clients 16] [--searches 200] [--json]

Ingests the sample documents into a fresh home, runs `qpbot serve`'s server (uvicorn with
qpbot's protocol) on loopback in `auto` answer mode against a chat server on loopback that
streams one token a second for ever, and measures /v1/search over HTTP one request at a
time: first idle, then while `--clients` clients keep /v1/answer busy. Reports the medians
and p99s, their ratio (the target: at most 2), how long each answer took (the deadline,
QPBOT_ANSWER_DEADLINE_S, must end each one) and how many generator connections were still
open after the clients went away (and how soon they closed). Writes bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))

from make_sample_documents import write_sample_documents  # noqa: E402

from qpbot_assets.runtime.runs import ingest_paths  # noqa: E402
from qpbot_serving.app import create_app  # noqa: E402
from qpbot_serving.server import uvicorn_config  # noqa: E402
from qpbot_serving.settings import QpbotSettings  # noqa: E402

QUERIES = [
    "How long does the battery last in Eco mode?",
    "What does error code E4 mean?",
    "How often should the filter be replaced?",
    "What is the warranty period?",
]


class TrickleChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server that sends one token a second until the client
    hangs up; counts the connections still streaming."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
        with self.server.lock:
            self.server.open_streams += 1
        try:
            while True:
                data = json.dumps({"choices": [{"delta": {"content": " slowly"}}]})
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()
                time.sleep(1.0)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.server.lock:
                self.server.open_streams -= 1

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def search_latencies(base: str, count: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for n in range(count):
            started = time.perf_counter()
            response = client.post("/v1/search", json={"query": QUERIES[n % len(QUERIES)]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qpbot-overload-"))
    documents = work / "documents"
    documents.mkdir()
    write_sample_documents(documents)
    os.environ["QPBOT_HOME"] = str(work / "home")
    os.environ.pop("DAGSTER_HOME", None)
    assert ingest_paths(QpbotSettings(), [documents], quiet=True)["success"]

    chat = ThreadingHTTPServer(("127.0.0.1", 0), TrickleChat)
    chat.open_streams, chat.lock = 0, threading.Lock()
    chat.daemon_threads = True
    threading.Thread(target=chat.serve_forever, daemon=True).start()
    settings = QpbotSettings(
        answer_mode="auto",
        generator="openai",
        generator_model="trickle",
        generator_url=f"http://127.0.0.1:{chat.server_address[1]}",
        generator_timeout_s=5.0,  # the trickle is not "down": only the deadline ends it
    )
    port = free_port()
    config = uvicorn_config(create_app(settings), settings, "127.0.0.1", port, "warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    search_latencies(base, 20)  # warm up
    idle = search_latencies(base, args.searches)

    stop = threading.Event()
    answer_seconds: list[float] = []

    def keep_answering() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            n = 0
            while not stop.is_set():
                started = time.perf_counter()
                client.post("/v1/answer", json={"query": QUERIES[n % len(QUERIES)]})
                answer_seconds.append(time.perf_counter() - started)
                n += 1

    with ThreadPoolExecutor(args.clients) as pool:
        for _ in range(args.clients):
            pool.submit(keep_answering)
        time.sleep(3.0)  # every generation slot busy
        streams_busy = chat.open_streams
        loaded = search_latencies(base, args.searches)
        stop.set()
    # The chat server sees a hang-up at its next write or the one after: up to 2 s.
    clients_done = time.monotonic()
    while chat.open_streams and time.monotonic() - clients_done < 10:
        time.sleep(0.1)
    drained_s = time.monotonic() - clients_done
    report = {
        "command": "bench/bench_overload.py " + " ".join(sys.argv[1:]),
        "cpu_flags": sorted(
            set(Path("/proc/cpuinfo").read_text().split())
            & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
        ),
        "cores": os.cpu_count(),
        "clients": args.clients,
        "searches": args.searches,
        "search_idle_ms": {
            "p50": round(1000 * statistics.median(idle), 1),
            "p99": round(1000 * p99(idle), 1),
        },
        "search_loaded_ms": {
            "p50": round(1000 * statistics.median(loaded), 1),
            "p99": round(1000 * p99(loaded), 1),
        },
        "p50_ratio": round(statistics.median(loaded) / statistics.median(idle), 2),
        "generator_streams_while_loaded": streams_busy,
        "answers": len(answer_seconds),
        "answer_seconds_max": round(max(answer_seconds), 2) if answer_seconds else None,
        "answer_deadline_s": settings.answer_deadline_s,
        "generator_streams_left_after_clients_left": chat.open_streams,
        "seconds_until_generator_streams_closed": round(drained_s, 1),
    }
    server.should_exit = True
    chat.shutdown()
    out = REPO / "bench" / "results" / "overload.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else _summary(report))


def _summary(report: dict) -> str:
    idle, loaded = report["search_idle_ms"], report["search_loaded_ms"]
    return (
        f"search idle p50 {idle['p50']} ms p99 {idle['p99']} ms; with {report['clients']} "
        f"answers stuck on a trickling generator p50 {loaded['p50']} ms p99 {loaded['p99']} "
        f"ms (ratio {report['p50_ratio']}); longest answer {report['answer_seconds_max']} s "
        f"(deadline {report['answer_deadline_s']} s); generator streams still open "
        f"{report['generator_streams_left_after_clients_left']} "
        f"{report['seconds_until_generator_streams_closed']} s after the last answer"
    )


if __name__ == "__main__":
    main()
