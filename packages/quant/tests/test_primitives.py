"""Quantize/dequantize per granularity against values computed by hand."""

import pytest
import torch

from crossedge.quant.primitives import compute_qparams, dequantize, fake_quantize, quantize


def test_per_tensor_symmetric():
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    qp = compute_qparams(x, bits=8, granularity="per_tensor")
    assert qp.scale.item() == pytest.approx(4.0 / 127)
    q = quantize(x, qp)
    # 1 / (4/127) = 31.75 -> 32; -2 -> -63.5 -> -64 (round half to even); 0.5 -> 15.875 -> 16; 4 -> 127
    assert q.tolist() == [[32, -64], [16, 127]]
    assert torch.allclose(dequantize(q, qp), q.float() * 4.0 / 127)


def test_per_channel_and_per_token_are_row_wise():
    x = torch.tensor([[1.0, -7.0], [0.3, 0.1]])
    for granularity in ("per_channel", "per_token"):
        qp = compute_qparams(x, bits=4, granularity=granularity)
        assert qp.scale.flatten().tolist() == pytest.approx([1.0, 0.3 / 7])
        assert quantize(x, qp).tolist() == [[1, -7], [7, 2]]  # 0.1 / (0.3/7) = 2.33 -> 2


def test_per_group_pads_the_last_group():
    x = torch.tensor([[1.0, 2.5, 3.0, 4.0, 8.0, -6.0]])
    qp = compute_qparams(x, bits=4, granularity="per_group", group_size=4)
    assert qp.scale.flatten().tolist() == pytest.approx([4 / 7, 8 / 7])
    q = quantize(x, qp)
    # group 1: x / (4/7) = 1.75, 4.375, 5.25, 7 -> 2, 4, 5, 7; group 2: 7, -5.25 -> -5
    assert q.tolist() == [[2, 4, 5, 7, 7, -5]]
    assert dequantize(q, qp).shape == x.shape


def test_asymmetric_zero_point():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    qp = compute_qparams(x, bits=4, granularity="per_channel", symmetric=False)
    # range [0, 3] over 15 steps: scale 0.2, zero = -8 - round(0 / 0.2) = -8
    assert qp.scale.item() == pytest.approx(0.2)
    assert qp.zero.item() == -8
    q = quantize(x, qp)
    assert q.tolist() == [[-8, -3, 2, 7]]
    assert torch.allclose(dequantize(q, qp), x, atol=1e-6)


def test_asymmetric_negative_range_keeps_zero_exact():
    x = torch.tensor([[-1.0, -0.5, 0.0, 2.0]])
    qp = compute_qparams(x, bits=8, granularity="per_tensor", symmetric=False)
    assert dequantize(quantize(x, qp), qp)[0, 2].item() == 0.0
    assert torch.allclose(fake_quantize(x, bits=8, granularity="per_tensor", symmetric=False), x, atol=qp.scale.item())


def test_bad_granularity():
    from crossedge.quant import QuantConfigError

    with pytest.raises(QuantConfigError, match="granularity"):
        compute_qparams(torch.ones(2, 2), bits=8, granularity="per_row")
