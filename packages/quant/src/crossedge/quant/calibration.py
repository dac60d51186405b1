"""Calibration: run a data loader through the model and record what methods need about each layer's inputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossedge.core.bench import progress_bar
from crossedge.core.errors import CrossedgeError


class CalibrationError(CrossedgeError):
    """Calibration data is missing, empty or of the wrong shape."""


@dataclass
class LayerStats:
    """Input statistics of one linear layer over the calibration data."""

    col_absmax: torch.Tensor | None
    hessian: torch.Tensor | None
    tokens: int
    #: Up to ``sample_rows`` input rows (strided over the first calls), when asked for.
    sample: torch.Tensor | None = None

    def mean_hessian(self) -> torch.Tensor:
        """``X^T X / tokens``: the (halved) Hessian of the layer's squared output error."""
        if self.hessian is None:
            raise CalibrationError("this calibration pass did not collect Hessians")
        return self.hessian / max(1, self.tokens)


def text_batches(tokenizer: Any, text: str, *, seq_len: int = 512, num_batches: int = 8) -> list[torch.Tensor]:
    """Consecutive ``[1, seq_len]`` input_ids windows cut from ``text`` (a simple calibration loader)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:num_batches]
    if not windows:
        raise CalibrationError(
            f"calibration text has {len(ids)} tokens, fewer than one window of {seq_len}: give more text or a "
            "shorter seq_len"
        )
    return [w.unsqueeze(0) for w in windows]


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    batches: Iterable[Any],
    modules: Mapping[str, nn.Module],
    *,
    absmax: bool = True,
    hessian: bool = False,
    sample_rows: int = 0,
    progress: bool = True,
) -> dict[str, LayerStats]:
    """Feed every batch through ``model`` once, hooking the inputs of ``modules``.

    A batch is a tensor of input_ids (or of inputs for a plain model), a tuple of
    positional arguments, or a dict of keyword arguments. ``sample_rows`` keeps that many
    input rows per layer (``LayerStats.sample``).
    """
    stats = {name: LayerStats(None, None, 0) for name in modules}
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            s = stats[name]
            s.tokens += x.shape[0]
            if absmax:
                cur = x.abs().amax(0)
                s.col_absmax = cur if s.col_absmax is None else torch.maximum(s.col_absmax, cur)
            if hessian:
                h = x.t() @ x
                s.hessian = h if s.hessian is None else s.hessian + h
            have = sum(t.shape[0] for t in rows[name])
            if have < sample_rows:
                step = max(1, x.shape[0] // (sample_rows - have))
                rows[name].append(x[::step][: sample_rows - have].clone())

        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(hook_for(name)))
    count = 0
    try:
        for batch in progress_bar(batches, desc="calibration batches", enabled=progress):
            _call(model, batch)
            count += 1
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise CalibrationError("the calibration loader yielded no batches: give at least one batch of inputs")
    for name, kept in rows.items():
        if kept:
            stats[name].sample = torch.cat(kept)
    missing = [name for name, s in stats.items() if s.tokens == 0]
    if missing:
        raise CalibrationError(f"calibration never reached layer(s) {', '.join(missing[:5])}: check the loader")
    return stats
