"""The FastAPI app: OpenAI-compatible completions, models, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .metrics import ServerMetrics
from .protocol import GenerationRequest, RequestError, parse_request
from .service import Job, Piece, ServedModel, Worker

#: Endpoints counted in ``/metrics``; anything else is counted as "other".
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _error(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise RequestError(
            "missing API key: send it as 'Authorization: Bearer KEY'", status=401, code="invalid_api_key"
        )
    if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise RequestError("incorrect API key", status=401, code="invalid_api_key")


def build_app(served: ServedModel, *, api_key: str | None = None) -> FastAPI:
    """The app serving ``served``; with ``api_key`` set, every ``/v1`` route needs ``Authorization: Bearer KEY``."""
    metrics = ServerMetrics()
    worker = Worker(served, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="crossedge serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.state.served = served
    created = int(time.time())

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        path = request.url.path
        try:
            if path.startswith("/v1/"):
                _check_key(request, api_key)
            response = await call_next(request)
        except RequestError as exc:
            response = _error(exc)
        metrics.request_done(path if path in ENDPOINTS else "other", response.status_code)
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=PROMETHEUS_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": served.name, "object": "model", "created": created, "owned_by": "crossedge"}],
        }

    async def generate(request: Request, *, chat: bool) -> Response:
        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"the request body is not JSON: {exc}") from exc
            parsed = parse_request(body, chat=chat)
            if parsed.model != served.name:
                raise RequestError(
                    f"model {parsed.model!r} is not served here; this server serves {served.name!r}",
                    param="model",
                    status=404,
                    code="model_not_found",
                )
            prompt_ids = served.encode(parsed)
            max_tokens = served.budget(parsed, prompt_ids)
        except RequestError as exc:
            return _error(exc)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Piece] = asyncio.Queue()

        def emit(piece: Piece) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except RuntimeError:  # the event loop is gone: the server is shutting down
                job.cancelled.set()

        job = Job(parsed, prompt_ids, max_tokens, emit)
        worker.submit(job)
        answer = Answer(parsed, served.name, chat=chat)
        if parsed.stream:
            return StreamingResponse(answer.events(pieces, job), media_type="text/event-stream")
        try:
            texts = []
            while True:
                piece = await pieces.get()
                if piece.error is not None:
                    return JSONResponse(
                        {"error": {"message": piece.error, "type": "server_error", "param": None, "code": None}},
                        status_code=500,
                    )
                texts.append(piece.text)
                if piece.finish_reason is not None:
                    return JSONResponse(answer.whole("".join(texts), piece))
        finally:
            job.cancelled.set()  # a client that went away stops its generation

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    return app


class Answer:
    """The response bodies of one request, in OpenAI's chat or text-completion shape."""

    def __init__(self, request: GenerationRequest, model: str, *, chat: bool):
        self.request = request
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, *, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def _usage(piece: Piece) -> dict[str, int]:
        return {
            "prompt_tokens": piece.prompt_tokens,
            "completion_tokens": piece.completion_tokens,
            "total_tokens": piece.prompt_tokens + piece.completion_tokens,
        }

    def whole(self, text: str, last: Piece) -> dict[str, Any]:
        """The non-streaming body."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = last.finish_reason
        return {**self._head(chunk=False), "choices": [choice], "usage": self._usage(last)}

    def _chunk(self, text: str | None, finish_reason: str | None, *, first: bool = False) -> str:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return _sse({**self._head(chunk=True), "choices": [choice]})

    async def events(self, pieces: asyncio.Queue[Piece], job: Job) -> AsyncIterator[str]:
        """Server-sent events: a chunk per piece of text, a last chunk with the finish reason, then ``[DONE]``."""
        try:
            if self.chat:
                yield self._chunk(None, None, first=True)
            while True:
                piece = await pieces.get()
                if piece.error is not None:
                    yield _sse({"error": {"message": piece.error, "type": "server_error", "param": None, "code": None}})
                    break
                if piece.text:
                    yield self._chunk(piece.text, None)
                if piece.finish_reason is not None:
                    yield self._chunk(None, piece.finish_reason)
                    if self.request.include_usage:
                        yield _sse({**self._head(chunk=True), "choices": [], "usage": self._usage(piece)})
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # a client that went away stops its generation


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
