"""Speech made on this machine: espeak-ng synthesis, WAV files and spectral features.

Bona fide speech for the deepfake, Zipper and audit tasks comes from Debian's ``espeak-ng``
with varied voices, speaking rates and pitch (:func:`synthesize`, :func:`synthesize_many`,
which caches its results as safetensors under the crossedge cache, keyed by every setting
and espeak-ng's version). Nothing recorded by anybody else is used or committed.

Features are computed in torch from one power spectrogram (:func:`power_spectrogram`):
log-mel (HTK mel scale, triangular filters), MFCC (orthonormal DCT-II of the log-mel) and
LFCC (the same on linearly spaced filters, as spoofing countermeasures use). torchaudio is
not used because no torchaudio release is built for the pinned torch (constraints.txt).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from crossedge.core.errors import CrossedgeError

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
FORMAT = "crossedge-speech-v1"

#: espeak-ng voices (base voice + variant) used for varied speakers; all ship with Debian's espeak-ng-data
VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-us+f3",
    "en-gb+f2",
    "en-us+m3",
    "en-gb-x-gbclan+f4",
)


class SpeechError(CrossedgeError, ValueError):
    """Speech could not be made or read: espeak-ng missing or failing, or an unreadable WAV file."""


@dataclass(frozen=True)
class Voice:
    """One speaker setting: espeak-ng voice name, rate (words per minute) and pitch (0-99)."""

    voice: str = "en-us"
    rate: int = 160
    pitch: int = 50


def espeak_path() -> str:
    """The ``espeak-ng`` executable, or a one-line error saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechError("espeak-ng is not installed; install it (Debian/Ubuntu: apt-get install espeak-ng)")
    return exe


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """espeak-ng's version line (part of every cache key: another version speaks differently)."""
    out = subprocess.run([espeak_path(), "--version"], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip()


@lru_cache(maxsize=1)
def known_voices() -> tuple[frozenset[str], frozenset[str]]:
    """``(voices, variants)`` espeak-ng knows: language codes and file names, and ``+variant`` names."""

    def listing(arg: str) -> list[list[str]]:
        out = subprocess.run([espeak_path(), arg], capture_output=True, text=True, timeout=30, check=False)
        return [line.split() for line in out.stdout.splitlines()[1:] if len(line.split()) >= 5]

    voices = {name for row in listing("--voices") for name in (row[1], row[4].rsplit("/", 1)[-1])}
    variants = {name for row in listing("--voices=variant") for name in (row[3], row[4].rsplit("/", 1)[-1])}
    return frozenset(voices), frozenset(variants)


def check_voice(voice: Voice) -> None:
    """Refuse a voice espeak-ng does not have (it would silently speak with its default voice)."""
    base, _, variant = voice.voice.partition("+")
    voices, variants = known_voices()
    if base not in voices or (variant and variant not in variants):
        raise SpeechError(f"espeak-ng has no voice {voice.voice!r}; pick one listed by `espeak-ng --voices`")
    if not (80 <= voice.rate <= 450 and 0 <= voice.pitch <= 99):
        raise SpeechError(f"voice {voice}: rate must be 80-450 words/minute and pitch 0-99")


def decode_wav(data: bytes, what: str = "WAV data") -> tuple[np.ndarray, int]:
    """``(mono float32 in [-1, 1], sample rate)`` of 16-bit PCM WAV bytes (channels are averaged)."""
    try:
        with wave.open(io.BytesIO(data)) as handle:
            rate, channels, width = handle.getframerate(), handle.getnchannels(), handle.getsampwidth()
            # espeak-ng streams a header with an unknown length: read to the end of the data
            frames = handle.readframes(1 << 31)
    except (wave.Error, EOFError) as exc:
        raise SpeechError(f"{what} is not a readable WAV file ({exc}); give a 16-bit PCM .wav") from exc
    if width != 2:
        raise SpeechError(f"{what} has {8 * width}-bit samples; convert it to 16-bit PCM (sox IN -b 16 OUT.wav)")
    samples = np.frombuffer(frames[: len(frames) // (2 * channels) * 2 * channels], dtype="<i2")
    audio = samples.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0
    return audio, rate


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as mono float32 at ``sample_rate`` (resampled when it differs)."""
    path = Path(path)
    if not path.is_file():
        raise SpeechError(f"{path} does not exist; give the path of a .wav file")
    audio, rate = decode_wav(path.read_bytes(), what=str(path))
    return resample(audio, rate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono float audio as 16-bit PCM (clipped to [-1, 1])."""
    path = Path(path)
    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())
    return path


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return np.asarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


def synthesize(text: str, voice: Voice | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """espeak-ng speech of ``text`` as mono float32 at ``sample_rate``, leading/trailing silence trimmed."""
    voice = voice or Voice()
    if not text.strip():
        raise SpeechError("cannot synthesize empty text; give at least one word")
    check_voice(voice)
    cmd = [espeak_path(), "--stdout", "-v", voice.voice, "-s", str(voice.rate), "-p", str(voice.pitch), "--", text]
    out = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if out.returncode != 0 or len(out.stdout) <= 44:
        message = out.stderr.decode(errors="replace").strip().splitlines()
        raise SpeechError(
            f"espeak-ng failed for voice {voice.voice!r} ({message[-1] if message else 'no output'}); "
            "pick a voice listed by `espeak-ng --voices`"
        )
    audio, rate = decode_wav(out.stdout, what="espeak-ng output")
    return trim_silence(resample(audio, rate, sample_rate))


def trim_silence(audio: np.ndarray, threshold: float = 1e-3, pad: int = 800) -> np.ndarray:
    """Cut leading and trailing samples quieter than ``threshold``, keeping ``pad`` samples of margin."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    return audio[max(0, loud[0] - pad) : loud[-1] + 1 + pad]


def _cache_file(items: Sequence[tuple[str, Voice]], sample_rate: int) -> Path:
    from crossedge.core.cache import cache_dir

    spec = {"format": FORMAT, "espeak": espeak_version(), "rate": sample_rate}
    key = json.dumps({**spec, "items": [[t, asdict(v)] for t, v in items]}, sort_keys=True)
    return cache_dir() / "speech" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def synthesize_many(
    items: Sequence[tuple[str, Voice]], sample_rate: int = SAMPLE_RATE, progress=None
) -> list[np.ndarray]:
    """:func:`synthesize` for every ``(text, voice)``, cached as one safetensors file per item list.

    A damaged cache file is made again, never trusted: the file's tensors are checked against
    the item count before use. ``progress`` (optional) is called once per synthesized item.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    path = _cache_file(items, sample_rate)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                audio, offsets = handle.get_tensor("audio").numpy(), handle.get_tensor("offsets").numpy()
            if len(offsets) == len(items) + 1 and offsets[-1] == len(audio):
                return [audio[offsets[i] : offsets[i + 1]].copy() for i in range(len(items))]
        except Exception:  # noqa: BLE001 (any unreadable cache file is rebuilt below)
            pass
    waves = []
    for text, voice in items:
        waves.append(synthesize(text, voice, sample_rate))
        if progress is not None:
            progress(1)
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in waves])]).astype(np.int64)
    tensors = {"audio": torch.from_numpy(np.concatenate(waves)), "offsets": torch.from_numpy(offsets)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        handle.write(save(tensors, metadata={"format": FORMAT}))
    return waves


# ---------------------------------------------------------------------------------------------
# features


def power_spectrogram(audio: torch.Tensor | np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """``|STFT|^2`` with a Hann window: (..., frames, n_fft // 2 + 1) for audio (..., samples)."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.shape[-1] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    lead = x.shape[:-1]
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]), n_fft, hop, window=torch.hann_window(n_fft), center=True, return_complex=True
    )
    return spec.abs().pow(2).transpose(-1, -2).reshape(*lead, -1, n_fft // 2 + 1)


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def triangular_filters(centers_hz: torch.Tensor, n_fft: int, sample_rate: int) -> torch.Tensor:
    """(n_fft // 2 + 1, len(centers) - 2) triangular filters with edges at consecutive ``centers_hz``."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, center, upper = centers_hz[:-2, None], centers_hz[1:-1, None], centers_hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).T.to(torch.float32)


def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, f_min: float = 0.0) -> torch.Tensor:
    """(bins, n_mels) triangular filters equally spaced on the HTK mel scale up to Nyquist."""
    mels = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(sample_rate / 2)), n_mels + 2, dtype=torch.float64)
    return triangular_filters(mel_to_hz(mels), n_fft, sample_rate)


