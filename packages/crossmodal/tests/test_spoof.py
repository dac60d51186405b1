"""Spoofers on synthetic voiced audio: shape, determinism, real change, Griffin-Lim convergence, missing pyworld."""

import builtins

import numpy as np
import pytest
import torch

from crossedge.crossmodal import speech, spoof

RATE = speech.SAMPLE_RATE


def voiced(seconds: float = 0.6, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a gliding pitch, a syllable-like envelope and a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = f0 * (1.0 + 0.1 * np.sin(2 * np.pi * 2.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (0.2 * envelope * wave + noise).astype(np.float32)


@pytest.mark.parametrize("name", list(spoof.SPOOFERS))
def test_spoofer_keeps_shape_and_dtype_is_seeded_and_changes_the_signal(name):
    x = voiced()
    y = spoof.spoof(x, name, seed=3)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(spoof.spoof(x, name, seed=3), y)
    # it really changes the waveform, yet keeps most of the signal's energy (it is still speech)
    assert np.abs(y - x).mean() > 0.01 * np.abs(x).mean()
    ratio = np.sqrt(np.mean(y**2) / np.mean(x**2))
    assert 0.5 < ratio < 2.0, ratio


def test_seeded_spoofers_differ_between_seeds():
    x = voiced()
    for name in ("griffin-lim", "codec"):
        assert not np.array_equal(spoof.spoof(x, name, seed=0), spoof.spoof(x, name, seed=1)), name


def test_codec_removes_everything_above_4_khz():
    x = voiced() + 0.1 * np.sin(2 * np.pi * 6000.0 * np.arange(int(0.6 * RATE)) / RATE).astype(np.float32)
    y = spoof.mu_law_codec(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    band = (freqs > 5500) & (freqs < 6500)
    assert np.abs(np.fft.rfft(y))[band].max() < 0.05 * np.abs(np.fft.rfft(x))[band].max()


def test_world_resynthesis_follows_the_pitch():
    x = voiced(f0=200.0)
    y = spoof.world_resynthesis(x)
    spectrum_x = np.abs(np.fft.rfft(x))
    spectrum_y = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    low = (freqs > 100) & (freqs < 300)
    # the fundamental's region keeps its peak frequency within a few Hz
    assert abs(freqs[low][spectrum_y[low].argmax()] - freqs[low][spectrum_x[low].argmax()]) < 15


@pytest.mark.parametrize("momentum", [0.0, 0.99])
def test_griffin_lim_reduces_spectral_convergence(momentum):
    x = voiced(0.5)
    magnitude = spoof._stft(torch.from_numpy(x), spoof.GL_N_FFT, spoof.GL_HOP).abs()
    errors: list[float] = []
    y = spoof.griffin_lim(magnitude, len(x), n_iter=24, seed=0, momentum=momentum, errors=errors)
    assert len(errors) == 24 and y.shape == (len(x),)
    assert errors[-1] < 0.7 * errors[0]
    # plain Griffin-Lim never increases the inconsistency (it is a projection algorithm)
    if momentum == 0.0:
        assert all(b <= a + 1e-4 for a, b in zip(errors, errors[1:], strict=False))
    assert spoof.spectral_convergence(y.numpy(), magnitude) == pytest.approx(errors[-1], rel=1e-4)


def test_unknown_spoofer_and_bad_audio_are_one_line_errors():
    with pytest.raises(spoof.SpoofError, match="choose from world, griffin-lim, codec"):
        spoof.get_spoofer("wavenet")
    with pytest.raises(spoof.SpoofError, match="mono"):
        spoof.mu_law_codec(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(spoof.SpoofError, match="iteration"):
        spoof.griffin_lim(torch.ones(257, 4), 384, n_iter=0)


def test_missing_pyworld_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_pyworld(name, *args, **kwargs):
        if name == "pyworld" or name == "pkg_resources":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "pyworld", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pyworld)
    with pytest.raises(spoof.SpoofError, match=r"pip install 'crossedge-crossmodal\[speech\]'") as info:
        spoof.world_resynthesis(voiced(0.2))
    assert "\n" not in str(info.value)
