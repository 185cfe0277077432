"""Serving benchmark: search latency per mode at ~5k and 100k chunks, in-process and over
HTTP; /v1/search throughput with 16 concurrent clients; /v1/answer time to first token.

    .venv/bin/python bench/bench_serving.py --home /tmp/scifact_home [--queries 200]
        [--backend torch|onnx|onnx-int8] [--big-only] [--object-storage]

`--home` is a QPBOT_HOME holding the SciFact corpus (5,183 abstracts), as built by
`qpbot eval retrieval --home DIR ...` (with QPBOT_EMBEDDING_BACKEND=onnx-int8 for the int8
backend, whose vectors are its own). `--backend` embeds the queries with that backend, in
this process and in the service. The 100k index is made from it by repeating each
row 20 times with its vector slightly perturbed (and renormalized): real texts and a
realistic vector distribution, without encoding 100k chunks on a CPU. It is then compacted
and given its vector index as `search_index` would (`ensure_vector_index`), and the indexed
search is compared with the flat one on the same table (`vs_flat`). The load average
before and after is in the report: the figures mean little on a busy machine.

`--object-storage` also puts the 100k index and its pointer on an S3 server (moto's, on
loopback) and measures a service started with an empty QPBOT_HOME and QPBOT_STORAGE_URL
(`big_on_s3`: how long it takes to become ready, i.e. to copy the promoted table, and its
latency over HTTP from that copy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qpbot_assets.indexing.promotion import promote_snapshot  # noqa: E402
from qpbot_serving import index as contract  # noqa: E402
from qpbot_serving.object_store import split_s3_url  # noqa: E402
from qpbot_serving.retrieval import Retriever  # noqa: E402
from qpbot_serving.state import PROMOTED_INDEX, StateStore  # noqa: E402

MODES = ("dense", "keyword", "hybrid")
SHARED = REPO.parent / "shared" / "data"


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def queries(count: int) -> list[str]:
    with open(SHARED / "scifact" / "queries-train.jsonl") as handle:
        return [json.loads(line)["text"] for line, _ in zip(handle, range(count), strict=False)]


def scaled_copy(source_home: Path, target_home: Path, factor: int) -> dict:
    """A home whose promoted table holds every row of the source `factor` times; returns
    what `ensure_vector_index` did."""
    promoted = StateStore(source_home).read(PROMOTED_INDEX)
    table = contract.connect(StateStore(source_home)).open_table(promoted.table)
    table.checkout(promoted.version)
    rows = table.to_arrow()
    rng = np.random.default_rng(0)
    vectors = np.stack(rows.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    db = contract.connect(StateStore(target_home))
    copy = db.create_table(promoted.table, schema=rows.schema)
    for copy_number in range(factor):
        noisy = vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32) * (copy_number > 0)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        batch = rows.set_column(
            rows.schema.get_field_index("vector"),
            "vector",
            pa.FixedSizeListArray.from_arrays(pa.array(noisy.ravel()), vectors.shape[1]),
        ).set_column(
            0,
            "chunk_id",
            pa.array([f"{c}-{copy_number}" for c in rows.column("chunk_id").to_pylist()]),
        )
        copy.add(batch)
    from lancedb.index import FTS

    # What `search_index` does after writing: the full-text index, compaction, and the
    # vector index once the table is above the threshold.
    copy.create_index("text", config=FTS())
    copy.optimize()
    vector_index = contract.ensure_vector_index(copy)
    moved = promoted.snapshot.model_copy(
        update={"version": copy.version, "chunks": copy.count_rows()}
    )
    promote_snapshot(StateStore(target_home), moved, promoted.embedding_model)
    return vector_index


BACKEND: dict = {}  # Retriever.open's backend and exports_dir, from the command line
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def copy_to_object_storage(home: Path, endpoint: str, url: str) -> None:
    """The home's LanceDB database and promoted pointer, put under `url` on the S3 server."""
    import boto3

    source, target = StateStore(home), StateStore(url)
    database = Path(source.index_uri)
    bucket, under = split_s3_url(target.index_uri)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in database.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{under}/{path.relative_to(database)}")
    promoted = source.read(PROMOTED_INDEX)
    promote_snapshot(target, promoted.snapshot, promoted.embedding_model)


def versus_flat(home: Path, texts: list[str]) -> dict:
    """The indexed search against the exact one on the same table: the share of the flat
    dense top 100 found, and of queries whose hybrid top 10 (ids and order) is the same."""
    from bench_retrieval import dense_recall_vs_flat

    indexed = Retriever.open(home, **BACKEND)
    flat = Retriever.open(home, embedder=indexed.embedder)
    flat.vector_index = None
    same_top10 = sum(
        [h.chunk_id for h in indexed.search(text, 10)]
        == [h.chunk_id for h in flat.search(text, 10)]
        for text in texts
    )
    return {
        "vector_index": indexed.vector_index,
        "dense_top100_recall": round(dense_recall_vs_flat(indexed, texts, depth=100), 4),
        "hybrid_top10_identical": round(same_top10 / len(texts), 4),
    }