def linear_filters(n_filters: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(bins, n_filters) triangular filters equally spaced in Hz (LFCC's filterbank)."""
    edges = torch.linspace(0.0, sample_rate / 2, n_filters + 2, dtype=torch.float64)
    return triangular_filters(edges, n_fft, sample_rate)


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_in, n_out) orthonormal DCT-II basis: ``x @ D`` gives the first ``n_out`` coefficients."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    basis = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None])
    basis[:, 0] *= 1.0 / math.sqrt(2.0)
    return (basis * math.sqrt(2.0 / n_in)).to(torch.float32)


def log_mel(audio, n_mels: int = 40, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(..., frames, n_mels) log mel energies."""
    return torch.log(power_spectrogram(audio) @ mel_filters(n_mels, sample_rate=sample_rate) + 1e-6)


def mfcc(audio, n_mfcc: int = 20, n_mels: int = 40, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(..., frames, n_mfcc) mel-frequency cepstral coefficients."""
    return log_mel(audio, n_mels, sample_rate) @ dct_matrix(n_mels, n_mfcc)


def lfcc(audio, n_lfcc: int = 20, n_filters: int = 40, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(..., frames, n_lfcc) linear-frequency cepstral coefficients."""
    energies = power_spectrogram(audio) @ linear_filters(n_filters, sample_rate=sample_rate)
    return torch.log(energies + 1e-6) @ dct_matrix(n_filters, n_lfcc)


def pad_batch(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (frames, dim) tensors to one (N, max_frames, dim) batch and its (N, max_frames) bool mask."""
    longest = max(f.shape[0] for f in features)
    out = torch.zeros(len(features), longest, features[0].shape[-1])
    mask = torch.zeros(len(features), longest, dtype=torch.bool)
    for i, f in enumerate(features):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask
