"""Spoofed speech made here: bona fide audio passed through vocoder resynthesis or a low-bitrate codec.

Every spoofer takes mono float32 audio at 16 kHz and a seed and returns float32 audio of the
same length (resynthesis changes the length by a few samples; the result is cut or padded
back). The registry :data:`SPOOFERS` maps a name to its function:

- ``world``: WORLD vocoder analysis and resynthesis (``pyworld``) every 10 ms: F0 by DIO
  refined by StoneMask (or Harvest), the spectral envelope by CheapTrick, aperiodicity by D4C,
  then :func:`pyworld.synthesize`. WORLD is deterministic; the seed is accepted and unused.
- ``griffin-lim``: the magnitude STFT kept (512-point, hop 128), the phase thrown away and
  re-estimated by 16 Griffin-Lim iterations from a seeded random initial phase, written in
  torch (:func:`griffin_lim`; its ``momentum`` option is the "fast" variant of Perraudin et
  al., 2013, off by default so the phase artifacts of a cheap vocoder remain).
- ``codec``: a narrowband waveform codec: low-pass and downsample to 8 kHz, mu-law companding
  quantized to 4 bits per sample with seeded triangular dither, then expanded and upsampled
  to 16 kHz. 8000 samples/s x 4 bits = 32 kbit/s, an eighth of 16-bit 16 kHz PCM (256 kbit/s),
  and everything above 4 kHz is gone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from crossedge.core.errors import CrossedgeError

SAMPLE_RATE = 16000
GL_N_FFT = 512
GL_HOP = 128
#: bumped whenever a spoofer's output changes (part of the deepfake corpus cache key)
VERSION = "1"


class SpoofError(CrossedgeError, ValueError):
    """A spoofer that cannot run: a missing optional dependency, an unknown name or unusable audio."""


def _as_audio(audio: Any) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise SpoofError(f"a spoofer takes one mono signal (samples,); got shape {x.shape}")
    return x


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if len(y) >= n:
        return y[:n].copy()
    return np.pad(y, (0, n - len(y)))


def _pyworld() -> Any:
    try:
        with warnings.catch_warnings():
            # pyworld imports pkg_resources, which warns about its own deprecation
            warnings.simplefilter("ignore")
            import pyworld
    except ImportError as exc:
        raise SpoofError(
            f"WORLD resynthesis needs pyworld ({exc}); install it: pip install 'crossedge-crossmodal[speech]'"
        ) from None
    return pyworld


def world_resynthesis(
    audio: np.ndarray, seed: int = 0, sample_rate: int = SAMPLE_RATE, f0_method: str = "dio", frame_period: float = 10.0
) -> np.ndarray:
    """WORLD analysis (F0, CheapTrick envelope, D4C aperiodicity) and resynthesis, same length as ``audio``."""
    x = _as_audio(audio)
    pw = _pyworld()
    if f0_method not in ("dio", "harvest"):
        raise SpoofError(f"WORLD F0 method {f0_method!r} is unknown; use 'dio' or 'harvest'")
    xd = x.astype(np.float64)
    if f0_method == "harvest":
        f0, times = pw.harvest(xd, sample_rate, frame_period=frame_period)
    else:
        f0, times = pw.dio(xd, sample_rate, frame_period=frame_period)
        f0 = pw.stonemask(xd, f0, times, sample_rate)
    envelope = pw.cheaptrick(xd, f0, times, sample_rate)
    aperiodicity = pw.d4c(xd, f0, times, sample_rate)
    y = pw.synthesize(f0, envelope, aperiodicity, sample_rate, frame_period)
    return _fit_length(y, len(x))


def _stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    return torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, dtype=x.dtype), center=True, return_complex=True)


def _istft(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=spec.real.dtype)
    return torch.istft(spec, n_fft, hop, window=window, center=True, length=length)


def spectral_convergence(audio: Any, magnitude: torch.Tensor, n_fft: int = GL_N_FFT, hop: int = GL_HOP) -> float:
    """``||  |STFT(audio)| - magnitude ||_F / ||magnitude||_F``: how far a signal's magnitude is from the target."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    est = _stft(x, n_fft, hop).abs()
    return float(torch.linalg.norm(est - magnitude) / torch.linalg.norm(magnitude).clamp_min(1e-12))


