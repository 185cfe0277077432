"""The answer service: search, grounded answers with citations, feedback, uploads, health,
metrics. `create_app(settings)` builds it; the lifespan opens the promoted index and loads
the models into `app.state`; a watcher swaps in a newly promoted index without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from qpbot_serving import index as contract
from qpbot_serving.access import Access, Forbidden, Unauthorized
from qpbot_serving.answer_log import AnswerLog, InvalidRow
from qpbot_serving.answering import Answerer, AnswerPolicy, FinishedAnswer, PreparedAnswer
from qpbot_serving.documents import (
    ACCEPTED_SUFFIXES,
    DocumentNotFound,
    UploadRefused,
    document_file,
    document_status,
    save_upload,
)
from qpbot_serving.generation import (
    DeadlinePassed,
    Generator,
    GeneratorUnavailable,
    LocalGenerator,
    build_generator,
)
from qpbot_serving.metrics import ServiceMetrics
from qpbot_serving.middleware import AllowedHosts, ObserveLatency, RequestGuard
from qpbot_serving.prompting import PROMPT_VERSION
from qpbot_serving.retrieval import IndexNotReady, Retriever, SearchHit
from qpbot_serving.settings import QpbotSettings, Scope
from qpbot_serving.state import PROMOTED_INDEX, PromotedIndex, StateStore

INDEX_POLL_SECONDS = 2.0
WEB_DIR = Path(__file__).parent / "web"
UPLOAD_PATH = "/v1/documents"
# Generation has threads of its own: a slow or hanging generator must not take the threads
# of the event loop's default pool, which searches run on.
GENERATION_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qpbot-generation")
CLIENT_GONE = "the client went away"  # the guard's stop reason when a client hangs up
# A query must hold more than whitespace, and no NUL (no database column can hold it).
QueryText = Annotated[
    str, StringConstraints(min_length=1, max_length=2000, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]
FilterText = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")]
DocumentId = Annotated[str, Field(pattern=r"^[a-z0-9._-]{1,100}$")]
# Requests are taken as they are: no coercion ("5" is no number) and no unknown fields.
STRICT = ConfigDict(extra="forbid", strict=True)
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


# --- request and response models ---------------------------------------------------------
class SearchFilters(BaseModel):
    model_config = STRICT

    document_id: FilterText | None = None
    document_ids: list[FilterText] | None = None
    format: FilterText | None = None
    language: FilterText | None = None
    author: FilterText | None = None
    title: FilterText | None = None


class SearchRequest(BaseModel):
    model_config = STRICT

    query: QueryText
    k: int = Field(default=10, ge=1, le=100)
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid"
    filters: SearchFilters | None = None


class Chunk(BaseModel):
    chunk_id: str
    document_id: str
    title: str | None
    section: str | None
    page_start: int | None
    page_end: int | None
    text: str
    score: float


class SearchResponse(BaseModel):
    hits: list[Chunk]
    index_version: str
    timings_ms: dict[str, float]


class AnswerRequest(BaseModel):
    model_config = STRICT

    query: QueryText
    k: int = Field(default=5, ge=1, le=20, description="Sources returned (cited and more).")
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid"
    filters: SearchFilters | None = None
    stream: bool = False


class Citation(BaseModel):
    number: int | None  # the [n] of the prompt; None for a source the model was not given
    chunk_id: str
    document_id: str
    title: str | None
    format: str | None  # pdf, docx, markdown, html, text: how the page opens the original
    page_start: int | None
    page_end: int | None
    score: float


class Evidence(BaseModel):
    """A unit of a source the prompt showed: a sentence, list item or table row."""

    number: int  # the citation number of its source ([n] in the answer)
    chunk_id: str
    document_id: str
    title: str | None
    format: str | None
    section: str | None
    page: int | None
    kind: Literal["sentence", "list_item", "table_row"]
    start: int  # character offsets of the unit in its chunk's text
    end: int
    quote: str  # the unit as quoted (a table row with its header's names)
    score: float
    cited: bool  # the answer rests on it
    highlights: list[tuple[int, int]]  # spans of `quote` the answer repeats


class AnswerResponse(BaseModel):
    answer_id: str
    answer: str | None
    grounded: bool  # the answer rests on the quoted evidence
    answer_mode: Literal["generative", "extractive", "declined"]  # what made the answer
    fallback: str | None = None  # why a generated answer was replaced by the quote
    error: str | None = None
    evidence: list[Evidence] = []
    citations: list[Citation]
    # Retrieved too, but past the prompt's context budget: shown so a user can judge them
    # (`source_judgments` in /v1/feedback), which is what teaches the retriever most.
    more_sources: list[Citation] = []
    timings_ms: dict[str, float]
    model_version: str
    index_version: str
    prompt_version: str


class FeedbackRequest(BaseModel):
    model_config = STRICT

    answer_id: str = Field(
        pattern=UUID_PATTERN, description="The answer_id of a /v1/answer response."
    )
    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    source_judgments: dict[str, Literal["relevant", "irrelevant"]] | None = None
    feedback_id: str | None = Field(
        default=None,
        pattern=UUID_PATTERN,
        description="A UUID the client makes once for this feedback and sends with every "
        "retry of it, so that it is written once (the first one sent is kept). The server "
        "makes one when it is absent.",
    )


# The upload's body as OpenAPI shows it (the endpoint parses it itself, after the token).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "One of " + ", ".join(sorted(ACCEPTED_SUFFIXES)),
                        }
                    },
                }
            }
        },
    }
}


# --- errors: domain exceptions to status codes, in one place -------------------------------
class BadRequest(Exception):
    pass


class NotFound(Exception):
    pass


ERROR_STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    DocumentNotFound: 404,
    InvalidRow: 422,  # a row the feedback database cannot hold; the message names the column
    IndexNotReady: 503,
}


class ErrorBody(BaseModel):
    error: str
    detail: list[dict] | None = None  # a 422's list of what does not fit: loc, msg, type


ERROR_MEANING = {
    400: "The request cannot be carried out as sent.",
    401: "A bearer token is needed (QPBOT_API_TOKEN / QPBOT_API_TOKENS are set).",
    403: "The token lacks the scope, or a page of another origin tried to write.",
    404: "No such answer or document.",
    413: "The body is larger than its limit.",
    415: "The body's type or the file's type is not accepted.",
    422: "The body does not fit the schema (unknown fields and coercions are refused).",
    503: "No index is promoted yet, or the service is not ready.",
}


def _responses(*codes: int) -> dict:
    """The OpenAPI `responses` of an endpoint: every error it can answer."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANING[code]} for code in codes}


