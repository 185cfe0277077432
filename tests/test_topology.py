"""The platform as it runs in production, on this machine: every part its own process in its
own empty working directory, sharing state only through PostgreSQL and the S3 server.

    dagster api grpc (the code location; runs start as its subprocesses)
    dagster-daemon (sensors, automation, the run queue)   dagster-webserver (the UI)
    qpbot serve x 2 behind HAProxy (deploy/haproxy/haproxy.cfg), health-checked on /readyz

Documents put into the S3 inbox are ingested by the S3 sensor; an upload through the load
balancer lands in the same inbox and is ingested the same way; both replicas then answer
from the new index version; one replica is killed under load and no client sees a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import S3_KEY, S3_SECRET, free_port, need, s3_client, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "qpbot"
PREFIX = "platform"
NEW_DOCUMENT = b"# Loading dock\n\nThe loading dock opens at 6 am on weekdays.\n"


class Platform:
    """Starts and stops the processes; each gets `tmp/<name>/` as its working directory and
    `tmp/<name>/home` as its QPBOT_HOME, and logs to `tmp/<name>.log`."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env, self.processes = tmp, env, {}

    def start(self, name: str, argv: list, **env) -> subprocess.Popen:
        folder = self.tmp / name
        folder.mkdir()
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [str(a) for a in argv],
            cwd=folder,
            env={
                **self.env,
                "QPBOT_HOME": str(folder / "home"),
                "QPBOT_DAGSTER_STORAGE": str(folder / "dagster"),
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.tmp.glob("*.log"))
        )


def search_top(port: int, query: str) -> str:
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/search", json={"query": query, "k": 1}, timeout=10
    )
    response.raise_for_status()
    hits = response.json()["hits"]
    return hits[0]["text"] if hits else ""


@pytest.mark.slow
def test_the_production_topology(tmp_path, object_store, postgres_database, sample_documents):
    need(shutil.which("haproxy") is not None, "haproxy not installed (make loadbalancer)")

    endpoint = object_store
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("QPBOT_", "DAGSTER_"))},
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "QPBOT_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
        "QPBOT_DATABASE_URL": postgres_database,
        "QPBOT_DAGSTER_PG_URL": postgres_database,
        "DAGSTER_HOME": str(REPO / "dagster_home" / "postgres"),
        "QPBOT_EMBEDDING_EXPORT_DIR": os.environ["QPBOT_EMBEDDING_EXPORT_DIR"],  # a cache
    }
    grpc, web, lb = free_port(), free_port(), free_port()
    replicas = [free_port(), free_port()]
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc}\n      location_name: qpbot\n"
    )
    platform = Platform(tmp_path, env)
    try:
        code = platform.start(
            "code",
            [BIN / "dagster", "api", "grpc", "-m", "qpbot_assets.definitions"]
            + ["-h", "127.0.0.1", "-p", grpc],
        )
        wait_for(lambda: _port_open(grpc), 120, "the code server", [code])
        platform.start("daemon", [BIN / "dagster-daemon", "run", "-w", workspace])
        platform.start(
            "webserver", [BIN / "dagster-webserver", "-w", workspace, "-h", "127.0.0.1", "-p", web]
        )
        for i, port in enumerate(replicas, 1):
            platform.start(f"replica{i}", [BIN / "qpbot", "serve", "--port", port])
        platform.start(
            "haproxy",
            ["haproxy", "-db", "-f", REPO / "deploy" / "haproxy" / "haproxy.cfg"],
            QPBOT_LB_BIND=f"127.0.0.1:{lb}",
            QPBOT_REPLICA_1=f"127.0.0.1:{replicas[0]}",
            QPBOT_REPLICA_2=f"127.0.0.1:{replicas[1]}",
        )
        running = list(platform.processes.values())

        # The documents of a source put into the inbox on S3: the S3 sensor ingests them.
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        for path in sorted(sample_documents.iterdir()):
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/inbox/{path.name}", Body=path.read_bytes())

        def both_ready():
            return all(
                httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=5).status_code == 200
                for p in replicas
            )

        wait_for(both_ready, 600, "both replicas to serve the first index", running)
        first = httpx.get(f"http://127.0.0.1:{lb}/readyz", timeout=5).json()["index_version"]

        # An upload through the load balancer, ingested by the sensor; both replicas serve it.
        uploaded = httpx.post(
            f"http://127.0.0.1:{lb}/v1/documents",
            files={"file": ("loading-dock.md", NEW_DOCUMENT, "text/markdown")},
            timeout=30,
        )
        assert uploaded.status_code == 201, uploaded.text
        question = "When does the loading dock open?"
        wait_for(
            lambda: all("6 am" in search_top(p, question) for p in replicas),
            600,
            "both replicas to answer from the new index",
            running,
        )
        versions = {
            httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=5).json()["index_version"]
            for p in replicas
        }
        assert len(versions) == 1 and versions != {first}

        # One replica killed under load: every client request still succeeds.
        failures, done = [], []
        stop = threading.Event()

        def client():
            with httpx.Client(base_url=f"http://127.0.0.1:{lb}", timeout=30) as http:
                while not stop.is_set():
                    try:
                        response = http.post("/v1/search", json={"query": question, "k": 3})
                        (done if response.status_code == 200 else failures).append(
                            response.status_code
                        )
                    except httpx.HTTPError as problem:
                        failures.append(repr(problem))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(2)
        platform.kill("replica1")
        time.sleep(4)
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        assert not failures, failures[:5]
        assert len(done) > 20

        # The UI reads the same instance: it lists the runs the daemon launched.
        query = "{ runsOrError { ... on Runs { results { status jobName } } } }"
        runs = httpx.post(f"http://127.0.0.1:{web}/graphql", json={"query": query}, timeout=30)
        results = runs.json()["data"]["runsOrError"]["results"]
        ingests = [r["status"] for r in results if r["jobName"] == "ingest_documents"]
        # Runs the daemon queued later may still be going: none may have failed.
        assert "SUCCESS" in ingests and "FAILURE" not in ingests, ingests

        # The index and its pointers are on S3: a process's folder holds at most a cache.
        for name in platform.processes:
            home = tmp_path / name / "home"
            assert not list(home.rglob("PROMOTED.json")), name
            assert not [p for p in home.rglob("*.lance") if "cache" not in p.parts], name
    except BaseException:
        print(platform.logs())
        raise
    finally:
        platform.stop()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
