"""The OpenAI request bodies the server accepts, checked field by field before any decoding.

Pure Python (no torch, no web framework) so the rules are testable on their own. A field
the server does not know, or a value out of range, is a :class:`RequestError` naming the
field; the app turns it into a 400 with an OpenAI-style error body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Fields both endpoints accept, beyond their prompt field.
COMMON_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "stream_options",
        "user",
        "frequency_penalty",
        "presence_penalty",
    }
)
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"}
ROLES = ("system", "user", "assistant")
#: OpenAI's own limits.
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4


class RequestError(Exception):
    """A request the server refuses: the HTTP status, a message a user can act on, and the field at fault."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        """The error as OpenAI's API returns one."""
        kind = {401: "authentication_error", 503: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """One checked request: the prompt (chat messages or text) and how to sample its answer."""

    model: str
    #: chat messages as ``{"role", "content"}`` with string content, or None for a text completion
    messages: list[dict[str, str]] | None
    prompt: str | None
    #: None: as many as the window allows, up to the server's default
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    #: OpenAI's end-user id; the server keeps one drafter history per user (docs/serve.md)
    user: str | None = None


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, *, open_low: bool) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number, got {value!r}", param=name)
    below = value <= low if open_low else value < low
    if below or value > high:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise RequestError(f"{name} must be in {bounds}, got {value!r}", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, *, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", param=name)
    if low is not None and value < low:
        raise RequestError(f"{name} must be at least {low}, got {value}", param=name)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop must be a non-empty string or a list of them, got {value!r}", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise RequestError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", param="stop")
    return tuple(stops)


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    # The newer list form: only text parts can be served by a text model.
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(
                    f"{where}.content[{i}] must be a text part {{'type': 'text', 'text': ...}}; "
                    "this server serves text models only",
                    param=f"{where}.content",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where}.content must be a string, got {content!r}", param=f"{where}.content")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {'role', 'content'} objects", param="messages")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with role and content", param=where)
        unknown = sorted(set(message) - {"role", "content", "name"})
        if unknown:
            raise RequestError(f"{where} has unsupported fields {', '.join(unknown)}", param=f"{where}.{unknown[0]}")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role")
        checked.append({"role": role, "content": _content(message, where)})
    if checked[-1]["role"] == "assistant":
        raise RequestError("the last message must not be the assistant's: there is nothing to answer", param="messages")
    return checked


def parse_request(body: Any, *, chat: bool) -> GenerationRequest:
    """Check a ``/v1/chat/completions`` (``chat``) or ``/v1/completions`` body; raise :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(
            f"unknown or unsupported parameter {unknown[0]!r}; this server takes {', '.join(sorted(allowed))}",
            param=unknown[0],
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model must name the served model (see /v1/models)", param="model")
    n = _integer(body, "n")
    if n not in (None, 1):
        raise RequestError(f"n must be 1 (one answer per request), got {n}", param="n")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise RequestError(f"{name} is not supported: leave it out or send 0", param=name)
    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, max_name, low=1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise RequestError("stream_options takes only include_usage", param="stream_options")
    include_usage = bool((options or {}).get("include_usage", False))
    if options is not None and not stream:
        raise RequestError("stream_options is only allowed with stream: true", param="stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(f"user must be a string identifying the end user, got {user!r}", param="user")
    if chat:
        messages, prompt = _messages(body), None
    else:
        messages, prompt = None, body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("prompt must be a non-empty string (one prompt per request)", param="prompt")
    return GenerationRequest(
        model=model,
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE, open_low=False),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        stop=_stop(body),
        seed=_integer(body, "seed"),
        stream=stream,
        include_usage=include_usage,
        user=user or None,
    )


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could start a stop sequence, so streaming must not send them yet."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop sequence starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
