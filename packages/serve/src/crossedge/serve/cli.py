"""``crossedge serve``: an OpenAI-compatible HTTP server for a model with speculative decoding."""

from __future__ import annotations

import click

from crossedge.core.backends import DEFAULT_BACKEND

# Both modules are plain Python: `crossedge --help` still imports neither the web stack nor torch.
from .gate import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from .histories import DEFAULT_HISTORY_TOKENS, DEFAULT_HISTORY_USERS

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
    "api_keys",
    envvar="CROSSEDGE_SERVE_API_KEY",
    multiple=True,
    help="Require 'Authorization: Bearer KEY' on /v1 routes; repeat for one key per user "
    "(or set CROSSEDGE_SERVE_API_KEY, keys separated by spaces).",
)
@click.option(
    "--max-tokens-default",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Answer length when a request gives no max_tokens (never past the window).",
)
@click.option("--threads", "thread_count", type=click.IntRange(min=1), default=None, help="torch threads.")
@click.option(
    "--history-users",
    type=click.IntRange(min=1),
    default=DEFAULT_HISTORY_USERS,
    show_default=True,
    help="Users whose 'history' drafter cache is kept (one per API key or 'user' field); "
    "the least recently served is forgotten first.",
)
@click.option(
    "--history-tokens",
    type=click.IntRange(min=2),
    default=DEFAULT_HISTORY_TOKENS,
    show_default=True,
    help="Tokens each user's history keeps (about 400 bytes each); a smaller history:max_tokens wins.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    help="Larger request bodies get a 413.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_TIMEOUT,
    show_default=True,
    help="Seconds a client has to send its request body; slower ones get a 408.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Requests decoded together (continuous batching, lossless per request); 1 decodes one at a time.",
)
@click.option(
    "--memory-budget",
    type=click.IntRange(min=1),
    default=None,
    help="Bytes of KV cache the batch may hold; requests wait until they fit and drafts shrink to fit "
    "(uses the batched decoder, even with --max-batch 1).",
)
def serve(
    model_name: str,
    quant_spec: str | None,
    backend_name: str,
    drafter_spec: str,
    policy: str,
    served_name: str | None,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    max_tokens_default: int,
    thread_count: int | None,
    history_users: int,
    history_tokens: int,
    max_body_bytes: int,
    body_timeout: float,
    max_batch: int,
    memory_budget: int | None,
) -> None:
    """Serve a model over OpenAI's /v1/chat/completions and /v1/completions (one request at a time,
    or --max-batch requests together).

    Ctrl-C or SIGTERM drains: requests in flight finish, new ones get a 503, then the
    command exits 0; a second Ctrl-C stops at once.
    """
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
        api_key=api_keys or None,
        default_max_tokens=max_tokens_default,
        threads=thread_count,
        history_users=history_users,
        history_tokens=history_tokens,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        max_batch=max_batch,
        memory_budget=memory_budget,
    )
