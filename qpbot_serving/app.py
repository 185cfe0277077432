"""The answer service: search, grounded answers with citations, feedback, uploads, health,
metrics. `create_app(settings)` builds it; the lifespan opens the promoted index and loads
the models into `app.state`; a watcher swaps in a newly promoted index without a restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Header, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from qpbot_serving import index as contract
from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.documents import DocumentNotFound, document_file, document_status, save_upload
from qpbot_serving.generation import (
    Generator,
    GeneratorUnavailable,
    LocalGenerator,
    build_generator,
)
from qpbot_serving.metrics import ServiceMetrics
from qpbot_serving.prompting import NO_ANSWER, PROMPT_VERSION, build_messages, number_sources
from qpbot_serving.retrieval import IndexNotReady, Retriever, SearchHit
from qpbot_serving.settings import QpbotSettings

INDEX_POLL_SECONDS = 2.0
WEB_PAGE = Path(__file__).parent / "web" / "index.html"


# --- request and response models ---------------------------------------------------------
class SearchFilters(BaseModel):
    document_id: str | None = None
    document_ids: list[str] | None = None
    format: str | None = None
    language: str | None = None
    author: str | None = None
    title: str | None = None


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
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
    query: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=5, ge=1, le=20)
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid"
    filters: SearchFilters | None = None
    stream: bool = False


class Citation(BaseModel):
    number: int | None  # the [n] of the prompt; None for a source the model was not given
    chunk_id: str
    document_id: str
    title: str | None
    page_start: int | None
    page_end: int | None
    score: float


class AnswerResponse(BaseModel):
    answer_id: str
    answer: str | None
    error: str | None = None
    citations: list[Citation]
    # Retrieved too, but past the prompt's context budget: shown so a user can judge them
    # (`source_judgments` in /v1/feedback), which is what teaches the retriever most.
    more_sources: list[Citation] = []
    timings_ms: dict[str, float]
    model_version: str
    index_version: str
    prompt_version: str


class FeedbackRequest(BaseModel):
    answer_id: str = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"]
    comment: str | None = Field(default=None, max_length=4000)
    source_judgments: dict[str, Literal["relevant", "irrelevant"]] | None = None


# --- errors: domain exceptions to status codes, in one place -------------------------------
class BadRequest(Exception):
    status_code = 400


class Unauthorized(Exception):
    status_code = 401


class NotFound(Exception):
    status_code = 404


class PayloadTooLarge(Exception):
    status_code = 413


class UnsupportedMediaType(Exception):
    status_code = 415


ERROR_STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    DocumentNotFound: 404,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    IndexNotReady: 503,
}


def _error_handler(status: int):
    async def handle(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": str(error)})

    return handle


# --- the app ---------------------------------------------------------------------------
def create_app(
    settings: QpbotSettings | None = None, generator: Generator | None = None
) -> FastAPI:
    """The service for one QPBOT_HOME. `generator` overrides the one the settings name."""
    settings = settings or QpbotSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.settings = settings
        state.metrics = ServiceMetrics()
        state.retriever = None
        state.not_ready_reason = "loading"
        state.answer_log = AnswerLog(
            settings.feedback_database_url, settings.home / "spool" / "answer_log.jsonl"
        )
        state.generator = generator or build_generator(settings)
        if isinstance(state.generator, LocalGenerator):
            await asyncio.to_thread(state.generator.load)
        await _refresh_index(app)
        watcher = asyncio.create_task(_watch_index(app))
        try:
            yield
        finally:
            watcher.cancel()
            state.answer_log.close()

    app = FastAPI(
        title="qpbot answer service",
        version="1",
        description="Hybrid retrieval over the promoted index and grounded answers with citations.",
        lifespan=lifespan,
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

    app.add_middleware(ObserveLatency)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if settings.api_token and authorization != f"Bearer {settings.api_token}":
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <QPBOT_API_TOKEN>'")

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return FileResponse(WEB_PAGE, media_type="text/html")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        retriever = request.app.state.retriever
        if retriever is None:
            return JSONResponse(
                status_code=503,
                content={"ready": False, "reason": request.app.state.not_ready_reason},
            )
        return JSONResponse({"ready": True, "index_version": retriever.promoted.label})

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    @app.post("/v1/search", response_model=SearchResponse, tags=["v1"])
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        retriever = _retriever(request)
        started = time.perf_counter()
        hits = await asyncio.to_thread(
            retriever.search, body.query, body.k, body.mode, _filters(body.filters)
        )
        retrieval_ms = _observe(request, "retrieval", started)
        return SearchResponse(
            hits=[Chunk(**_chunk_fields(hit)) for hit in hits],
            index_version=retriever.promoted.label,
            timings_ms={"retrieval": retrieval_ms},
        )

    @app.post("/v1/answer", response_model=AnswerResponse, tags=["v1"])
    async def answer(body: AnswerRequest, request: Request):
        retriever = _retriever(request)
        state = request.app.state
        started = time.perf_counter()
        hits = await asyncio.to_thread(
            retriever.search, body.query, body.k, body.mode, _filters(body.filters)
        )
        timings = {"retrieval": _observe(request, "retrieval", started)}
        sources = number_sources(hits, state.settings.answer_context_chars)
        citations = [_citation(number, hit) for number, hit in enumerate(hits[: len(sources)], 1)]
        more_sources = [_citation(None, hit) for hit in hits[len(sources) :]]
        record = {
            "answer_id": str(uuid.uuid4()),
            "query": body.query,
            "mode": body.mode,
            "retrieved": [
                {"chunk_id": h.chunk_id, "document_id": h.document_id, "score": h.score}
                for h in hits
            ],
            "prompt_version": PROMPT_VERSION,
            "model_version": state.generator.model_name,
            "index_version": retriever.promoted.label,
        }
        pieces = _generate(state, build_messages(body.query, sources), bool(sources))
        if body.stream:
            return StreamingResponse(
                _sse(request, pieces, citations, more_sources, record, timings),
                media_type="text/event-stream",
            )
        generation_started = time.perf_counter()
        text, error = await asyncio.to_thread(_collect, pieces)
        timings["generation"] = _observe(request, "generation", generation_started)
        return _finish(request, record, text, error, citations, more_sources, timings)

    @app.post("/v1/feedback", status_code=202, tags=["v1"], dependencies=[Depends(require_token)])
    async def feedback(body: FeedbackRequest, request: Request) -> dict:
        log: AnswerLog = request.app.state.answer_log
        if await asyncio.to_thread(log.answer_exists, body.answer_id) is False:
            raise NotFound(f"no answer with id {body.answer_id}")
        feedback_id = str(uuid.uuid4())
        log.record_feedback({"feedback_id": feedback_id, **body.model_dump()})
        request.app.state.metrics.feedback.labels(body.rating).inc()
        return {"feedback_id": feedback_id}

    @app.post("/v1/documents", status_code=201, tags=["v1"], dependencies=[Depends(require_token)])
    async def upload(request: Request, file: Annotated[UploadFile, File()]) -> dict:
        try:
            saved = await asyncio.to_thread(
                save_upload, settings, file.filename or "", file.file, settings.max_upload_mb
            )
        except ValueError as problem:
            kind = PayloadTooLarge if "larger than" in str(problem) else UnsupportedMediaType
            raise kind(str(problem)) from None
        return saved

    @app.get("/v1/documents/{document_id}", tags=["v1"])
    async def document(document_id: str) -> dict:
        if not re.fullmatch(r"[a-z0-9._-]{1,100}", document_id):
            raise BadRequest("document ids are lowercase letters, digits, '.', '_' and '-'")
        return await asyncio.to_thread(document_status, settings, document_id)

    @app.get("/v1/documents/{document_id}/content", tags=["v1"])
    async def document_content(document_id: str) -> FileResponse:
        if not re.fullmatch(r"[a-z0-9._-]{1,100}", document_id):
            raise BadRequest("document ids are lowercase letters, digits, '.', '_' and '-'")
        path, filename = await asyncio.to_thread(document_file, settings, document_id)
        # Inline, so a citation link opens the PDF at its page (#page=N) in the browser.
        return FileResponse(path, filename=filename, content_disposition_type="inline")

    return app


# --- helpers -------------------------------------------------------------------------------
def _retriever(request: Request) -> Retriever:
    retriever = request.app.state.retriever
    if retriever is None:
        raise IndexNotReady(request.app.state.not_ready_reason)
    return retriever


def _filters(filters: SearchFilters | None) -> dict | None:
    return filters.model_dump(exclude_none=True) if filters else None


class ObserveLatency:
    """Each request's latency per route, method and status, to the response's last byte.
    Plain ASGI: Starlette's `@app.middleware("http")` costs about a millisecond a request."""

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


