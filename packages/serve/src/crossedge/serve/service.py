"""The served model and the one worker thread that decodes requests, one at a time, in arrival order.

Requests are checked and tokenized on the web server's side, then queued; the worker runs
specdec's :class:`SpeculativeDecoder` on each and hands text back piece by piece through a
callback, so streaming and non-streaming answers come from the same loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .histories import ANONYMOUS, DEFAULT_HISTORY_TOKENS, DEFAULT_HISTORY_USERS, UserHistories
from .metrics import ServerMetrics
from .protocol import GenerationRequest, RequestError, first_stop, held_back

#: Tokens an answer may take when the request gives no max_tokens (fewer where the window ends sooner).
DEFAULT_MAX_TOKENS = 256
REPLACEMENT = "\ufffd"


@dataclass
class Piece:
    """What the worker reports: a piece of text, or the end of the answer (with why it ended), or an error."""

    text: str = ""
    #: "stop" or "length" on the last piece; None before
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Job:
    """One queued request: its prompt ids, its token budget and where its pieces go."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[Piece], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: whose drafter history serves this request (see :mod:`crossedge.serve.histories`)
    user: str = ANONYMOUS


class ServedModel:
    """A target, its tokenizer and the decoder that serves it under one name, with one drafter history per user."""

    def __init__(
        self,
        decoder: Any,
        tokenizer: Any,
        name: str,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        history_users: int = DEFAULT_HISTORY_USERS,
        history_tokens: int = DEFAULT_HISTORY_TOKENS,
    ):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.name = name
        self.default_max_tokens = default_max_tokens
        self.window: int | None = decoder.window
        self.histories = UserHistories(decoder, max_users=history_users, max_tokens=history_tokens)

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: chat messages through the chat template, a completion prompt as plain text."""
        from crossedge.core.sources import encode_prompt

        if request.prompt is not None:
            ids = encode_prompt(self.tokenizer, request.prompt, chat=False)
        elif len(request.messages) == 1 and request.messages[0]["role"] == "user":
            # Exactly what `crossedge specdec generate PROMPT` feeds the model.
            ids = encode_prompt(self.tokenizer, request.messages[0]["content"])
        else:
            from crossedge.specdec.bench import encode_chat

            ids = encode_chat(self.tokenizer, request.messages)
        return [int(t) for t in ids[0].tolist()]

    def budget(self, request: GenerationRequest, prompt_ids: list[int]) -> int:
        """The answer's token budget; a prompt or max_tokens that does not fit the window is a :class:`RequestError`."""
        field_name = "prompt" if request.prompt is not None else "messages"
        if not prompt_ids:
            raise RequestError("the prompt encodes to no tokens", param=field_name)
        if self.window is None:
            return request.max_tokens or self.default_max_tokens
        room = self.window - len(prompt_ids)
        if room < 1:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens but the model's context window is {self.window} tokens: "
                f"shorten it to at most {self.window - 1} tokens",
                param=field_name,
                code="context_length_exceeded",
            )
        if request.max_tokens is None:
            return min(self.default_max_tokens, room)
        if request.max_tokens > room:
            raise RequestError(
                f"max_tokens is {request.max_tokens} but the model's context window is {self.window} tokens and the "
                f"prompt takes {len(prompt_ids)}: ask for at most {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return request.max_tokens

    def run(self, job: Job, metrics: ServerMetrics) -> None:
        """Decode one job, reporting text as it becomes final and a last piece saying why it ended."""
        from crossedge.specdec.sampling import SamplingConfig

        request = job.request
        self.histories.use(job.user)
        sampling = SamplingConfig(temperature=request.temperature, top_p=request.top_p, seed=request.seed)
        stream = self.decoder.stream(job.prompt_ids, job.max_tokens, sampling)
        stops = request.stop
        shown = ""
        finish = None
        for _ in stream:
            if job.cancelled.is_set():
                finish = "cancelled"
                break
            text = self.tokenizer.decode(stream.tokens, skip_special_tokens=True)
            cut = first_stop(text, stops)
            if cut is not None:
                text, finish = text[:cut], "stop"
            else:
                # Text that may still become a stop sequence or a multi-byte character is sent later.
                text = text[: len(text) - held_back(text, stops)].rstrip(REPLACEMENT)
            if len(text) > len(shown) and text.startswith(shown):
                job.emit(Piece(text=text[len(shown) :]))
                shown = text
            if finish is not None:
                break
        stats = stream.stats
        if finish is None:
            finish = "stop" if stats.stop_reason == "eos" else "length"
            text = self.tokenizer.decode(stream.tokens, skip_special_tokens=True)
            if text.startswith(shown) and len(text) > len(shown):
                job.emit(Piece(text=text[len(shown) :]))
        metrics.generation_done(stats.prompt_tokens, stats.new_tokens, stats.seconds, stats.target_forwards, finish)
        job.emit(Piece(finish_reason=finish, prompt_tokens=stats.prompt_tokens, completion_tokens=len(stream.tokens)))


class Worker:
    """One thread that decodes queued jobs one at a time; ``stop`` ends it after the current job."""

    def __init__(self, served: ServedModel, metrics: ServerMetrics):
        self.served = served
        self.metrics = metrics
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._loop, name="crossedge-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to end and wait for it."""
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job; its pieces arrive through ``job.emit``."""
        self.metrics.queue(+1)
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self.metrics.queue(-1)
            if job.cancelled.is_set():  # its client left while it waited
                self.metrics.generation_done(0, 0, 0.0, 0, "cancelled")
                job.emit(Piece(finish_reason="cancelled"))
                continue
            self.metrics.run(+1)
            try:
                self.served.run(job, self.metrics)
            except Exception as exc:  # one broken request must not stop the server
                self.metrics.generation_done(0, 0, 0.0, 0, "error")
                job.emit(Piece(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
            finally:
                self.metrics.run(-1)


def load_served_model(
    model: str,
    *,
    quant: str | None = None,
    backend: str | None = None,
    drafter: str = "copy",
    policy: str = "cost-aware",
    name: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    history_users: int = DEFAULT_HISTORY_USERS,
    history_tokens: int = DEFAULT_HISTORY_TOKENS,
) -> ServedModel:
    """Check and build the stack exactly as ``crossedge specdec generate`` does, and wrap it for serving."""
    from crossedge.core.backends import DEFAULT_BACKEND
    from crossedge.core.compose import build_stack
    from crossedge.specdec.bench import check_target
    from crossedge.specdec.engine import SpeculativeDecoder

    stack = check_target(
        model, quant=quant, backend=backend or DEFAULT_BACKEND, drafters=[drafter], policy=policy, purpose="serve"
    )
    built = build_stack(stack)
    decoder = SpeculativeDecoder(built.model, drafter, policy, tokenizer=built.tokenizer)
    return ServedModel(
        decoder,
        built.tokenizer,
        name or model,
        default_max_tokens=default_max_tokens,
        history_users=history_users,
        history_tokens=history_tokens,
    )
