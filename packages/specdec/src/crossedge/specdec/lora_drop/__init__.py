"""LoRA-Drop: decode with some decoder layers dropped on most steps, LoRA adapters on the kept ones.

A *drop pattern* names the droppable layers (by default a contiguous block of middle
layers; see :mod:`.model`). On a dropped step those layers are bypassed (their
output is their input) and write no KV for that position; the kept layers run with
low-rank adapters trained to make up for the missing layers. Every ``refresh`` steps a
full step runs the unchanged model (all layers, no adapters), so the dropped layers' KV
caches hold exactly the positions of full steps (and the prompt). The adapters are trained
by self-distillation from the full model on its own greedy continuations
(:mod:`.training`), and the same model is used two ways: as a lossy decoder
(:func:`.model.LoraDrop.generate`), and as the self-speculative ``lora-drop`` drafter
(:mod:`.drafter`) that the full model verifies, which is lossless.

Importing this package does not import torch.
"""

from __future__ import annotations

from crossedge.core import CrossedgeError


class LoraDropError(CrossedgeError):
    """A LoRA-Drop pattern, adapter set or run cannot be built, trained, saved or loaded for this model."""


def is_full_step(step: int, refresh: int) -> bool:
    """Whether decoding step ``step`` (1 = the first token fed after the prefill) runs the full model.

    ``refresh=K`` makes steps ``K, 2K, 3K, ...`` full; ``refresh=1`` is the full model on every
    step and ``refresh=0`` never refreshes. The prefill is always full.
    """
    if step < 1:
        raise LoraDropError(f"decoding steps count from 1 (the first token fed after the prefill), got {step}")
    if refresh < 0:
        raise LoraDropError(f"refresh must be 0 (never) or a step count >= 1, got {refresh}")
    return refresh > 0 and step % refresh == 0


def full_positions(prefill: int, length: int, refresh: int) -> list[bool]:
    """For a sequence of ``length`` tokens whose first ``prefill`` were the prompt, which positions were fed
    by a full step: the prompt, then position ``t`` when step ``t - prefill + 1`` is full."""
    if not 1 <= prefill <= length:
        raise LoraDropError(f"the prefill must hold 1..{length} tokens of the sequence, got {prefill}")
    return [t < prefill or is_full_step(t - prefill + 1, refresh) for t in range(length)]
