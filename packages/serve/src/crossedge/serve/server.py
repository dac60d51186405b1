"""Load a model and serve it with uvicorn, in the foreground or (for tests) on a background thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import click
import uvicorn

from .app import build_app
from .gate import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, RequestGate
from .histories import DEFAULT_HISTORY_TOKENS, DEFAULT_HISTORY_USERS
from .service import DEFAULT_MAX_TOKENS, load_served_model

logger = logging.getLogger("uvicorn.error")


def run_server(
    model: str,
    *,
    quant: str | None = None,
    backend: str | None = None,
    drafter: str = "copy",
    policy: str = "cost-aware",
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | Sequence[str] | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    threads: int | None = None,
    history_users: int = DEFAULT_HISTORY_USERS,
    history_tokens: int = DEFAULT_HISTORY_TOKENS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_batch: int = 1,
    memory_budget: int | None = None,
) -> None:
    """Load ``model`` (quantized, on ``backend``, with ``drafter``) and serve it until Ctrl-C or SIGTERM drains it."""
    import torch

    from crossedge.core.errors import CrossedgeError

    if threads is not None:
        torch.set_num_threads(threads)
    click.echo(f"loading {model} ...", err=True)
    served = load_served_model(
        model,
        quant=quant,
        backend=backend,
        drafter=drafter,
        policy=policy,
        name=name,
        default_max_tokens=default_max_tokens,
        history_users=history_users,
        history_tokens=history_tokens,
        max_batch=max_batch,
        memory_budget=memory_budget,
    )
    window = served.window or "unbounded"
    click.echo(f"serving {served.name!r} (window {window}) on http://{host}:{port}/v1", err=True)
    app = build_app(served, api_key=api_key, max_body_bytes=max_body_bytes, body_timeout=body_timeout)
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="info"))
    server.run()
    if server.force_exit and server.unfinished:
        raise CrossedgeError(
            f"stopped at a second Ctrl-C with {server.unfinished} request(s) unfinished; "
            "press Ctrl-C once to let them finish"
        )


class DrainingServer(uvicorn.Server):
    """uvicorn that drains: on Ctrl-C or SIGTERM, requests in flight finish, new ones get a 503, then it exits.

    uvicorn on its own stops accepting connections at once and, after shutting down,
    raises the signal again, so the process ends with 130 or -15; a drained server has
    done its job and returns normally (exit status 0). A second Ctrl-C stops at once.
    """

    def __init__(self, config: Any):
        super().__init__(config)
        self.unfinished = 0

    @property
    def gate(self) -> RequestGate:
        """The app's request gate (``app.state.gate``)."""
        return self.config.app.state.gate

    def drain(self) -> None:
        """Refuse new requests and exit once those in flight are done."""
        if not self.gate.draining and self.gate.in_flight:
            logger.warning(
                "draining: %d request(s) in flight finish, new ones get a 503; press Ctrl-C again to stop at once",
                self.gate.in_flight,
            )
        elif not self.gate.draining:
            logger.warning("draining: no request in flight, stopping")
        self.gate.drain()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal drains, a second one stops now (the signal is not raised again afterwards)."""
        if self.gate.draining:
            self.unfinished = self.gate.in_flight
            self.force_exit = True
            self.should_exit = True
            return
        self.drain()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn asks this every 0.1 s whether to shut down."""
        if self.gate.draining and self.gate.in_flight == 0:
            return True
        return await super().on_tick(counter)


class BackgroundServer:
    """A draining uvicorn server on a thread: ``start`` returns once it listens, ``stop`` shuts it down."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = DrainingServer(config)
        self.app = app
        self.host = host
        self._thread = threading.Thread(target=self.server.run, name="crossedge-serve-http", daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on (the one the OS chose for port 0)."""
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start serving; raise RuntimeError when it does not come up within ``timeout`` seconds."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.host} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def drain(self) -> None:
        """Refuse new requests; the server stops by itself once those in flight are done (``stop`` waits for it)."""
        self.server.drain()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self._thread.join(timeout)
