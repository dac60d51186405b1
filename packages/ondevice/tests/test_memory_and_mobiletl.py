"""Measured training memory against hand-computed cases; the 1-bit sign-mask backward against references."""

import pytest
import torch
from torch import nn

from crossedge.ondevice.memory import SavedTensorMeter, measure_training_step, tensor_bytes
from crossedge.ondevice.mobiletl import (
    AffineNorm,
    SignMaskActivation,
    SignMaskHardswish,
    SignMaskReLU6,
    pack_bits,
    unpack_bits,
)


def test_linear_saves_exactly_its_input():
    torch.manual_seed(0)
    layer = nn.Linear(20, 30)
    x = torch.randn(4, 20)  # no grad: only the weight gradient needs the input
    with SavedTensorMeter.for_model(layer) as meter:
        layer(x).sum().backward()
    assert meter.bytes == 4 * 20 * 4  # the input, fp32; the weight is a parameter and is excluded


def test_one_storage_saved_twice_is_counted_once_and_relu_adds_its_output():
    torch.manual_seed(0)
    a, b = nn.Linear(20, 30), nn.Linear(20, 10)
    x = torch.randn(4, 20)
    meter = SavedTensorMeter(exclude=[*a.parameters(), *b.parameters()])
    with meter:
        out = torch.relu(a(x)).sum() + b(x).sum() + b(x[:2]).sum()  # x[:2] is a view of x's storage
    out.backward()
    assert meter.saved_calls >= 4
    assert meter.bytes == 4 * 20 * 4 + 4 * 30 * 4  # x once, relu's output once


def test_training_step_counts_grads_and_adam_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model[0].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    memory = measure_training_step(
        model, nn.functional.cross_entropy, torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]), torch.optim.Adam(params)
    )
    trainable = (16 * 3 + 3) * 4
    assert memory.trainable_parameter_bytes == trainable
    assert memory.gradient_bytes == trainable
    # exp_avg and exp_avg_sq per parameter, plus one scalar step counter per parameter tensor
    assert memory.optimizer_state_bytes == 2 * trainable + 2 * 4
    # ReLU's output (5x16 fp32) is saved once although ReLU and the second Linear both keep it;
    # cross entropy keeps log-softmax (5x3 fp32), the int64 targets (5) and nll's total weight (one fp32)
    assert memory.saved_activation_bytes == 5 * 16 * 4 + 5 * 3 * 4 + 5 * 8 + 4
    assert memory.parameter_bytes == tensor_bytes(model.parameters())


@pytest.mark.parametrize("shape", [(3,), (7, 5), (2, 3, 5, 5), (8,)])
def test_pack_bits_round_trip_and_size(shape):
    mask = torch.rand(shape) > 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def _reference_sign_grad(fn, x, grad):
    """The exact derivative by autograd, then its sign pattern: 1 where positive, 0 elsewhere."""
    leaf = x.clone().requires_grad_(True)
    (derivative,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return grad * (derivative > 0).to(grad.dtype), derivative


@pytest.mark.parametrize(("kind", "fn"), [("relu6", nn.functional.relu6), ("hardswish", nn.functional.hardswish)])
def test_sign_mask_gradient_matches_the_sign_of_the_exact_derivative(kind, fn):
    torch.manual_seed(0)
    # Spread over every region of both functions, avoiding the exact kinks.
    x = torch.linspace(-8, 8, 997).reshape(1, -1) + 1e-3
    grad = torch.randn_like(x)
    expected, exact = _reference_sign_grad(fn, x, grad)
    leaf = x.clone().requires_grad_(True)
    out = SignMaskActivation.apply(leaf, kind)
    assert torch.equal(out.detach(), fn(x))
    out.backward(grad)
    assert torch.equal(leaf.grad, expected)
    if kind == "relu6":  # ReLU6's derivative is 0 or 1: the mask is exact
        assert torch.equal(leaf.grad, grad * exact)
    else:  # Hard-Swish: exact on x > 3 and x < -3, a step approximation in between
        assert torch.equal(leaf.grad[x > 3], grad[x > 3])
        assert not torch.allclose(leaf.grad, grad * exact)


def test_hand_computed_hardswish_mask():
    x = torch.tensor([-4.0, -2.0, -1.0, 0.0, 2.0, 5.0], requires_grad=True)
    SignMaskHardswish()(x).backward(torch.ones(6))
    # derivative (2x+3)/6 on (-3, 3): -1/6 at -2, 1/6 at -1, 1/2 at 0, 7/6 at 2; 0 below -3; 1 above 3
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    y = torch.tensor([-1.0, 0.5, 5.9, 6.5], requires_grad=True)
    SignMaskReLU6()(y).backward(torch.ones(4))
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_sign_mask_stores_one_bit_per_element():
    x = torch.randn(4, 16, 8, 8)
    w = torch.ones(1, requires_grad=True)
    with SavedTensorMeter() as meter:
        SignMaskActivation.apply(x * w, "relu6")
    mask_bytes = x.numel() // 8
    assert mask_bytes in meter.storages.values()
    with SavedTensorMeter() as plain:
        nn.functional.relu6(x * w)
    assert plain.bytes - x.numel() * 4 >= 8 * mask_bytes * 4 - 1  # relu6 keeps a full fp32 map


def test_affine_norm_matches_eval_batch_norm_and_saves_no_activation():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    bn.eval()
    norm = AffineNorm.from_batch_norm(bn)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    torch.testing.assert_close(norm(x), bn(x))
    with SavedTensorMeter.for_model(norm) as meter:
        norm(x).sum().backward()
    assert meter.bytes == 0
    assert norm.shift.grad.shape == (6,)