def in_process(home: Path, texts: list[str]) -> dict:
    retriever = Retriever.open(home, **BACKEND)
    retriever.search("warm up", 10, "hybrid")
    results = {}
    for mode in MODES:
        samples = []
        for text in texts:
            started = time.perf_counter()
            retriever.search(text, 10, mode)
            samples.append(time.perf_counter() - started)
        results[mode] = percentiles(samples)
    return results


def start_service(home: Path, **extra_env: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # auto: the generator's first token is what the answer figures measure (quotes need none).
    env = {**os.environ, "QPBOT_HOME": str(home), "QPBOT_ANSWER_MODE": "auto", **extra_env}
    if BACKEND:
        env["QPBOT_EMBEDDING_BACKEND"] = BACKEND["backend"]
        env["QPBOT_EMBEDDING_EXPORT_DIR"] = str(BACKEND["exports_dir"])
    process = subprocess.Popen(
        [Path(sys.executable).parent / "qpbot", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("qpbot serve did not become ready")


def over_http(url: str, texts: list[str]) -> dict:
    results = {}
    with httpx.Client(timeout=30) as client:
        for mode in MODES:
            samples = []
            for text in texts:
                started = time.perf_counter()
                client.post(
                    f"{url}/v1/search", json={"query": text, "k": 10, "mode": mode}
                ).raise_for_status()
                samples.append(time.perf_counter() - started)
            results[mode] = percentiles(samples)
    return results


def throughput(url: str, texts: list[str], clients: int = 16, seconds: float = 15.0) -> dict:
    done = []
    deadline = time.monotonic() + seconds

    def client_loop(offset: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = offset
            while time.monotonic() < deadline:
                client.post(
                    f"{url}/v1/search", json={"query": texts[i % len(texts)], "k": 10}
                ).raise_for_status()
                done.append(1)
                i += clients

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "clients": clients,
        "requests_per_s": round(len(done) / (time.monotonic() - started), 1),
    }


def answer_latency(url: str, questions: list[str]) -> dict:
    first, total = [], []
    with httpx.Client(timeout=120) as client:
        for question in questions:
            started = time.perf_counter()
            first_token = None
            with client.stream(
                "POST", f"{url}/v1/answer", json={"query": question, "stream": True}
            ) as response:
                for line in response.iter_lines():
                    if line == "event: token" and first_token is None:
                        first_token = time.perf_counter() - started
            total.append(time.perf_counter() - started)
            first.append(first_token if first_token is not None else total[-1])
    return {
        "time_to_first_token": percentiles(first),
        "total": percentiles(total),
        "questions": len(questions),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--scale", type=int, default=20, help="copies of each row for the big index"
    )
    parser.add_argument("--backend", choices=contract.EMBEDDING_BACKENDS, default=None)
    parser.add_argument("--big-only", action="store_true", help="skip the ~5k chunk index")
    parser.add_argument(
        "--object-storage", action="store_true", help="also serve the 100k index from S3"
    )
    args = parser.parse_args()
    texts = queries(args.queries)
    report: dict = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend:
            BACKEND.update(backend=args.backend, exports_dir=Path(tmp) / "onnx")
            report["backend"] = args.backend
        big = Path(tmp) / "big"
        started = time.perf_counter()
        vector_index = scaled_copy(args.home, big, args.scale)
        build_seconds = round(time.perf_counter() - started, 1)
        homes = (("small", args.home), ("big", big))
        for label, home in homes[1:] if args.big_only else homes:
            chunks = StateStore(home).read(PROMOTED_INDEX).chunks
            process, url = start_service(home)
            try:
                report[label] = {
                    "chunks": chunks,
                    "in_process": in_process(home, texts),
                    "http": over_http(url, texts),
                    "throughput_hybrid": throughput(url, texts),
                }
                if label == "small":
                    report[label]["answer"] = answer_latency(url, texts[:10])
            finally:
                process.terminate()
                process.wait(timeout=30)
        report["big"]["build"] = {"seconds": build_seconds, "ensure_vector_index": vector_index}
        report["big"]["vs_flat"] = versus_flat(big, texts)
        if args.object_storage:
            report["big_on_s3"] = on_object_storage(big, Path(tmp) / "replica", texts)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


def on_object_storage(home: Path, replica: Path, texts: list[str]) -> dict:
    """The index of `home` served from an S3 server by a service with an empty home."""
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint, url = f"http://{host}:{port}", "s3://bench/qpbot"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    try:
        started = time.perf_counter()
        copy_to_object_storage(home, endpoint, url)
        uploaded = time.perf_counter() - started
        started = time.perf_counter()
        process, service = start_service(
            replica, QPBOT_STORAGE_URL=url, AWS_ENDPOINT_URL=endpoint, **S3_CREDENTIALS
        )
        ready = time.perf_counter() - started
        try:
            return {
                "upload_seconds": round(uploaded, 1),
                "ready_seconds": round(ready, 1),
                "http": over_http(service, texts),
                "throughput_hybrid": throughput(service, texts),
            }
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
