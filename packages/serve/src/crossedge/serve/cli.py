"""``crossedge serve``: an OpenAI-compatible HTTP server for a model with speculative decoding."""

from __future__ import annotations

import click

from crossedge.core.backends import DEFAULT_BACKEND

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@click.command(name="serve")
@click.option("--model", "model_name", required=True, help="Target model (name, folder or hub id).")
@click.option(
    "--quant",
    "quant_spec",
    default=None,
    help="Quantize the target after loading, e.g. 'rtn:bits=4' (docs/specs.md).",
)
@click.option(
    "--backend",
    "backend_name",
    default=DEFAULT_BACKEND,
    show_default=True,
    help="Backend spec that runs the target; it must support KV-cached decoding.",
)
@click.option(
    "--drafter",
    "drafter_spec",
    default="copy",
    show_default=True,
    help="Drafter spec as in 'crossedge specdec generate'; 'none' for plain decoding.",
)
@click.option("--policy", default="cost-aware", show_default=True, help="Draft-length policy (a '@POLICY' wins).")
@click.option("--name", "served_name", default=None, help="Model id clients send (default: the --model value).")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind; 0.0.0.0 exposes the server.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--api-key",
    envvar="CROSSEDGE_SERVE_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on /v1 routes (or set CROSSEDGE_SERVE_API_KEY).",
)
@click.option(
    "--max-tokens-default",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Answer length when a request gives no max_tokens (never past the window).",
)
@click.option("--threads", "thread_count", type=click.IntRange(min=1), default=None, help="torch threads.")
def serve(
    model_name: str,
    quant_spec: str | None,
    backend_name: str,
    drafter_spec: str,
    policy: str,
    served_name: str | None,
    host: str,
    port: int,
    api_key: str | None,
    max_tokens_default: int,
    thread_count: int | None,
) -> None:
    """Serve a model over OpenAI's /v1/chat/completions and /v1/completions, one request at a time."""
    from .server import run_server  # fastapi, uvicorn and torch: only when the command runs

    run_server(
        model_name,
        quant=quant_spec,
        backend=backend_name,
        drafter=drafter_spec,
        policy=policy,
        name=served_name,
        host=host,
        port=port,
        api_key=api_key,
        default_max_tokens=max_tokens_default,
        threads=thread_count,
    )
