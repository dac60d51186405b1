"""``mirror``: a draft model that drafts its next proposal while the target verifies the current one.

Mirror-SD's idea on a CPU: the draft model and the target run at the same time on separate
cores. When the target starts verifying a draft ``d1..dk``, the drafter bets that all of it
is accepted: on its own thread (``threads`` torch threads) it feeds ``dk``, guesses the
target's next token ``g`` as its own top token, and drafts ``ahead`` tokens after ``g``. If
verification accepts the whole draft and the target's token is ``g``, the next proposal is
already there and costs nothing on the critical path; otherwise the drafter waits for its
thread (the draft model's cache is shared), rolls back and drafts as ``draft-model`` does. It
drafts greedily on its thread, so with sampling it behaves as ``draft-model`` (nothing runs
ahead). Whether it pays depends on free cores: the target's forward and the draft's run in
one Python process, and their Python-level work takes turns on the interpreter lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext

from .drafters import DraftModelDrafter
from .errors import SpecdecError

__all__ = ["MirrorDrafter"]


class MirrorDrafter(DraftModelDrafter):
    """A draft model running one proposal ahead, concurrently with the target's verification."""

    name = "mirror"
    description = "a draft model (model=NAME) that drafts its next proposal while the target verifies"

    def __init__(self, model: Any = None, ahead: int = 4, threads: int = 1):
        super().__init__(model)
        if not 1 <= ahead <= 64:
            raise SpecdecError(f"mirror ahead must be 1..64 tokens, got {ahead}")
        if not 1 <= threads <= 256:
            raise SpecdecError(f"mirror threads must be 1..256, got {threads}")
        self.ahead = ahead
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._job: Future | None = None
        #: Proposals served from the concurrent draft, and proposals drafted on the spot.
        self.hits = 0
        self.misses = 0

    def begin(self, context: DraftContext) -> None:
        self._settle()
        super().begin(context)

    def end(self, context_ids: Sequence[int]) -> None:
        self._settle()
        super().end(context_ids)

    def _settle(self) -> tuple[list[int], list[int]] | None:
        """Wait for the concurrent draft, if one runs, and return (the context it assumed, its tokens)."""
        job, self._job = self._job, None
        return None if job is None else job.result()

    def verifying(self, context_ids: Sequence[int], draft: Draft) -> None:
        if not self.sampler.greedy or draft.is_tree:
            return
        self._settle()
        assumed = [*context_ids, *draft.tokens]
        if self.window is not None and len(assumed) + self.ahead + 1 > self.window:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossedge-mirror")
        self._job = self._pool.submit(self._draft_ahead, assumed)

    def _draft_ahead(self, assumed: list[int]) -> tuple[list[int], list[int]]:
        # torch's thread count is per calling thread: this one runs the draft on its own cores.
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            tokens, _ = self._draft_tokens(assumed, self.ahead + 1, sample=False)
        return assumed, tokens

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        ready = self._settle()
        if ready is not None and self.sampler.greedy:
            assumed, tokens = ready
            n = len(assumed)
            if (
                len(context_ids) == n + 1
                and tokens
                and context_ids[n] == tokens[0]
                and list(context_ids[:n]) == assumed
            ):
                self.hits += 1
                drafted = tokens[1 : 1 + k]
                if len(drafted) < k:
                    more, _ = self._draft_tokens([*context_ids, *drafted], k - len(drafted), sample=False)
                    drafted += more
                return Draft(drafted)
        self.misses += 1
        return super().propose(context_ids, k)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
