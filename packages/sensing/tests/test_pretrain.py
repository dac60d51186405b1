"""ContraWiMAE-style pretraining: the masked objective, the contrastive term, saving, and the few-label comparison."""

import numpy as np
import pytest
import torch

from crossedge.sensing.pretrain import (
    MODES,
    ChannelEncoder,
    PretrainConfig,
    PretrainError,
    comparison_table,
    evaluate_labels,
    info_nce,
    load_encoder,
    pretrain,
    random_masking,
    run_pretrain_comparison,
    sample_fraction,
    save_encoder,
    two_views,
)

SMALL = PretrainConfig(steps=100, batch_size=32, seed=0)


def csi_windows(per_class: int = 30, classes: int = 4, length: int = 32, subcarriers: int = 10, seed: int = 0):
    """CSI-amplitude-like windows: a static path plus a moving reflector with a per-class Doppler and delay."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[:, None] / length
    c = np.arange(subcarriers)[None, :] / subcarriers
    static = 1.5 + 0.5 * np.cos(2 * np.pi * 1.5 * c)
    xs, ys = [], []
    for label in range(classes):
        for _ in range(per_class):
            doppler = (1 + label) * rng.uniform(0.9, 1.1)
            phase = 2 * np.pi * (doppler * t + (0.5 + 0.4 * label) * c) + rng.uniform(0, 2 * np.pi)
            channel = static * np.exp(1j * rng.uniform(0, 0.3)) + 0.8 * np.exp(1j * phase)
            amplitude = np.abs(channel) * rng.uniform(0.7, 1.3) + 0.15 * rng.standard_normal((length, subcarriers))
            xs.append(amplitude)
            ys.append(label)
    return np.asarray(xs, np.float32), np.asarray(ys, np.int64)


@pytest.fixture(scope="module")
def trained():
    """One encoder pretrained on CSI-like windows, with the losses of every step."""
    torch.set_num_threads(1)
    x, _ = csi_windows()
    history = []
    encoder = pretrain(x, SMALL, lambda step, losses: history.append(losses))
    return encoder, history


def test_reconstruction_loss_falls_during_pretraining(trained):
    _, history = trained
    assert len(history) == SMALL.steps
    first = np.mean([h["reconstruction"] for h in history[:10]])
    last = np.mean([h["reconstruction"] for h in history[-10:]])
    assert last < 0.75 * first, (first, last)
    assert all(np.isfinite(h["loss"]) for h in history)


def test_pretraining_is_deterministic_per_seed():
    x, _ = csi_windows(per_class=6)
    config = PretrainConfig(steps=5, batch_size=8, seed=3)
    one, two = pretrain(x, config), pretrain(x, config)
    for key, value in one.state_dict().items():
        assert torch.equal(value, two.state_dict()[key]), key
    other = pretrain(x, PretrainConfig(steps=5, batch_size=8, seed=4))
    assert not torch.equal(one.state_dict()["embed.weight"], other.state_dict()["embed.weight"])


def test_masked_patches_do_not_reach_the_encoder():
    # 10 subcarriers with 4-wide patches: the last column of patches is zero-padded
    torch.manual_seed(0)
    encoder = ChannelEncoder((32, 10), SMALL).eval()
    x, _ = csi_windows(per_class=2)
    x = torch.from_numpy(x)
    encoder.fit_normalization(x)
    keep, hidden = random_masking(len(x), encoder.num_patches, 0.75, torch.Generator().manual_seed(1))
    assert encoder.num_patches == 8 * 3 and keep.shape == (len(x), 6)
    assert hidden.sum(dim=1).eq(18).all() and not hidden.gather(1, keep).any()
    (pt, pc), (_, columns) = encoder.patch_shape, encoder.grid
    changed = x.clone()
    for window in range(len(x)):
        for patch in torch.nonzero(hidden[window]).flatten().tolist():
            row, col = divmod(patch, columns)
            block = changed[window, row * pt : (row + 1) * pt, col * pc : (col + 1) * pc]
            block.copy_(100.0 * torch.randn(block.shape))
    assert not torch.equal(changed, x)
    with torch.no_grad():
        assert torch.equal(encoder.encode(x, keep), encoder.encode(changed, keep))
        # the check can fail: the same change is seen when every patch is visible
        assert not torch.allclose(encoder(x), encoder(changed))


def test_two_views_of_one_window_agree_more_than_different_windows(trained):
    encoder, _ = trained
    x, _ = csi_windows(per_class=10, seed=1)
    x = torch.from_numpy(x)
    # windows in random order, so a "different window" is as often of another class as of the same one
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(2))]

    def agreement(model):
        with torch.no_grad():
            views = two_views(model, x, SMALL, torch.Generator().manual_seed(7))
            a = torch.nn.functional.normalize(model.pool(views[0][3]), dim=1)
            b = torch.nn.functional.normalize(model.pool(views[1][3]), dim=1)
        similarity = a @ b.T
        n = len(x)
        same = float(similarity.diag().mean())
        different = float((similarity.sum() - similarity.diag().sum()) / (n * n - n))
        matched = float(info_nce(a, b, SMALL.temperature))
        shuffled = float(info_nce(a, b.roll(1, dims=0), SMALL.temperature))
        return same, different, matched, shuffled

    same, different, matched, shuffled = agreement(encoder)
    assert same > different + 0.3, (same, different)
    assert matched < shuffled - 1.0, (matched, shuffled)
    torch.manual_seed(0)
    untrained = ChannelEncoder(x.shape[1:], SMALL).eval()
    untrained.fit_normalization(x)
    before_same, before_different, before_matched, _ = agreement(untrained)
    assert same - different > before_same - before_different + 0.1
    assert matched < before_matched - 0.5, (matched, before_matched)


def test_save_load_round_trip_is_exact(trained, tmp_path):
    encoder, _ = trained
    path = save_encoder(encoder, tmp_path / "encoder.safetensors")
    loaded = load_encoder(path)
    assert loaded.config == encoder.config and loaded.input_shape == encoder.input_shape
    assert loaded.out_features == encoder.out_features == SMALL.width
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.from_numpy(csi_windows(per_class=2)[0])
    with torch.no_grad():
        assert torch.equal(encoder(x), loaded(x))


def test_damaged_or_missing_encoder_files_are_one_line_errors(trained, tmp_path):
    encoder, _ = trained
    path = save_encoder(encoder, tmp_path / "encoder.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # inside the last tensor's bytes: the header still parses
    path.write_bytes(bytes(raw))
    with pytest.raises(PretrainError, match="SHA-256") as caught:
        load_encoder(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    path.write_bytes(bytes(raw[:40]))
    with pytest.raises(PretrainError, match="not a readable channel encoder") as caught:
        load_encoder(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(PretrainError, match="no saved channel encoder"):
        load_encoder(tmp_path / "absent.safetensors")


def test_fraction_sampling_keeps_one_per_class_and_is_seeded():
    y = np.array([0] * 200 + [1] * 30 + [2] * 3)
    few = sample_fraction(y, 0.01, seed=0)
    assert np.bincount(y[few]).tolist() == [2, 1, 1]
    tenth = sample_fraction(y, 0.1, seed=0)
    assert np.bincount(y[tenth]).tolist() == [20, 3, 1]
    assert np.array_equal(tenth, sample_fraction(y, 0.1, seed=0))
    assert not np.array_equal(tenth, sample_fraction(y, 0.1, seed=1))
    assert len(np.unique(tenth)) == len(tenth)
    with pytest.raises(PretrainError, match="fraction"):
        sample_fraction(y, 0.0, seed=0)


def test_evaluation_modes_and_their_errors(trained):
    encoder, _ = trained
    x, y = csi_windows(per_class=20)
    x_test, y_test = csi_windows(per_class=10, seed=1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    probe = evaluate_labels(encoder, x, y, x_test, y_test, 0.25, "linear-probe", seed=0, steps=100)
    tuned = evaluate_labels(encoder, x, y, x_test, y_test, 0.25, "fine-tune", seed=0, steps=30)
    scratch = evaluate_labels(None, x, y, x_test, y_test, 0.25, "scratch", seed=0, config=SMALL, steps=30)
    # four classes: chance is 0.25; the pretrained probe must be well above it
    assert probe > 0.6, probe
    assert 0.0 <= tuned <= 1.0 and 0.0 <= scratch <= 1.0
    assert probe == evaluate_labels(encoder, x, y, x_test, y_test, 0.25, "linear-probe", seed=0, steps=100)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), f"evaluation changed the pretrained {key}"
    with pytest.raises(PretrainError, match="unknown evaluation mode 'probe'"):
        evaluate_labels(encoder, x, y, x_test, y_test, 0.1, "probe")
    with pytest.raises(PretrainError, match="needs a pretrained encoder"):
        evaluate_labels(None, x, y, x_test, y_test, 0.1, "fine-tune")
    with pytest.raises(PretrainError, match=r"\(N, 32, 10\)"):
        evaluate_labels(encoder, x[:, :16], y, x_test[:, :16], y_test, 0.1, "linear-probe")


def test_config_round_trips_and_refuses_nonsense():
    config = PretrainConfig(mask_ratio=0.6, width=16, heads=2)
    assert PretrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(PretrainError, match="unknown pretraining option.*mask_rato"):
        PretrainConfig.from_dict({"mask_rato": 0.5})
    with pytest.raises(PretrainError, match="mask_ratio"):
        PretrainConfig(mask_ratio=1.0)
    with pytest.raises(PretrainError, match="multiple of heads"):
        PretrainConfig(width=30, heads=4)
    with pytest.raises(PretrainError, match="single patch"):
        pretrain(np.zeros((4, 4, 4), np.float32), PretrainConfig(steps=1, batch_size=2))


def test_a_tiny_comparison_returns_every_mode_and_fraction():
    from crossedge.core.builtins.datasets import SyntheticShift

    dataset = SyntheticShift("pretrain-shift", subjects=2, windows=10, seed=0)
    config = PretrainConfig(steps=15, batch_size=16, width=16, heads=2)
    messages = []
    result = run_pretrain_comparison(
        dataset, (0.05, 0.2), seeds=(0, 1), config=config, steps=10, progress=messages.append
    )
    rows = {(row["mode"], row["fraction"]): row for row in result["rows"]}
    assert set(rows) == {(mode, fraction) for mode in MODES for fraction in (0.05, 0.2)}
    for row in rows.values():
        assert len(row["accuracies"]) == 2
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["accuracy_std"] >= 0.0
    # 72 training windows, 24 per class: 5% rounds to one per class, 20% to five
    assert result["train_windows"] == 72
    assert rows[("scratch", 0.05)]["labelled"] == 3 and rows[("fine-tune", 0.2)]["labelled"] == 15
    assert [loss["seed"] for loss in result["pretrain_losses"]] == [0, 1]
    assert any("pretraining" in message for message in messages)
    table = comparison_table(result)
    assert all(mode in table for mode in MODES) and "+-" in table
