"""Row-invariant attention: a query's output does not depend on how many queries are computed together.

Speculative decoding is lossless only if a verification forward of ``k + 1`` tokens gives
each of them the logits a one-token decoding step would. Attention kernels do not promise
that: SDPA over 5 queries and over 1 query reduce in different orders, and the results
differ by ~1e-7 in float32. That is harmless in a float32 model, but kernels that round
activations (weight-only int8/int4 with bf16 activations, W8A8) turn such a difference into
a whole rounding step, and after 30 layers a logit moves by 0.1-0.4, so near-ties flip and
the speculative output is no longer the model's own greedy output.

:func:`use_row_invariant_attention` registers an attention function with transformers that,
for forwards of up to :data:`MAX_ROWS` queries (decoding steps and verifications), runs
SDPA once per query over exactly the keys that query may see (a contiguous slice when the
mask allows, a gather for a tree) with no mask: the same call, on the same values, as a
one-token decoding step at that position. Longer forwards (prefill) use SDPA as usual;
they are the same in plain and speculative decoding, so they need no invariance. A batch of
several sequences (batched speculative decoding) is handled row by row of every batch
element, with that element's mask, so padding never changes a row's result.
"""

from __future__ import annotations

from typing import Any

#: The attention implementation's name in transformers' registries.
ROW_INVARIANT = "crossedge_row_invariant"
#: Forwards with more queries than this (prompts) run plain SDPA.
MAX_ROWS = 64


def _visible(mask_row: Any, kv: int) -> Any:
    """A slice (contiguous keys) or an index tensor of the keys one query row may attend to."""
    import torch

    if mask_row.dtype != torch.bool:
        mask_row = mask_row == 0
    index = mask_row.nonzero().flatten()
    first, last = int(index[0]), int(index[-1])
    if last - first + 1 == index.numel():
        return slice(first, last + 1)
    return index


def row_invariant_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, None]:
    """transformers attention function: SDPA one query at a time over its visible keys (see the module doc)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, kv = query.shape[2], key.shape[2]
    if rows > MAX_ROWS:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    batch = []
    # Every row of every batch element alone: a batched verification (ragged rows, padding
    # keys masked) then computes each query exactly as a one-sequence decoding step does.
    for b in range(query.shape[0]):
        outputs = []
        for i in range(rows):
            if attention_mask is None:
                # No mask means causal with the queries at the end of the keys.
                visible: Any = slice(0, kv - rows + i + 1)
            else:
                mask_b = attention_mask[b if attention_mask.shape[0] > 1 else 0]
                visible = _visible(mask_b[0, i], kv)
            k_b, v_b = key[b : b + 1], value[b : b + 1]
            if isinstance(visible, slice):
                k, v = k_b[:, :, visible], v_b[:, :, visible]
            else:
                k, v = k_b.index_select(2, visible), v_b.index_select(2, visible)
            q = query[b : b + 1, :, i : i + 1]
            out, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=False, **kwargs)
            outputs.append(out)
        batch.append(torch.cat(outputs, dim=1))
    return torch.cat(batch, dim=0), None


def register_row_invariant_attention() -> str:
    """Register the attention function and its mask (SDPA's) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ROW_INVARIANT, row_invariant_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROW_INVARIANT, sdpa_mask)
    return ROW_INVARIANT


def use_row_invariant_attention(model: Any) -> Any:
    """Switch ``model`` (in place) to row-invariant attention; returns the model.

    Only models that run SDPA or eager attention are switched: other kernels (flash, flex)
    keep theirs, and a model already switched is left as it is.
    """
    name = register_row_invariant_attention()
    config = model.config
    if getattr(config, "_attn_implementation", None) in ("sdpa", "eager", None):
        config._attn_implementation = name
    return model
