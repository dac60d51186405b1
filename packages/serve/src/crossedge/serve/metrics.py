"""What ``/metrics`` reports, in Prometheus' text exposition format (version 0.0.4)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

PREFIX = "crossedge_serve"


class ServerMetrics:
    """Counters the app and the worker update from several threads; :meth:`render` writes them out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        #: generations by how they ended: stop, length, cancelled (the client left), error
        self.generations: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.decode_seconds = 0.0
        #: target forwards and accepted tokens summed over generations, for the mean accepted length
        self.target_forwards = 0
        self.queued = 0
        self.running = 0
        #: the batched decoder's :class:`~crossedge.specdec.batched.BatchCounters` when requests are batched
        self.batch: Any = None

    def request_done(self, endpoint: str, status: int) -> None:
        """Count one answered request."""
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def generation_done(
        self, prompt_tokens: int, completion_tokens: int, seconds: float, forwards: int, finish: str
    ) -> None:
        """Add one generation that ended for ``finish`` (stop, length, cancelled or error)."""
        with self._lock:
            self.generations[finish] += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.decode_seconds += seconds
            self.target_forwards += forwards

    def queue(self, change: int) -> None:
        """A request joins (+1) or leaves (-1) the queue waiting for the model."""
        with self._lock:
            self.queued += change

    def run(self, change: int) -> None:
        """A generation starts (+1) or ends (-1)."""
        with self._lock:
            self.running += change

    def render(self) -> str:
        """The metrics as Prometheus text."""
        with self._lock:
            tokens_per_s = self.completion_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0
            mean_accepted = self.completion_tokens / self.target_forwards if self.target_forwards else 0.0
            lines = [
                f"# HELP {PREFIX}_requests_total Requests answered, by endpoint and HTTP status.",
                f"# TYPE {PREFIX}_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'{PREFIX}_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            lines += [
                f"# HELP {PREFIX}_generations_total Generations, by how they ended (cancelled: the client left).",
                f"# TYPE {PREFIX}_generations_total counter",
            ]
            for finish, count in sorted(self.generations.items()):
                lines.append(f'{PREFIX}_generations_total{{finish="{finish}"}} {count}')
            gauges = [
                ("prompt_tokens_total", "counter", "Prompt tokens of finished generations.", self.prompt_tokens),
                ("completion_tokens_total", "counter", "Tokens generated.", self.completion_tokens),
                ("decode_seconds_total", "counter", "Seconds the engine spent generating.", self.decode_seconds),
                ("target_forwards_total", "counter", "Forwards of the target model.", self.target_forwards),
                ("tokens_per_second", "gauge", "Generated tokens per second of decoding, overall.", tokens_per_s),
                (
                    "mean_accepted_length",
                    "gauge",
                    "Tokens gained per target forward (1 is plain decoding), overall.",
                    mean_accepted,
                ),
                ("queue_depth", "gauge", "Requests waiting for the model.", self.queued),
                ("requests_running", "gauge", "Generations in progress.", self.running),
            ]
            batch = self.batch
            if batch is not None:
                gauges += [
                    ("batch_rows", "gauge", "Rows the batched decoder is decoding together now.", batch.rows),
                    ("batch_waiting", "gauge", "Requests waiting for room in the batch.", batch.waiting),
                    ("batch_admitted_total", "counter", "Requests admitted into the batch.", batch.admitted),
                    (
                        "batch_throttled_total",
                        "counter",
                        "Requests that had to wait because the memory budget could not hold them yet.",
                        batch.throttled,
                    ),
                    ("batch_forwards_total", "counter", "Batched target forwards (one per step).", batch.forwards),
                ]
        for name, kind, help_text, value in gauges:
            lines += [
                f"# HELP {PREFIX}_{name} {help_text}",
                f"# TYPE {PREFIX}_{name} {kind}",
                f"{PREFIX}_{name} {value}",
            ]
        return "\n".join(lines) + "\n"
