"""The FastAPI app: OpenAI-compatible completions, models, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .gate import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, RequestGate, history_user
from .metrics import ServerMetrics
from .protocol import GenerationRequest, RequestError, parse_request
from .service import Job, Piece, ServedModel, make_worker

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _server_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _json(body: bytes) -> Any:
    """The parsed body; anything but UTF-8 JSON is a :class:`RequestError` saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at position {exc.start}): "
            "send JSON encoded as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError("the request body nests JSON too deeply: send a flat OpenAI request object") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise RequestError(f"the request body is not JSON ({exc}): send one JSON object") from None


async def _watch_disconnect(receive: Any, job: Job) -> None:
    """Cancel ``job`` as soon as its client goes away, even while the job still waits in the queue."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancelled.set()
            return


class JobStream(StreamingResponse):
    """A streamed answer that cancels its job when the client leaves or the stream ends in any other way."""

    def __init__(self, content: Any, job: Job):
        super().__init__(content, media_type="text/event-stream")
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        watcher = asyncio.ensure_future(_watch_disconnect(receive, self.job))
        try:
            await super().__call__(scope, receive, send)
        finally:
            watcher.cancel()
            self.job.cancelled.set()


def build_app(
    served: ServedModel,
    *,
    api_key: str | Sequence[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> FastAPI:
    """The app serving ``served``.

    With ``api_key`` (one key or several), every ``/v1`` route needs ``Authorization: Bearer
    KEY``; request bodies past ``max_body_bytes`` get a 413 and bodies slower than
    ``body_timeout`` seconds a 408. ``app.state.gate.drain()`` starts refusing new requests
    (see :class:`~crossedge.serve.server.DrainingServer`).
    """
    api_keys = (api_key,) if isinstance(api_key, str) else tuple(api_key or ())
    metrics = ServerMetrics()
    worker = make_worker(served, metrics)
    gate = RequestGate(metrics=metrics, api_keys=api_keys, max_body_bytes=max_body_bytes, body_timeout=body_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="crossedge serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(gate.wrap)
    app.state.metrics = metrics
    app.state.served = served
    app.state.gate = gate
    created = int(time.time())

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log; the client gets one line.
        message = f"the server failed on this request ({type(exc).__name__}: {exc}); see the server's log"
        return JSONResponse(_server_error(message), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        # A 503 while draining takes the server out of a load balancer's rotation.
        status = "draining" if gate.draining else "ok"
        return JSONResponse({"status": status, "model": served.name}, status_code=503 if gate.draining else 200)

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
            parsed = parse_request(_json(await request.body()), chat=chat)
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

        user = history_user(request.scope, api_keys, parsed.user)
        job = Job(parsed, prompt_ids, max_tokens, emit, user=user)
        worker.submit(job)
        answer = Answer(parsed, served.name, chat=chat)
        if parsed.stream:
            return JobStream(answer.events(pieces), job)
        watcher = asyncio.ensure_future(_watch_disconnect(request.receive, job))
        try:
            texts = []
            while True:
                piece = await pieces.get()
                if piece.error is not None:
                    return JSONResponse(_server_error(piece.error), status_code=500)
                texts.append(piece.text)
                if piece.finish_reason is not None:
                    return JSONResponse(answer.whole("".join(texts), piece))
        finally:
            watcher.cancel()
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

    async def events(self, pieces: asyncio.Queue[Piece]) -> AsyncIterator[str]:
        """Server-sent events: a chunk per piece of text, a last chunk with the finish reason, then ``[DONE]``."""
        if self.chat:
            yield self._chunk(None, None, first=True)
        while True:
            piece = await pieces.get()
            if piece.error is not None:
                yield _sse(_server_error(piece.error))
                break
            if piece.text:
                yield self._chunk(piece.text, None)
            if piece.finish_reason is not None:
                yield self._chunk(None, piece.finish_reason)
                if self.request.include_usage:
                    yield _sse({**self._head(chunk=True), "choices": [], "usage": self._usage(piece)})
                break
        yield "data: [DONE]\n\n"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
