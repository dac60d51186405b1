"""What every request passes before the app sees it: the API key, the drain, the body's size and arrival time.

A plain ASGI middleware rather than FastAPI's ``@app.middleware("http")``: it reads the
body itself (so a huge body is refused before it is buffered whole, and a client that
sends it slowly is cut off), it sees when a streamed response really ends (so a drain
knows when the last request is done), and it counts every answer by status.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from .histories import ANONYMOUS
from .metrics import ServerMetrics
from .protocol import RequestError

#: Endpoints counted in ``/metrics``; anything else is counted as "other".
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
#: Largest request body accepted by default (a full 128k-token prompt as JSON fits).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Seconds a client has to send its whole request body by default.
DEFAULT_BODY_TIMEOUT = 30.0


class RequestGate:
    """ASGI middleware: API key, drain, body limits and per-status counting in front of the app.

    ``api_keys``: with any, every ``/v1`` request needs ``Authorization: Bearer KEY`` for one
    of them. ``draining``: once set (by :meth:`drain`), ``/v1`` requests get a 503 while the
    ones already in flight finish; :attr:`in_flight` says how many are left. The body of a
    ``/v1`` POST is read here, at most ``max_body_bytes`` (413 past it) within
    ``body_timeout`` seconds (408 after), and handed to the app whole.
    """

    def __init__(
        self,
        app: Any = None,
        *,
        metrics: ServerMetrics,
        api_keys: Sequence[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ):
        self.app = app
        self.metrics = metrics
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.draining = False
        self.in_flight = 0

    def wrap(self, app: Any) -> RequestGate:
        """Put the gate in front of ``app`` (for Starlette's ``add_middleware``, which builds the stack later)."""
        self.app = app
        return self

    def drain(self) -> None:
        """Refuse new ``/v1`` requests from now on; those in flight go on."""
        self.draining = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = 500  # what an exception in the app becomes

        async def counted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight += 1
        try:
            if path.startswith("/v1/"):
                try:
                    self._admit(scope)
                    if scope["method"] == "POST":
                        body = await self._read_body(scope, receive)
                        if body is None:  # the client left before its body arrived: nobody to answer
                            status = 499
                            return
                        receive = _replay(body, receive)
                except RequestError as exc:
                    await _send_error(exc, counted)
                    return
            await self.app(scope, receive, counted)
        finally:
            self.in_flight -= 1
            self.metrics.request_done(path if path in ENDPOINTS else "other", status)

    def _admit(self, scope: dict[str, Any]) -> None:
        if self.draining:
            raise RequestError(
                "the server is shutting down and takes no new requests: retry once it is back, or use another one",
                status=503,
                code="server_shutting_down",
            )
        if not self.api_keys:
            return
        given = _bearer(scope)
        if given is None:
            raise RequestError(
                "missing API key: send it as 'Authorization: Bearer KEY'", status=401, code="invalid_api_key"
            )
        # Compare with every key, so the time taken says nothing about which one nearly matched.
        if not any([hmac.compare_digest(given.encode(), key) for key in self.api_keys]):
            raise RequestError("incorrect API key", status=401, code="invalid_api_key")

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise RequestError(
                    f"the request body did not arrive within {self.body_timeout:g} s: send the whole body at once",
                    status=408,
                    code="request_timeout",
                ) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit, at_least=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def history_user(scope: dict[str, Any], api_keys: Sequence[str], user: str | None) -> str:
    """Whose drafter history serves a request: the API key (and ``user`` within it) when keys are in use, else ``user``.

    With keys, a holder can split its own pool by ``user`` but never reach another key's;
    the key is kept as a hash so the table of histories holds no secret.
    """
    if api_keys:
        given = _bearer(scope) or ""
        digest = hashlib.sha256(given.encode()).hexdigest()[:16]
        return f"key:{digest}" + (f"/user:{user}" if user else "")
    return f"user:{user}" if user else ANONYMOUS


def _too_large(size: int, limit: int, *, at_least: bool = False) -> RequestError:
    amount = f"over {limit} bytes" if at_least else f"{size} bytes"
    return RequestError(
        f"the request body is {amount}, more than this server accepts ({limit} bytes, --max-body-bytes): "
        "send a shorter prompt or ask the operator to raise the limit",
        status=413,
        code="request_too_large",
    )


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _bearer(scope: dict[str, Any]) -> str | None:
    scheme, _, given = (_header(scope, b"authorization") or "").partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the app the body already read, then whatever the client does next."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(exc: RequestError, send: Any) -> None:
    body = json.dumps(exc.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if exc.status in (408, 413):
        # The rest of the body may still be on its way; the connection cannot carry another request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