def _chunk_fields(hit: SearchHit) -> dict:
    return {name: getattr(hit, name) for name in Chunk.model_fields}


def _citation(number: int | None, hit: SearchHit) -> Citation:
    fields = {name: getattr(hit, name) for name in Citation.model_fields if name != "number"}
    return Citation(number=number, **fields)


def _observe(request: Request, stage: str, started: float) -> float:
    seconds = time.perf_counter() - started
    request.app.state.metrics.stage_seconds.labels(stage).observe(seconds)
    return round(seconds * 1000, 1)


def _generate(state, messages: list[dict], have_sources: bool) -> Iterator[str]:
    """The answer's pieces; no sources means the fixed no-answer reply, no model call."""
    if not have_sources:
        return iter([NO_ANSWER])
    return state.generator.stream(messages, state.settings.answer_max_new_tokens)


def _collect(pieces: Iterator[str]) -> tuple[str | None, str | None]:
    try:
        return "".join(pieces).strip(), None
    except GeneratorUnavailable as problem:
        return None, f"the answer generator is unavailable: {problem}"


def _finish(request, record, text, error, citations, more_sources, timings) -> AnswerResponse:
    state = request.app.state
    if text:
        state.metrics.tokens.inc(len(text.split()))
    state.answer_log.record_answer(
        {**record, "answer": text, "error": error, "latency_ms": timings}
    )
    return AnswerResponse(
        answer_id=record["answer_id"],
        answer=text,
        error=error,
        citations=citations,
        more_sources=more_sources,
        timings_ms=timings,
        model_version=record["model_version"],
        index_version=record["index_version"],
        prompt_version=record["prompt_version"],
    )


