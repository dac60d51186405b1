"""Clover: regressive draft heads with an attention decoder and an augmenting block.

All three parts read the target's last-layer states ``s`` of the context (after the final
norm, as the cache view records them) over a window of ``window`` positions:

- the *augmenting block* enhances each state with causal attention over the window,
  ``a_t = s_t + O_a attn(Q_a s_t, K_a s_{t-w+1..t}, V_a s_{t-w+1..t})``;
- the *regressive connection* feeds each draft step the token chosen before it:
  ``u_j = g_{j-1} + E x_j``, with ``x_j`` the previous token's input embedding (the known
  ``c[n-1]`` for depth 1) and ``g_0 = a_t``;
- the *attention decoder* lets that step attend to the augmented context and adds a
  small MLP: ``g_j = u_j + O_d attn(Q_d u_j, K_d a, V_d a) + D silu(U u_j)``, and the
  target's LM head turns ``g_j`` into the guess at depth ``j``.

The output projections ``O_a``, ``E``, ``O_d`` and ``D`` start at zero, so untrained
heads guess what the LM head guesses from the anchor's state. One decoder is shared by
every depth; a node's children are computed from its own token, so a tree grows depth by
depth. Training is teacher-forced: step ``j`` at anchor ``t`` is given the target's own
token at ``t + j``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..exit_head import ExitData, decoder_parts
from . import HeadsError
from .base import DraftHeads, additive, final_state_is_normed


def _linear(hidden: int, dtype: torch.dtype, zero: bool = False) -> nn.Linear:
    layer = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.normal_(layer.weight, std=hidden**-0.5)
    return layer


def band_mask(queries: int, keys: int, window: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive (queries, keys) mask: query ``q`` (at key position ``keys - queries + q``) sees the ``window``
    keys ending at its own position."""
    at = torch.arange(keys - queries, keys).unsqueeze(1)
    key = torch.arange(keys).unsqueeze(0)
    return additive((key <= at) & (key > at - window), dtype)


class CloverHeads(DraftHeads):
    """An augmenting block and one attention decoder applied regressively over the drafted tokens."""

    kind = "clover"
    regressive = True

    def __init__(
        self,
        model: nn.Module,
        depth: int = 3,
        *,
        window: int = 32,
        rank_accuracy: list[list[float]] | None = None,
        vocab: int | None = None,
    ):
        super().__init__(model, depth, rank_accuracy=rank_accuracy, vocab=vocab)
        if window < 1:
            raise HeadsError(f"clover window must be at least 1, got {window}")
        self.window = int(window)
        hidden, dtype = model.config.hidden_size, model.dtype
        self.attention_heads = max(1, hidden // 64) if hidden % 64 == 0 else 1
        self.augment_q, self.augment_k, self.augment_v = (_linear(hidden, dtype) for _ in range(3))
        self.augment_o = _linear(hidden, dtype, zero=True)
        self.token_in = _linear(hidden, dtype, zero=True)
        self.decoder_q, self.decoder_k, self.decoder_v = (_linear(hidden, dtype) for _ in range(3))
        self.decoder_o = _linear(hidden, dtype, zero=True)
        self.mlp_up = _linear(hidden, dtype)
        self.mlp_down = _linear(hidden, dtype, zero=True)
        self.apply_norm = not final_state_is_normed(model)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "window": self.window}

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention of (b, q, hidden) queries over (b, k, hidden) keys and values."""
        b, nq, hidden = q.shape
        heads = self.attention_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], heads, hidden // heads).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        return out.transpose(1, 2).reshape(b, nq, hidden)

    def augmented(self, states: torch.Tensor, queries: int) -> torch.Tensor:
        """Augmented states (b, queries, hidden) of the last ``queries`` of ``states`` (b, T, hidden)."""
        mask = band_mask(queries, states.shape[1], self.window, states.dtype)
        tail = states[:, -queries:]
        context = self._attend(self.augment_q(tail), self.augment_k(states), self.augment_v(states), mask)
        return tail + self.augment_o(context)

    def step(
        self, g: torch.Tensor, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step: (logits, new g) from the previous g (b, q, hidden) and the previous tokens (b, q)."""
        u = g + self.token_in(self.model.get_input_embeddings()(tokens).to(g.dtype))
        g = u + self.decoder_o(self._attend(self.decoder_q(u), keys, values, mask))
        g = g + self.mlp_down(nn.functional.silu(self.mlp_up(u)))
        out = g
        if self.apply_norm:
            _, _, norm, _ = decoder_parts(self.model)
            out = norm(g)
        return self.project(out), g

    def training_logits(self, data: ExitData, rows: Any, start: int) -> torch.Tensor:
        states = data.hidden[self.model.config.num_hidden_layers][rows].to(self.dtype)
        ids = data.input_ids[rows]
        length = states.shape[1]
        augmented = self.augmented(states, length)
        keys, values = self.decoder_k(augmented), self.decoder_v(augmented)
        mask = band_mask(length, length, self.window, states.dtype)
        g, out = augmented, []
        for j in range(1, self.depth + 1):
            previous = ids[:, (torch.arange(length) + j).clamp(max=length - 1)]  # token t + j (teacher-forced)
            logits, g = self.step(g, previous, keys, values, mask)
            out.append(logits[:, start : length - 1])
        return torch.stack(out, dim=2)

    def root(self, view: Any, context_ids: list[int]) -> Any:
        n = len(context_ids)
        anchor = n - 2
        # Augmenting the window's states needs the window before each of them too.
        first = max(0, anchor - 2 * (self.window - 1))
        states = view.hidden_states(self.model.config.num_hidden_layers, first, anchor + 1)
        if states is None:
            return None
        states = states.to(self.dtype)
        augmented = self.augmented(states, min(self.window, states.shape[1]))
        keys, values = self.decoder_k(augmented), self.decoder_v(augmented)
        return {"g": augmented[:, -1:], "keys": keys, "values": values}

    def grow(self, states: list[Any], tokens: list[int], depth: int) -> tuple[torch.Tensor, list[Any]]:
        shared = states[0]
        g = torch.cat([s["g"] for s in states], dim=1)  # (1, m, hidden): every node attends to the same window
        logits, g = self.step(g, torch.tensor([tokens]), shared["keys"], shared["values"], None)
        return logits[0].float(), [{**shared, "g": g[:, i : i + 1]} for i in range(len(tokens))]
