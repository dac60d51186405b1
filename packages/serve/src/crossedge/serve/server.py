"""Load a model and serve it with uvicorn, in the foreground or (for tests) on a background thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import click

from .app import build_app
from .service import DEFAULT_MAX_TOKENS, load_served_model


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
    api_key: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    threads: int | None = None,
) -> None:
    """Load ``model`` (quantized, on ``backend``, with ``drafter``) and serve it until interrupted."""
    import torch
    import uvicorn

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
    )
    window = served.window or "unbounded"
    click.echo(f"serving {served.name!r} (window {window}) on http://{host}:{port}/v1", err=True)
    uvicorn.run(build_app(served, api_key=api_key), host=host, port=port, log_level="info")


class BackgroundServer:
    """A uvicorn server on a thread: ``start`` returns once it listens, ``stop`` shuts it down."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
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

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self._thread.join(timeout)