async def _sse(request, pieces, citations, more_sources, record, timings) -> AsyncIterator[str]:
    """Server-sent events: `sources`, then `token`s, then `done` (or `error`)."""

    def event(name: str, data) -> str:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n"

    yield event("sources", [c.model_dump() for c in citations])
    started = time.perf_counter()
    text: list[str] = []
    error = None
    iterator = iter(pieces)
    sentinel = object()
    while True:
        try:
            piece = await asyncio.to_thread(next, iterator, sentinel)
        except GeneratorUnavailable as problem:
            error = f"the answer generator is unavailable: {problem}"
            yield event("error", {"error": error})
            break
        if piece is sentinel:
            break
        if not text:
            timings["first_token"] = round((time.perf_counter() - started) * 1000, 1)
        text.append(piece)
        yield event("token", piece)
    timings["generation"] = _observe(request, "generation", started)
    answer = "".join(text).strip() or None
    final = _finish(request, record, answer, error, citations, more_sources, timings)
    yield event("done", final.model_dump())


async def _refresh_index(app: FastAPI) -> None:
    """Opens the promoted index when it is new; in-flight requests keep the one they have."""
    state = app.state
    promoted = contract.read_promoted(state.settings.index_dir)
    current = state.retriever
    if promoted is None:
        state.not_ready_reason = "no promoted index yet: run `qpbot ingest PATH...`"
        return
    if current is not None and current.promoted == promoted:
        return
    embedder = (
        current.embedder
        if current and current.info.embedding_model == promoted.embedding_model
        else None
    )
    try:
        retriever = await asyncio.to_thread(Retriever.open, state.settings.index_dir, embedder)
        await asyncio.to_thread(retriever.search, "warm up", 1, "hybrid")  # loads the model now
    except IndexNotReady as problem:
        state.not_ready_reason = str(problem)
        return
    state.retriever = retriever
    state.metrics.set_index(promoted)


async def _watch_index(app: FastAPI) -> None:
    while True:
        await asyncio.sleep(INDEX_POLL_SECONDS)
        try:
            await _refresh_index(app)
        except Exception as problem:  # a bad new index must not take the service down
            app.state.not_ready_reason = f"could not open the new index: {type(problem).__name__}"