def _error_handler(status: int):
    async def handle(request: Request, error: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(status_code=status, content={"error": str(error)}, headers=headers)

    return handle


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own errors (404 route, 405, a malformed multipart body, a body over its
    limit) in the same shape as ours."""
    return JSONResponse(
        status_code=error.status_code, content={"error": str(error.detail)}, headers=error.headers
    )


async def _upload_refused(request: Request, error: UploadRefused) -> JSONResponse:
    return JSONResponse(status_code=error.status, content={"error": str(error)})


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """What does not fit the schema, never the input itself: echoing it back would send a
    20 MB body back, or fail on a NaN that JSON cannot write."""
    problems = [
        {
            "loc": [str(part) for part in problem.get("loc", ())][:10],
            "msg": str(problem.get("msg", ""))[:200],
            "type": str(problem.get("type", "")),
        }
        for problem in error.errors()[:20]
    ]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"][1:]) or "body"
    return JSONResponse(
        status_code=422,
        content={"error": f"{where}: {first['msg']}", "detail": problems},
    )


# Declared so that OpenAPI shows the scheme; `Access` reads the header itself.
BEARER = HTTPBearer(
    auto_error=False,
    description="Needed when QPBOT_API_TOKEN or QPBOT_API_TOKENS is set; scopes read, write, "
    "admin.",
)


# --- the app ---------------------------------------------------------------------------
def create_app(
    settings: QpbotSettings | None = None, generator: Generator | None = None
) -> FastAPI:
    """The service for one QPBOT_HOME. `generator` overrides the one the settings name."""
    settings = settings or QpbotSettings()
    access = Access.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.settings = settings
        state.store = StateStore.from_settings(settings)  # the pointers and the index
        state.metrics = ServiceMetrics()
        state.retriever = None
        state.not_ready_reason = "loading"
        state.answer_log = AnswerLog(
            settings.feedback_database_url, settings.home / "spool" / "answer_log.jsonl"
        )
        state.metrics.watch_answer_log(state.answer_log)
        state.metrics.watch_platform(settings, ready=lambda: state.retriever is not None)
        state.generator = generator or build_generator(settings)
        state.answer_policy = AnswerPolicy.from_settings(settings)
        # Quoting needs no model.
        if isinstance(state.generator, LocalGenerator) and settings.answer_mode != "extractive":
            await asyncio.to_thread(state.generator.load)
        await _refresh_index(app)
        watcher = asyncio.create_task(_watch_index(app))
        try:
            yield
        finally:
            watcher.cancel()
            state.answer_log.close()

    docs_open = settings.docs_access == "open" or (
        settings.docs_access != "off" and not access.enabled
    )
    app = FastAPI(
        title="qpbot answer service",
        version="1",
        description="Hybrid retrieval over the promoted index and grounded answers with "
        "citations. With a token configured, reads need the `read` scope and writes the "
        "`write` scope (`Authorization: Bearer <token>`).",
        lifespan=lifespan,
        docs_url="/docs" if docs_open else None,
        redoc_url="/redoc" if docs_open else None,
        openapi_url="/openapi.json" if docs_open else None,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, _error_handler(status))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(UploadRefused, _upload_refused)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    app.add_middleware(AllowedHosts, hosts=settings.allowed_hosts)
    app.add_middleware(
        RequestGuard,
        upload_path=UPLOAD_PATH,
        max_upload_bytes=settings.max_upload_mb * 1024 * 1024,
        max_request_bytes=settings.max_request_kb * 1024,
    )
    app.add_middleware(ObserveLatency)  # outermost: it sees the guard's refusals too

    def needs(scope: Scope):
        """A dependency: the request's token has `scope` (when tokens are configured); a
        write must not come from a page of another origin."""

        def check(
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
        ) -> None:
            access.check(scope, request.headers.get("authorization"))
            if scope == "write":
                access.check_origin(request.headers, request.headers.get("host"))

        return Depends(check)

    def opened_by(setting: str) -> list:
        """An endpoint's dependencies under QPBOT_METRICS_ACCESS / QPBOT_DOCS_ACCESS."""
        return [] if setting in ("open", "off") else [needs(setting)]

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/app.js", include_in_schema=False)
    async def web_script() -> FileResponse:
        return FileResponse(WEB_DIR / "app.js", media_type="text/javascript")

    if not docs_open and settings.docs_access != "off":  # the schema and docs need a scope

        @app.get(
            "/openapi.json", include_in_schema=False, dependencies=opened_by(settings.docs_access)
        )
        async def openapi_schema() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=opened_by(settings.docs_access))
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

        @app.get("/redoc", include_in_schema=False, dependencies=opened_by(settings.docs_access))
        async def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=_responses(503))
    async def readyz(request: Request) -> JSONResponse:
        retriever = request.app.state.retriever
        # Reported, not gated on: answers are served while the feedback database is away.
        status = request.app.state.answer_log.status()
        answer_log = {**dataclasses.asdict(status), "backlog": status.backlog}
        if retriever is None:
            return JSONResponse(
                status_code=503,
                content={
                    "ready": False,
                    "reason": request.app.state.not_ready_reason,
                    "answer_log": answer_log,
                },
            )
        return JSONResponse(
            {"ready": True, "index_version": retriever.promoted.label, "answer_log": answer_log}
        )

    if settings.metrics_access != "off":

        @app.get(
            "/metrics",
            tags=["health"],
            dependencies=opened_by(settings.metrics_access),
            responses=_responses(401, 403),
        )
        async def metrics(request: Request) -> Response:
            return Response(
                generate_latest(request.app.state.metrics.registry),
                media_type=CONTENT_TYPE_LATEST,
            )

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        tags=["v1"],
        dependencies=[needs("read")],
        responses=_responses(400, 401, 403, 413, 422, 503),
    )
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        retriever = _retriever(request)
        started = time.monotonic()
        hits = await asyncio.to_thread(
            retriever.search, body.query, body.k, body.mode, _filters(body.filters)
        )
        retrieval_ms = _observe(request, "retrieval", started)
        return SearchResponse(
            hits=[Chunk(**_chunk_fields(hit)) for hit in hits],
            index_version=retriever.promoted.label,
            timings_ms={"retrieval": retrieval_ms},
        )

    @app.post(
        "/v1/answer",
        response_model=AnswerResponse,
        tags=["v1"],
        dependencies=[needs("read")],
        responses=_responses(400, 401, 403, 413, 422, 503),
    )
    async def answer(body: AnswerRequest, request: Request):
        retriever = _retriever(request)
        state = request.app.state
        started = time.monotonic()
        policy = state.answer_policy
        answerer = Answerer.for_retriever(retriever, state.generator, policy)
        depth = max(body.k, policy.evidence_chunks)
        hits = await asyncio.to_thread(
            retriever.search, body.query, depth, body.mode, _filters(body.filters)
        )
        timings = {"retrieval": _observe(request, "retrieval", started)}
        prepared = await asyncio.to_thread(answerer.prepare, body.query, hits, started)
        timings["evidence"] = _elapsed_ms(started) - timings["retrieval"]
        citations, more_sources = _sources(prepared, hits, body.k)
        record = {
            "answer_id": str(uuid.uuid4()),
            "query": body.query,
            "mode": body.mode,
            "retrieved": [
                {"chunk_id": h.chunk_id, "document_id": h.document_id, "score": h.score}
                for h in hits[: body.k]
            ],
            "prompt_version": PROMPT_VERSION,
            "model_version": state.generator.model_name,
            "index_version": retriever.promoted.label,
        }
        answer = _Answer(request, answerer, prepared, record, citations, more_sources, timings)
        if body.stream:
            return StreamingResponse(answer.events(), media_type="text/event-stream")
        return await answer.complete()

    @app.post(
        "/v1/feedback",
        status_code=202,
        tags=["v1"],
        dependencies=[needs("write")],
        responses=_responses(400, 401, 403, 404, 413, 422),
    )
    async def feedback(body: FeedbackRequest, request: Request) -> dict:
        log: AnswerLog = request.app.state.answer_log
        # A retry with the client's feedback_id is written once (on conflict, do nothing).
        row = {**body.model_dump(), "feedback_id": body.feedback_id or str(uuid.uuid4())}
        log.validate("feedback", row)  # InvalidRow: 422, before it could be spooled
        # On the log's own threads, for at most 2 s: a frozen database holds no request.
        if await log.answer_known(body.answer_id) is False:
            raise NotFound(f"no answer with id {body.answer_id}")
        # Unknown (None: the database is away or slow): accepted, set aside on replay.
        log.record_feedback(row)
        request.app.state.metrics.feedback.labels(body.rating).inc()
        return {"feedback_id": row["feedback_id"]}

    @app.post(
        UPLOAD_PATH,
        status_code=201,
        tags=["v1"],
        # The token is checked before the body is read: the file is parsed in the endpoint.
        dependencies=[needs("write")],
        responses=_responses(400, 401, 403, 413, 415),
        openapi_extra=UPLOAD_BODY,
    )
    async def upload(request: Request) -> dict:
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise UploadRefused("send the file as multipart/form-data, in a field 'file'", 415)
        try:
            form = await request.form(max_files=1, max_fields=1)
        except ClientDisconnect:  # gone mid-upload: nothing was stored, nobody to answer
            return Response(status_code=499)
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise BadRequest("send the file as multipart/form-data, in a field 'file'")
            return await asyncio.to_thread(save_upload, settings, file.filename or "", file.file)
        finally:
            await form.close()

    @app.get(
        "/v1/documents/{document_id}",
        tags=["v1"],
        dependencies=[needs("read")],
        responses=_responses(401, 403, 404, 422),
    )
    async def document(document_id: DocumentId, request: Request) -> dict:
        retriever = request.app.state.retriever
        return await asyncio.to_thread(
            document_status,
            settings,
            document_id,
            lambda document: retriever.chunks_of(document) if retriever else None,
            retriever.table.name if retriever else None,
        )

    @app.get(
        "/v1/documents/{document_id}/content",
        tags=["v1"],
        dependencies=[needs("read")],
        responses=_responses(401, 403, 404, 422),
    )
    async def document_content(document_id: DocumentId) -> FileResponse:
        path, filename = await asyncio.to_thread(document_file, settings, document_id)
        # Downloaded, never shown by the browser: an uploaded HTML page must not run as
        # this service's own page. The web page opens PDFs itself, at their cited page.
        return FileResponse(
            path,
            filename=filename,
            content_disposition_type="attachment",
            headers={"Content-Security-Policy": "default-src 'none'; sandbox"},
        )

    return app


