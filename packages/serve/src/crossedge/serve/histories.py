"""One ``history`` drafter per user, so that one user's text never shapes another user's drafts.

specdec's :class:`~crossedge.specdec.drafters.HistoryDrafter` remembers every context it
decoded. A server decoding for many people must not let Alice's earlier answers become
Bob's drafts (they would leak her text into his drafts' timing and acceptance), so the
server keeps one drafter per user and puts the user's own into the decoder's chain before
each request. The one-at-a-time worker swaps them in, which needs no lock beyond the one
guarding the table; the batched worker hands each row a :meth:`HistoryDrafter.sharing`
drafter over its user's history instead, so a user's concurrent requests draft from (and add
to) one history while other users' rows never see it.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any

#: Users whose histories are kept by default; the least recently served is forgotten first.
DEFAULT_HISTORY_USERS = 64
#: Tokens each user's history keeps by default (about 400 bytes per token in the suffix automaton).
DEFAULT_HISTORY_TOKENS = 100_000
#: The pool of requests that name no user (no API key in use and no ``user`` field).
ANONYMOUS = "anonymous"


class UserHistories:
    """The decoder's history drafters, one set per user, at most ``max_users`` users, least recently used evicted."""

    def __init__(
        self, decoder: Any, *, max_users: int = DEFAULT_HISTORY_USERS, max_tokens: int = DEFAULT_HISTORY_TOKENS
    ):
        from crossedge.specdec.drafters import HistoryDrafter

        if max_users < 1:
            raise ValueError(f"max_users must be at least 1, got {max_users}")
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        self.decoder = decoder
        self.max_users = max_users
        # Fresh copies of the drafters as built, before any request: every user starts from these.
        self._templates = {i: copy.deepcopy(d) for i, d in enumerate(decoder.drafters) if isinstance(d, HistoryDrafter)}
        for template in self._templates.values():
            template.max_tokens = min(template.max_tokens, max_tokens)
        self._users: OrderedDict[str, dict[int, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def __bool__(self) -> bool:
        return bool(self._templates)

    def __len__(self) -> int:
        return len(self._users)

    def users(self) -> list[str]:
        """The users with a history, least recently served first."""
        with self._lock:
            return list(self._users)

    def drafters(self, user: str) -> dict[int, Any]:
        """The history drafters of ``user`` by their place in the chain (empty dict for a user never served)."""
        with self._lock:
            return dict(self._users.get(user, {}))

    def _own(self, user: str) -> dict[int, Any]:
        """``user``'s history drafters (new, empty ones for a new user), marked most recently used."""
        with self._lock:
            own = self._users.get(user)
            if own is None:
                own = {i: copy.deepcopy(t) for i, t in self._templates.items()}
                self._users[user] = own
                while len(self._users) > self.max_users:
                    self._users.popitem(last=False)
                    self.evicted += 1
            else:
                self._users.move_to_end(user)
            return own

    def use(self, user: str) -> None:
        """Put ``user``'s history drafters into the decoder's chain (new, empty ones for a new user)."""
        if not self._templates:
            return
        for i, drafter in self._own(user).items():
            self.decoder.drafters[i] = drafter

    def sharing(self, user: str) -> dict[int, Any]:
        """Drafters over ``user``'s histories for one row of a batch, by place in the chain (empty: no history)."""
        if not self._templates:
            return {}
        return {i: drafter.sharing() for i, drafter in self._own(user).items()}