def griffin_lim(
    magnitude: torch.Tensor,
    length: int,
    n_iter: int = 32,
    seed: int = 0,
    momentum: float = 0.99,
    n_fft: int = GL_N_FFT,
    hop: int = GL_HOP,
    errors: list[float] | None = None,
) -> torch.Tensor:
    """A signal of ``length`` samples whose STFT magnitude approaches ``magnitude`` (bins, frames).

    Starts from a seeded uniform random phase; each iteration projects onto consistent STFTs
    (istft then stft) and resets the magnitude. ``momentum`` > 0 is the fast Griffin-Lim
    extrapolation; 0 is the original algorithm. When ``errors`` is a list, the spectral
    convergence of the signal after every iteration is appended to it.
    """
    if n_iter < 1:
        raise SpoofError(f"Griffin-Lim needs at least one iteration; got n_iter={n_iter}")
    if not 0.0 <= momentum < 1.0:
        raise SpoofError(f"Griffin-Lim momentum must be in [0, 1); got {momentum}")
    generator = torch.Generator().manual_seed(int(seed))
    phase = torch.rand(magnitude.shape, generator=generator) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    signal = _istft(magnitude * angles, n_fft, hop, length)
    for _ in range(n_iter):
        rebuilt = _stft(signal, n_fft, hop)
        angles = rebuilt - (momentum / (1.0 + momentum)) * previous if momentum else rebuilt
        previous = rebuilt
        angles = angles / angles.abs().clamp_min(1e-16)
        signal = _istft(magnitude * angles, n_fft, hop, length)
        if errors is not None:
            errors.append(spectral_convergence(signal.numpy(), magnitude, n_fft, hop))
    return signal


def griffin_lim_resynthesis(audio: np.ndarray, seed: int = 0, n_iter: int = 16, momentum: float = 0.0) -> np.ndarray:
    """The magnitude STFT of ``audio`` turned back into a waveform by Griffin-Lim (the phase is re-estimated)."""
    x = _as_audio(audio)
    magnitude = _stft(torch.from_numpy(x), GL_N_FFT, GL_HOP).abs()
    return griffin_lim(magnitude, len(x), n_iter=n_iter, seed=seed, momentum=momentum).numpy().astype(np.float32)


def mu_law_codec(
    audio: np.ndarray, seed: int = 0, sample_rate: int = SAMPLE_RATE, codec_rate: int = 8000, bits: int = 4
) -> np.ndarray:
    """Downsample to ``codec_rate``, mu-law quantize to ``bits`` per sample (dithered), expand and upsample back.

    The bitrate is ``codec_rate * bits`` (32 kbit/s by default).
    """
    from .speech import resample

    x = _as_audio(audio)
    if not 2 <= bits <= 8:
        raise SpoofError(f"codec bits must be 2-8; got {bits}")
    mu = 255.0
    narrow = np.clip(resample(x, sample_rate, codec_rate).astype(np.float64), -1.0, 1.0)
    companded = np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / math.log1p(mu)
    levels = 2**bits - 1
    rng = np.random.default_rng([int(seed), 2024])
    dither = rng.uniform(-0.5, 0.5, narrow.shape) + rng.uniform(-0.5, 0.5, narrow.shape)
    codes = np.clip(np.round((companded + 1.0) / 2.0 * levels + dither), 0, levels)
    decoded = codes / levels * 2.0 - 1.0
    expanded = np.sign(decoded) * np.expm1(np.abs(decoded) * math.log1p(mu)) / mu
    return _fit_length(resample(expanded.astype(np.float32), codec_rate, sample_rate), len(x))


#: name -> spoofer ``(audio, seed) -> audio``, all at 16 kHz
SPOOFERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "world": world_resynthesis,
    "griffin-lim": griffin_lim_resynthesis,
    "codec": mu_law_codec,
}


def get_spoofer(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """The spoofer registered as ``name``, or a one-line error listing the names."""
    try:
        return SPOOFERS[name]
    except KeyError:
        raise SpoofError(f"unknown spoofer {name!r}; choose from {', '.join(SPOOFERS)}") from None


def spoof(audio: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """``audio`` passed through the spoofer ``name`` with ``seed``."""
    return get_spoofer(name)(audio, seed)
