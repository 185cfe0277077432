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
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Header, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StringConstraints

from qpbot_serving import index as contract
from qpbot_serving.answer_log import AnswerLog
from qpbot_serving.answering import Answerer, AnswerPolicy, FinishedAnswer, PreparedAnswer
from qpbot_serving.documents import DocumentNotFound, document_file, document_status, save_upload
from qpbot_serving.generation import (
    DeadlinePassed,
    Generator,
    GeneratorUnavailable,
    LocalGenerator,
    build_generator,
)
from qpbot_serving.metrics import ServiceMetrics
from qpbot_serving.prompting import PROMPT_VERSION
from qpbot_serving.retrieval import IndexNotReady, Retriever, SearchHit
from qpbot_serving.settings import QpbotSettings

INDEX_POLL_SECONDS = 2.0
WEB_PAGE = Path(__file__).parent / "web" / "index.html"
# Generation has threads of its own: a slow or hanging generator must not take the threads
# of the event loop's default pool, which searches run on.
GENERATION_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qpbot-generation")
CLIENT_GONE = "the client went away"  # the guard's stop reason when a client hangs up
# A query must hold more than whitespace.
QueryText = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"\S")]


# --- request and response models ---------------------------------------------------------
class SearchFilters(BaseModel):
    document_id: str | None = None
    document_ids: list[str] | None = None
    format: str | None = None
    language: str | None = None
    author: str | None = None
    title: str | None = None


class SearchRequest(BaseModel):
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
    page_start: int | None
    page_end: int | None
    score: float


class Evidence(BaseModel):
    """A unit of a source the prompt showed: a sentence, list item or table row."""

    number: int  # the citation number of its source ([n] in the answer)
    chunk_id: str
    document_id: str
    title: str | None
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

    @app.post("/v1/answer", response_model=AnswerResponse, tags=["v1"])
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
                # The generators keep the deadline; this is the backstop if one does not.
                left = self.prepared.deadline - time.monotonic() + 1.0
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
