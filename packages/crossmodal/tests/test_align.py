"""Contrastive alignment on a tiny pair where the signal is a noisy linear map of the stimulus."""

import math

import pytest
import torch

from crossedge.crossmodal.align import (
    AlignmentError,
    AlignmentModel,
    SignalAugmentation,
    StimulusViews,
    info_nce,
    retrieval_accuracy,
    retrieve,
    train_alignment,
)


def synthetic_pairs(n=240, dim=16, length=8, channels=6, noise=0.3, seed=0):
    """Stimulus embeddings and signals ``reshape(E @ M) + noise``: windows (n, length, channels)."""
    generator = torch.Generator().manual_seed(seed)
    stimulus = torch.randn(n, dim, generator=generator)
    mixing = torch.randn(dim, length * channels, generator=generator) / math.sqrt(dim)
    signal = (stimulus @ mixing).view(n, length, channels)
    signal = signal + noise * torch.randn(signal.shape, generator=generator)
    return signal, stimulus


def test_zero_shot_retrieval_of_unseen_stimuli_is_far_above_chance():
    signal, stimulus = synthetic_pairs()
    result = train_alignment(signal[:160], stimulus[:160], epochs=40, batch_size=32, width=64, shared_dim=32, lr=3e-3)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    scores = retrieve(result.model, signal[160:], stimulus[160:])  # 80 stimuli never trained on
    assert scores["chance"] == pytest.approx(1 / 80)
    assert scores["top1"] > 0.5 and scores["top5"] > 0.85, scores  # about 0.74 and 0.96 here
    two_way = retrieve(result.model, signal[160:], stimulus[160:], ways=2, repeats=5)
    assert two_way["chance"] == 0.5 and two_way["top1"] > 0.9
    # an untrained model retrieves near chance: the alignment, not the setup, does the work
    torch.manual_seed(1)
    untrained = AlignmentModel(signal.shape[1:], stimulus.shape[1], width=64, shared_dim=32)
    assert retrieve(untrained, signal[160:], stimulus[160:])["top1"] < 0.15


def test_the_loss_is_symmetric_when_the_sides_are_swapped():
    generator = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 5, generator=generator), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 5, generator=generator), dim=-1)
    scale = torch.tensor(2.0)
    loss, a_to_b, b_to_a = info_nce(a, b, scale)
    swapped, s_a_to_b, s_b_to_a = info_nce(b, a, scale)
    torch.testing.assert_close(swapped, loss)
    torch.testing.assert_close(s_a_to_b, b_to_a)
    torch.testing.assert_close(s_b_to_a, a_to_b)
    assert not torch.allclose(a_to_b, b_to_a)  # the two directions are different terms
    # perfectly matched pairs at a sharp temperature give a loss near zero
    assert float(info_nce(a, a, torch.tensor(math.log(1000.0)))[0]) < 1e-3


def test_the_learned_temperature_moves_and_stays_clamped():
    signal, stimulus = synthetic_pairs(n=96)
    free = train_alignment(signal, stimulus, epochs=10, batch_size=32, width=32, shared_dim=16, lr=1e-2)
    start = math.log(1 / 0.07)
    assert abs(free.history[-1]["logit_scale"] - start) > 0.05
    # a tight upper bound on the logit scale (min_temperature) is reached and never passed
    clamped = train_alignment(
        signal, stimulus, epochs=10, batch_size=32, width=32, shared_dim=16, lr=5e-2,
        temperature=0.2, min_temperature=0.15, max_temperature=0.25,
    )  # fmt: skip
    bounds = (math.log(1 / 0.25), math.log(1 / 0.15))
    scales = [record["logit_scale"] for record in clamped.history]
    assert all(bounds[0] - 1e-6 <= s <= bounds[1] + 1e-6 for s in scales)
    assert max(scales) == pytest.approx(bounds[1]) or min(scales) == pytest.approx(bounds[0])
    assert 0.15 - 1e-6 <= clamped.model.temperature <= 0.25 + 1e-6


def test_augmentations_change_the_inputs_in_the_documented_ways():
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    shifted = SignalAugmentation(jitter=3, channel_dropout=0.0, noise=0.0)(x, generator)
    for row in range(2):  # each window is a wrapped shift of itself
        assert any(torch.equal(shifted[row], x[row].roll(s, 0)) for s in range(-3, 4))
    dropped = SignalAugmentation(jitter=0, channel_dropout=0.5, noise=0.0)(x + 1, torch.Generator().manual_seed(1))
    zero_channels = (dropped == 0).all(dim=1)
    assert zero_channels.any() and ((dropped != 0).all(dim=1) | zero_channels).all()  # whole channels drop
    noisy = SignalAugmentation(jitter=0, channel_dropout=0.0, noise=0.5)(x, generator)
    assert not torch.equal(noisy, x) and noisy.shape == x.shape
    views = StimulusViews(views=3)(torch.randn(4, 8), generator)
    assert len(views) == 3 and not torch.equal(views[0], views[1])


def test_retrieval_accuracy_on_a_hand_built_similarity():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.3], [0.2, 0.8, 0.1]])
    scores = retrieval_accuracy(similarity, torch.tensor([0, 1, 2]), topk=(1, 2))
    assert scores["top1"] == pytest.approx(1 / 3) and scores["top2"] == pytest.approx(2 / 3)


def test_refusals():
    signal, stimulus = synthetic_pairs(n=10)
    with pytest.raises(AlignmentError, match="one stimulus per signal"):
        train_alignment(signal, stimulus[:9])
    with pytest.raises(AlignmentError, match="min"):
        AlignmentModel((8, 6), 16, temperature=2.0, max_temperature=1.0)
    model = AlignmentModel((8, 6), 16)
    with pytest.raises(AlignmentError, match="ways"):
        retrieve(model, signal, stimulus, ways=11)