# --- helpers -------------------------------------------------------------------------------
def _retriever(request: Request) -> Retriever:
    retriever = request.app.state.retriever
    if retriever is None:
        raise IndexNotReady(request.app.state.not_ready_reason)
    return retriever


def _filters(filters: SearchFilters | None) -> dict | None:
    return filters.model_dump(exclude_none=True) if filters else None


def _chunk_fields(hit: SearchHit) -> dict:
    return {name: getattr(hit, name) for name in Chunk.model_fields}


def _citation(number: int | None, hit: SearchHit) -> Citation:
    fields = {name: getattr(hit, name) for name in Citation.model_fields if name != "number"}
    return Citation(number=number, **fields)


def _sources(prepared: PreparedAnswer, hits: list[SearchHit], k: int):
    """The numbered sources of the prompt's evidence, and the rest of the top `k` hits
    (shown so a user can judge them: that teaches the retriever most)."""
    by_id = {hit.chunk_id: hit for hit in hits}
    numbered = {unit.chunk_id: unit.number for unit in prepared.evidence}
    citations = [_citation(number, by_id[chunk_id]) for chunk_id, number in numbered.items()]
    more = [_citation(None, hit) for hit in hits[:k] if hit.chunk_id not in numbered]
    return sorted(citations, key=lambda c: c.number), more


