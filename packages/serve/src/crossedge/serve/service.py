"""The served model and the one worker thread that decodes requests.

Requests are checked and tokenized on the web server's side, then queued; the worker runs
specdec's :class:`SpeculativeDecoder` on each, one at a time in arrival order, and hands
text back piece by piece through a callback, so streaming and non-streaming answers come
from the same loop. With ``max_batch > 1`` (``crossedge serve --max-batch N``) the
:class:`BatchedWorker` decodes up to N requests together with specdec's
:class:`BatchedSpeculativeDecoder` (continuous batching: requests join and leave between
steps), inside ``memory_budget`` bytes of KV cache when one is given.
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
        batched: Any = None,
    ):
        self.decoder = decoder
        #: a :class:`BatchedSpeculativeDecoder` over the same model when requests are batched, else None
        self.batched = batched
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

    def sampling(self, request: GenerationRequest) -> Any:
        """The request's :class:`SamplingConfig`."""
        from crossedge.specdec.sampling import SamplingConfig

        return SamplingConfig(temperature=request.temperature, top_p=request.top_p, seed=request.seed)

    def run(self, job: Job, metrics: ServerMetrics) -> None:
        """Decode one job, reporting text as it becomes final and a last piece saying why it ended."""
        self.histories.use(job.user)
        stream = self.decoder.stream(job.prompt_ids, job.max_tokens, self.sampling(job.request))
        follower = TextFollower(job, self.tokenizer)
        for _ in stream:
            if job.cancelled.is_set():
                follower.finish = "cancelled"
                break
            if follower.update(stream.tokens):
                break
        follower.close(stream.stats, stream.tokens, metrics)


class TextFollower:
    """Turns one answer's tokens so far into the pieces its client may see: stop sequences cut it, text
    that may still become a stop sequence or a multi-byte character waits."""

    def __init__(self, job: Job, tokenizer: Any):
        self.job = job
        self.tokenizer = tokenizer
        self.shown = ""
        #: why the answer ended when the server ended it (``stop``, ``cancelled``), else None
        self.finish: str | None = None

    def update(self, tokens: list[int]) -> bool:
        """Emit what became final after ``tokens``; True when a stop sequence ended the answer."""
        stops = self.job.request.stop
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = first_stop(text, stops)
        if cut is not None:
            text, self.finish = text[:cut], "stop"
        else:
            text = text[: len(text) - held_back(text, stops)].rstrip(REPLACEMENT)
        if len(text) > len(self.shown) and text.startswith(self.shown):
            self.job.emit(Piece(text=text[len(self.shown) :]))
            self.shown = text
        return self.finish is not None

    def close(self, stats: Any, tokens: list[int], metrics: ServerMetrics) -> None:
        """Emit the rest of the text (when the decoder ended the answer) and the last piece; count it."""
        finish = self.finish
        if finish is None:
            finish = "stop" if stats.stop_reason == "eos" else "length"
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if text.startswith(self.shown) and len(text) > len(self.shown):
                self.job.emit(Piece(text=text[len(self.shown) :]))
        metrics.generation_done(stats.prompt_tokens, stats.new_tokens, stats.seconds, stats.target_forwards, finish)
        self.job.emit(Piece(finish_reason=finish, prompt_tokens=stats.prompt_tokens, completion_tokens=len(tokens)))


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


