"""Speech I/O and features: known answers on hand-made signals; espeak-ng only where installed."""

import shutil

import numpy as np
import pytest
import torch

from crossedge.crossmodal import speech

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def tone(freq: float, seconds: float = 0.5, rate: int = speech.SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_dct_is_orthonormal():
    d = speech.dct_matrix(40, 40)
    assert torch.allclose(d.T @ d, torch.eye(40), atol=1e-5)


def test_filters_peak_where_placed():
    mel = speech.mel_filters(20)
    lin = speech.linear_filters(20)
    assert mel.shape == lin.shape == (speech.N_FFT // 2 + 1, 20)
    # linear filters are spaced evenly: their peak bins are evenly spaced too
    peaks = lin.argmax(0).numpy()
    assert np.ptp(np.diff(peaks)) <= 1
    # mel filters get wider with frequency
    widths = (mel > 0).sum(0).numpy()
    assert widths[-1] > 3 * widths[0]
    assert (mel.max(0).values > 0.5).all()


def test_a_tone_lands_in_its_filter():
    energies = speech.power_spectrogram(tone(2000.0)) @ speech.linear_filters(20)
    centers = np.linspace(0, speech.SAMPLE_RATE / 2, 22)[1:-1]
    assert energies.mean(0).argmax().item() == int(np.abs(centers - 2000.0).argmin())


def test_feature_shapes_batch_and_pad():
    audio = np.stack([tone(440.0), tone(880.0)])
    assert speech.mfcc(audio).shape == (2, 51, 20)
    assert speech.lfcc(audio, n_lfcc=13).shape == (2, 51, 13)
    assert speech.log_mel(audio[0], n_mels=32).shape == (51, 32)
    batch, mask = speech.pad_batch([torch.ones(3, 2), torch.ones(5, 2)])
    assert batch.shape == (2, 5, 2) and mask.sum(1).tolist() == [3, 5] and batch[0, 3:].abs().sum() == 0


def test_wav_round_trip_and_resample(tmp_path):
    audio = tone(300.0)
    path = speech.write_wav(tmp_path / "a.wav", audio, 8000)
    back = speech.read_wav(path, sample_rate=8000)
    assert np.abs(back - audio).max() < 1e-3
    up = speech.read_wav(path)  # 8 kHz file read at 16 kHz
    assert abs(len(up) - 2 * len(audio)) <= 1


def test_bad_wav_files_get_one_line_errors(tmp_path):
    with pytest.raises(speech.SpeechError, match="does not exist"):
        speech.read_wav(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(speech.SpeechError, match="not a readable WAV"):
        speech.read_wav(tmp_path / "junk.wav")


def test_missing_espeak_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.SpeechError, match="apt-get install espeak-ng"):
        speech.synthesize("hello")


@needs_espeak
def test_synthesis_is_cached_and_voices_differ(cache):
    items = [("one two three", speech.Voice("en-us", 170, 40)), ("one two three", speech.Voice("en-gb+f2", 140, 70))]
    calls = []
    first = speech.synthesize_many(items, progress=calls.append)
    assert len(calls) == 2 and all(len(w) > 4000 for w in first)
    assert len(first[0]) != len(first[1])
    again = speech.synthesize_many(items, progress=calls.append)
    assert len(calls) == 2  # served from the cache
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # a damaged cache file is rebuilt, not trusted
    (target,) = list((cache / "speech").glob("*.safetensors"))
    target.write_bytes(b"garbage")
    rebuilt = speech.synthesize_many(items, progress=calls.append)
    assert len(calls) == 4 and np.array_equal(rebuilt[0], first[0])


@needs_espeak
def test_unknown_voice_is_refused():
    with pytest.raises(speech.SpeechError, match="espeak-ng --voices"):
        speech.synthesize("hello", speech.Voice("no-such-voice"))
