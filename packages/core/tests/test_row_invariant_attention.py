"""Row-invariant attention over a batch: each element's rows as if computed alone, padding never read."""

import torch

from crossedge.core.attention import row_invariant_attention


class _Module(torch.nn.Module):
    """What transformers' SDPA function reads off an attention module."""

    num_key_value_groups = 2
    is_causal = True
    training = False


def test_batched_rows_equal_each_element_alone_and_ignore_masked_padding():
    torch.manual_seed(0)
    batch, heads, kv_heads, rows, cached, dim = 3, 4, 2, 4, 6, 8
    query = torch.randn(batch, heads, rows, dim)
    key = torch.randn(batch, kv_heads, cached + rows, dim)
    value = torch.randn(batch, kv_heads, cached + rows, dim)
    lengths = [6, 2, 4]  # valid cached keys per element; the rest is padding
    fed = [4, 1, 3]  # valid fed queries per element; the rest is padding
    mask = torch.zeros(batch, 1, rows, cached + rows, dtype=torch.bool)
    for b in range(batch):
        mask[b, 0, :, : lengths[b]] = True
        mask[b, 0, :, cached:] = torch.tril(torch.ones(rows, rows, dtype=torch.bool))
        for i in range(fed[b], rows):  # a padding query sees only its own key
            mask[b, 0, i] = False
            mask[b, 0, i, cached + i] = True
        # Padding keys hold garbage: a kernel that read them would turn the row into NaN.
        key[b, :, lengths[b] : cached] = float("nan")
        value[b, :, lengths[b] : cached] = float("nan")
    out, _ = row_invariant_attention(_Module(), query, key, value, mask, dropout=0.0, scaling=dim**-0.5)
    assert out.shape == (batch, rows, heads, dim)
    assert not torch.isnan(out).any()
    for b in range(batch):
        alone, _ = row_invariant_attention(
            _Module(),
            query[b : b + 1],
            key[b : b + 1],
            value[b : b + 1],
            mask[b : b + 1],
            dropout=0.0,
            scaling=dim**-0.5,
        )
        assert torch.equal(out[b : b + 1], alone)