class BatchedWorker(Worker):
    """One thread that decodes up to ``max_batch`` jobs together; ``stop`` ends it after the jobs in flight.

    Between two batched steps it takes every queued job (a job whose client left is answered
    ``cancelled`` at once), cancels the rows of clients that went away, and sends each row's
    new text. A step that fails ends every job in flight with an error and starts afresh.
    """

    def __init__(self, served: ServedModel, metrics: ServerMetrics):
        super().__init__(served, metrics)
        if served.batched is None:
            raise ValueError("BatchedWorker needs a ServedModel with a batched decoder (max_batch > 1)")
        self.decoder = served.batched
        metrics.batch = self.decoder.counters

    def _take(self, active: dict[Any, tuple[Job, TextFollower]], block: bool) -> bool:
        """Move queued jobs into the decoder; False once ``stop`` was asked."""
        while True:
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return True
            block = False
            if job is None:
                return False
            self.metrics.queue(-1)
            if job.cancelled.is_set():
                self.metrics.generation_done(0, 0, 0.0, 0, "cancelled")
                job.emit(Piece(finish_reason="cancelled"))
                continue
            try:
                handle = self.decoder.submit(
                    job.prompt_ids,
                    job.max_tokens,
                    self.served.sampling(job.request),
                    own_drafters=self.served.histories.sharing(job.user),
                )
            except Exception as exc:  # a request the budget can never hold, for one
                self.metrics.generation_done(0, 0, 0.0, 0, "error")
                job.emit(Piece(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
                continue
            self.metrics.run(+1)
            active[handle] = (job, TextFollower(job, self.served.tokenizer))

    def _loop(self) -> None:
        active: dict[Any, tuple[Job, TextFollower]] = {}
        running = True
        while running or active:
            if running:
                running = self._take(active, block=not active and not self.decoder.active)
            for handle, (job, follower) in active.items():
                if job.cancelled.is_set() and follower.finish is None:
                    handle.cancel()
                    follower.finish = "cancelled"
            if self.decoder.active:
                try:
                    new = self.decoder.step()
                except Exception as exc:  # one broken step must not stop the server
                    self.decoder.reset()
                    for job, _ in active.values():
                        self.metrics.generation_done(0, 0, 0.0, 0, "error")
                        job.emit(Piece(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
                        self.metrics.run(-1)
                    active.clear()
                    continue
            else:
                new = {}
            for handle in list(active):
                job, follower = active[handle]
                tokens = handle.tokens
                count = len(tokens)
                if follower.finish is None and handle in new:
                    # Token by token, as the one-at-a-time worker does, so a stop sequence cuts the same place.
                    for count in range(len(tokens) - len(new[handle]) + 1, len(tokens) + 1):
                        if follower.update(tokens[:count]):
                            handle.cancel()
                            break
                if follower.finish is not None or handle.done:
                    follower.close(handle.stats, tokens[:count], self.metrics)
                    self.metrics.run(-1)
                    del active[handle]


def make_worker(served: ServedModel, metrics: ServerMetrics) -> Worker:
    """The worker ``served`` asks for: batched when it has a batched decoder, else one job at a time."""
    return BatchedWorker(served, metrics) if served.batched is not None else Worker(served, metrics)


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
    max_batch: int = 1,
    memory_budget: int | None = None,
) -> ServedModel:
    """Check and build the stack exactly as ``crossedge specdec generate`` does, and wrap it for serving.

    ``max_batch > 1`` (or a ``memory_budget``) serves with a batched decoder of that many rows.
    """
    from crossedge.core.backends import DEFAULT_BACKEND
    from crossedge.core.compose import build_stack
    from crossedge.specdec.bench import check_target
    from crossedge.specdec.engine import SpeculativeDecoder

    stack = check_target(
        model, quant=quant, backend=backend or DEFAULT_BACKEND, drafters=[drafter], policy=policy, purpose="serve"
    )
    built = build_stack(stack)
    decoder = SpeculativeDecoder(built.model, drafter, policy, tokenizer=built.tokenizer)
    batched = None
    if max_batch > 1 or memory_budget is not None:
        from crossedge.specdec.batched import BatchedSpeculativeDecoder

        batched = BatchedSpeculativeDecoder(
            built.model, drafter, policy, max_batch=max_batch, memory_budget=memory_budget, tokenizer=built.tokenizer
        )
    return ServedModel(
        decoder,
        built.tokenizer,
        name or model,
        default_max_tokens=default_max_tokens,
        history_users=history_users,
        history_tokens=history_tokens,
        batched=batched,
    )
