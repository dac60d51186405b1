"""The built-in unmasking strategies: which masked positions a diffusion LM keeps after each forward.

- ``low-confidence:k=2``: LLaDA's low-confidence remasking; keep the ``k`` most confident
  predictions, leave the rest masked (``k`` tokens per forward, the fixed-k baseline).
- ``threshold:tau=0.9``: keep every prediction whose probability passes ``tau``, and at least
  the most confident one (as in Fast-dLLM's parallel decoding).
- ``token-editing``: LLaDA2.1's mask-to-token and token-to-token decoding: masked positions are
  filled above ``mask_tau`` (at least one per step), and an already decoded token is replaced
  when the model puts more than ``edit_tau`` on another token; after the block is full, up to
  ``max_edit_steps`` post-edit forwards run until nothing changes.

Confidence is the top-1 probability of the forward's softmax at a position.
"""

from __future__ import annotations

import torch

from crossedge.core.contracts.unmasking import BlockState, UnmaskingError, UnmaskingStrategy


def _check_probability(strategy: str, label: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise UnmaskingError(f"unmasking strategy {strategy!r}: {label} must be in (0, 1], got {value}")


def _fill_confident(state: BlockState, tau: float) -> torch.Tensor:
    """Masked positions whose top probability passes ``tau``, and at least the most confident one."""
    ids, conf = state.confidence()
    masked = state.masked
    chosen = masked & (conf >= tau)
    if not bool(chosen.any()):
        best = torch.where(masked, conf, torch.full_like(conf, -1.0)).argmax()
        chosen[best] = True
    return torch.where(chosen, ids, state.tokens)


class LowConfidenceRemasking(UnmaskingStrategy):
    """Keep the ``k`` most confident masked predictions per forward (LLaDA's low-confidence remasking)."""

    name = "low-confidence"
    description = "keep the k most confident predictions per forward, remask the rest (LLaDA)"

    def __init__(self, k: int = 1):
        if k < 1:
            raise UnmaskingError(f"unmasking strategy 'low-confidence': k must be at least 1, got {k}")
        self.k = k

    def step(self, state: BlockState) -> torch.Tensor:
        ids, conf = state.confidence()
        masked = state.masked
        n = min(self.k, int(masked.sum()))
        ranked = torch.where(masked, conf, torch.full_like(conf, -1.0))
        keep = ranked.topk(n).indices
        out = state.tokens.clone()
        out[keep] = ids[keep]
        return out


class ConfidenceThreshold(UnmaskingStrategy):
    """Keep every masked prediction whose probability passes ``tau`` (at least one per forward)."""

    name = "threshold"
    description = "keep every prediction above a confidence threshold, at least one per forward"

    def __init__(self, tau: float = 0.9):
        _check_probability(self.name, "tau", tau)
        self.tau = tau

    def step(self, state: BlockState) -> torch.Tensor:
        return _fill_confident(state, self.tau)


class TokenEditing(UnmaskingStrategy):
    """LLaDA2.1's decoding: threshold mask-to-token filling plus token-to-token edits of decoded positions."""

    name = "token-editing"
    description = "fill masks above mask_tau; rewrite a decoded token when another passes edit_tau (LLaDA2.1)"
    edits = True

    def __init__(self, mask_tau: float = 0.9, edit_tau: float = 0.9, max_edit_steps: int = 2):
        _check_probability(self.name, "mask_tau", mask_tau)
        _check_probability(self.name, "edit_tau", edit_tau)
        if max_edit_steps < 0:
            raise UnmaskingError(f"unmasking strategy {self.name!r}: max_edit_steps must be >= 0, got {max_edit_steps}")
        self.mask_tau = mask_tau
        self.edit_tau = edit_tau
        self.max_edit_steps = max_edit_steps

    def step(self, state: BlockState) -> torch.Tensor:
        ids, conf = state.confidence()
        decoded = ~state.masked
        edit = decoded & (ids != state.tokens) & (conf >= self.edit_tau)
        out = torch.where(edit, ids, state.tokens)
        if bool(state.masked.any()):
            view = BlockState(out, state.logits, state.mask_id, state.eos_id, state.step)
            filled = _fill_confident(view, self.mask_tau)
            out = torch.where(state.masked, filled, out)
        return out
