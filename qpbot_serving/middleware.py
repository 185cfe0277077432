"""Plain ASGI middleware of the answer service (Starlette's `@app.middleware("http")` costs
about a millisecond a request): latency per route, and the guard every response passes."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException

# Nothing loads from anywhere: JSON and attachments need nothing; pages set their own.
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The web page: its own script and styles, calls to its own origin only.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
# FastAPI's /docs and /redoc load Swagger UI and ReDoc from a CDN and start them inline.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
PAGE_PATHS = {"/", "/app.js"}
DOCS_PATHS = {"/docs", "/redoc", "/docs/oauth2-redirect"}


class ObserveLatency:
    """Each request's latency per route, method and status, to the response's last byte."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = ["500"]  # what the client sees when the app raises before responding

        async def send_and_note_status(message):
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            scope["app"].state.metrics.request_seconds.labels(
                route, scope["method"], status[0]
            ).observe(time.perf_counter() - started)


class BodyTooLarge(HTTPException):
    """A body over its limit. An HTTPException, so that FastAPI's body parsing passes it on
    as it is (it turns any other error there into a 400)."""

    def __init__(self, what: str, limit: int):
        super().__init__(413, f"the {what} is larger than its limit ({limit:,} bytes)")


class RequestGuard:
    """Refuses a body over its limit before the app reads it (by Content-Length, or by
    counting as it streams in), and puts security headers on every response: `nosniff`, a
    Content-Security-Policy, no framing, no referrer."""

    def __init__(self, app, upload_path: str, max_upload_bytes: int, max_request_bytes: int):
        self.app = app
        self.upload_path = upload_path
        self.max_upload_bytes = max_upload_bytes
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        upload = path == self.upload_path
        # A multipart body carries a few hundred bytes of boundaries and headers besides.
        limit = self.max_upload_bytes + 64 * 1024 if upload else self.max_request_bytes
        what = "upload (QPBOT_MAX_UPLOAD_MB)" if upload else "request body (QPBOT_MAX_REQUEST_KB)"
        policy = PAGE_POLICY if path in PAGE_PATHS else DOCS_POLICY if path in DOCS_PATHS else None
        started = [False]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                started[0] = True
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = {
                    b"x-content-type-options": b"nosniff",
                    b"content-security-policy": (policy or API_POLICY).encode(),
                    b"x-frame-options": b"DENY",
                    b"referrer-policy": b"no-referrer",
                }
                headers += [(n, v) for n, v in extra.items() if n not in names]
                message = {**message, "headers": headers}
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            error = BodyTooLarge(what, limit)
            return await _send_json(send_with_headers, 413, {"error": error.detail})
        received = [0]

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise BodyTooLarge(what, limit)
            return message

        try:
            await self.app(scope, counting_receive, send_with_headers)
        except BodyTooLarge as error:
            if started[0]:
                raise
            await _send_json(send_with_headers, 413, {"error": error.detail})
        except Exception:
            # A bug: the client gets a short 500 with the usual headers, the log the trace.
            if not started[0]:
                await _send_json(send_with_headers, 500, {"error": "internal error"})
            raise


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of a refused body is not read
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AllowedHosts:
    """Answers only requests for one of the service's own names (the Host header), so that a
    page whose DNS name is re-pointed at this address (DNS rebinding) cannot use the browser
    to read or write. Health checks answer any host (a probe asks by address)."""

    OPEN_PATHS = frozenset({"/healthz", "/readyz"})

    def __init__(self, app, hosts: list[str]):
        self.app = app
        self.any = "*" in hosts
        self.exact = {h.lower().strip("[]") for h in hosts if not h.startswith("*")}
        self.suffixes = tuple(h.lower()[1:] for h in hosts if h.startswith("*."))

    def allows(self, host_header: str) -> bool:
        host = host_header.lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        return self.any or host in self.exact or (bool(host) and host.endswith(self.suffixes))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any or scope["path"] in self.OPEN_PATHS:
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"host"), "")
        if self.allows(host):
            return await self.app(scope, receive, send)
        await _send_json(
            send,
            421,
            {"error": f"this service does not answer to {host!r}; add it to QPBOT_ALLOWED_HOSTS"},
        )