def _observe(request: Request, stage: str, started: float) -> float:
    seconds = time.monotonic() - started
    request.app.state.metrics.stage_seconds.labels(stage).observe(seconds)
    return round(seconds * 1000, 1)


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


class _Answer:
    """One /v1/answer after retrieval: generates on the generation pool (when the mode and
    the evidence call for it) under the answer's deadline, stops when the client goes away,
    then checks, logs and returns the answer, whole or as server-sent events."""

    def __init__(self, request, answerer, prepared, record, citations, more_sources, timings):
        self.request, self.answerer, self.prepared = request, answerer, prepared
        self.record, self.citations, self.more_sources = record, citations, more_sources
        self.timings = timings
        self.guard = None

    async def complete(self) -> AnswerResponse:
        error = None
        async for kind, value in self._pieces():
            if kind == "error":
                error = value
            elif await self.request.is_disconnected():
                self.guard.cancel(CLIENT_GONE)
        return self._finish(error)

    async def events(self) -> AsyncIterator[str]:
        """`sources` (citations and evidence), `token`s of the draft, then `done` with the
        checked answer, which may differ from the draft (dropped sentences, or the quote)."""
        yield _event(
            "sources",
            {
                "citations": [c.model_dump() for c in self.citations],
                "evidence": [_evidence_row(unit) for unit in self.prepared.evidence],
            },
        )
        error = None
        finished = False
        try:
            async for kind, value in self._pieces():
                if kind == "error":
                    error = value
                else:
                    yield _event("token", value)
            finished = True
        finally:  # not finished: the client went away and the response was cancelled
            if not finished and self.guard is not None:
                self.guard.cancel(CLIENT_GONE)
        response = self._finish(error)
        if error is not None and not isinstance(error, DeadlinePassed):
            yield _event("error", {"error": response.error})
        yield _event("done", response.model_dump())

    async def _pieces(self) -> AsyncIterator[tuple[str, object]]:
        """("token", text) as generated, then ("error", exception) if generation failed;
        nothing when no generation is needed."""
        if not self.answerer.needs_generation(self.prepared):
            return
        pieces, self.guard = self.answerer.stream(self.prepared)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def pump() -> None:  # on the generation pool
            try:
                for piece in pieces:
                    loop.call_soon_threadsafe(queue.put_nowait, ("token", piece))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except GeneratorUnavailable as problem:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", problem))

        loop.run_in_executor(GENERATION_POOL, pump)
        generation_started = time.monotonic()
        try:
            while True:
                # The generators keep the deadline too; this one also ends an answer still
                # waiting for a generation thread (16 clients on a stuck generator: 9.0 s
                # with a second's grace here, against a deadline of 8 s).
                left = self.prepared.deadline - time.monotonic()
                try:
                    kind, value = await asyncio.wait_for(queue.get(), timeout=max(left, 0.0))
                except TimeoutError:
                    self.guard.cancel("deadline")
                    yield "error", DeadlinePassed("the generator kept going past the deadline")
                    return
                if kind == "end":
                    return
                if kind == "token" and "first_token" not in self.timings:
                    self.timings["first_token"] = _elapsed_ms(self.prepared.started)
                yield kind, value
                if kind == "error":
                    return
        finally:
            self.timings["generation"] = _observe(self.request, "generation", generation_started)

    def _finish(self, error: Exception | None) -> AnswerResponse:
        state = self.request.app.state
        guard = self.guard
        generated = guard.text.strip() if guard else None
        if guard is not None and guard.stop_reason == CLIENT_GONE and error is None:
            error = GeneratorUnavailable(CLIENT_GONE)
        finished = self.answerer.finish(
            self.prepared, generated, error, guard.stop_reason if guard else None
        )
        self.timings["total"] = _elapsed_ms(self.prepared.started)
        _count(state.metrics, finished)
        evidence = finished.evidence_rows()
        state.answer_log.record_answer(
            {
                **self.record,
                "answer": finished.text,
                "error": finished.error,
                "latency_ms": self.timings,
                "answer_mode": finished.mode,
                "grounded": finished.grounded,
                "evidence": evidence,
            }
        )
        return AnswerResponse(
            answer_id=self.record["answer_id"],
            answer=finished.text,
            grounded=finished.grounded,
            answer_mode=finished.mode,
            fallback=finished.fallback,
            error=finished.error,
            evidence=[Evidence(**row) for row in evidence],
            citations=self.citations,
            more_sources=self.more_sources,
            timings_ms=self.timings,
            model_version=self.record["model_version"],
            index_version=self.record["index_version"],
            prompt_version=self.record["prompt_version"],
        )


def _evidence_row(unit) -> dict:
    """A unit as the `sources` event shows it before the answer is known."""
    return {
        "number": unit.number,
        "chunk_id": unit.chunk_id,
        "document_id": unit.document_id,
        "page": unit.page,
        "kind": unit.kind,
        "quote": unit.prompt_text,
    }


def _count(metrics: ServiceMetrics, finished: FinishedAnswer) -> None:
    metrics.answers.labels(finished.mode, str(finished.grounded).lower()).inc()
    if finished.fallback_kind:
        metrics.fallbacks.labels(finished.fallback_kind).inc()
    if finished.generated:
        metrics.tokens.inc(len(finished.generated.split()))


def _event(name: str, data) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


async def _refresh_index(app: FastAPI) -> None:
    """Opens the promoted index when it is new; in-flight requests keep the one they have."""
    state = app.state
    try:
        promoted = await asyncio.to_thread(state.store.read, PROMOTED_INDEX)
    except Exception as problem:  # object storage away: keep what is open, try again later
        if state.retriever is None:
            state.not_ready_reason = (
                f"the promoted pointer cannot be read ({type(problem).__name__})"
            )
        return
    current = state.retriever
    if promoted is None:
        state.not_ready_reason = "no promoted index yet: run `qpbot ingest PATH...`"
        return
    if current is not None and current.promoted == promoted:
        try:  # still there? A table removed under the service must make it unready.
            await asyncio.to_thread(_open_promoted, state.store, promoted)
            return
        except Exception as problem:  # LanceDB raises OSError, ValueError, RuntimeError
            state.retriever = None
            state.not_ready_reason = f"the promoted index cannot be read ({type(problem).__name__})"
            current = None
    embedder = (
        current.embedder
        if current
        and current.info.embedding_model == promoted.embedding_model
        and contract.same_vectors(current.embedder.backend, promoted.embedding_backend)
        else None
    )
    try:
        retriever = await asyncio.to_thread(Retriever.from_settings, state.settings, embedder)
        await asyncio.to_thread(retriever.search, "warm up", 1, "hybrid")  # loads the model now
    except IndexNotReady as problem:
        state.not_ready_reason = str(problem)
        return
    state.retriever = retriever
    state.metrics.set_index(promoted)


def _open_promoted(store: StateStore, promoted: PromotedIndex) -> None:
    """Opens the promoted table and version afresh (the open one keeps its files' metadata
    in memory, and would not notice them gone)."""
    contract.connect(store).open_table(promoted.table).checkout(promoted.version)


async def _watch_index(app: FastAPI) -> None:
    while True:
        await asyncio.sleep(INDEX_POLL_SECONDS)
        try:
            await _refresh_index(app)
        except Exception as problem:  # a bad new index must not take the service down
            app.state.not_ready_reason = f"could not open the new index: {type(problem).__name__}"
