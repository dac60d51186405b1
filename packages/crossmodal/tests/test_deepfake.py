"""The deepfake task: SSL masked prediction, the text/voice split, the corpus cache and the bench end to end.

Everything runs on synthetic voiced audio from a fake speaker; one test builds a tiny corpus with
espeak-ng where it is installed.
"""

import json
import math
import shutil
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from crossedge.crossmodal import deepfake, speech, ssl

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
RATE = speech.SAMPLE_RATE
EXPECTED = {"view-a", "view-b", "concat", "cross-attention", "mutual", "gated"}


def fake_speech(text: str, voice: speech.Voice) -> np.ndarray:
    """Voiced 'speech' whose length follows the text and whose pitch and melody follow the voice and text."""
    rng = np.random.default_rng(zlib.crc32(f"{text}|{voice}".encode()))
    seconds = 0.04 * len(text.split()) + 0.2
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 90.0 + 2.0 * voice.pitch + 10.0 * (zlib.crc32(voice.voice.encode()) % 7)
    pitch = f0 * (1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    wave = sum(np.sin(k * phase) * rng.uniform(0.2, 1.0) / k for k in range(1, 16))
    envelope = 0.4 + 0.6 * np.abs(np.sin(2 * np.pi * rng.uniform(2.0, 5.0) * t))
    return (0.1 * envelope * wave).astype(np.float32)


def fake_speak(items):
    return [fake_speech(text, voice) for text, voice in items]


TINY = deepfake.CorpusConfig(texts=9)


@pytest.fixture(scope="module")
def tiny_corpus():
    return deepfake.build_corpus(TINY, speak=fake_speak, voices=speech.VOICES)


def log_mels(n: int = 12, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [
        speech.log_mel(fake_speech(" ".join(["w"] * int(rng.integers(4, 9))), speech.Voice(pitch=int(p))))
        for p in rng.integers(10, 90, n)
    ]


SMALL = ssl.EncoderConfig(n_mels=40, width=16, layers=1, heads=2)


def test_span_mask_hides_about_the_ratio_only_inside_the_mask():
    mask = torch.ones(64, 200, dtype=torch.bool)
    mask[:, 150:] = False
    hidden = ssl.span_mask(mask, ratio=0.4, span=8, generator=torch.Generator().manual_seed(0))
    assert not hidden[:, 150:].any()
    assert hidden[:, :150].any(dim=1).all()
    fraction = hidden[:, :150].float().mean().item()
    # starts with probability ratio / span, overlapping spans merge: 1 - (1 - 0.05) ** 8 ~ 0.34
    assert 0.25 < fraction < 0.45, fraction


def test_masked_prediction_loss_falls_on_synthetic_speech():
    model, losses = ssl.pretrain(log_mels(), steps=60, seed=0, config=SMALL, batch=8, crop=64, lr=3e-3)
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    # the reconstruction of hidden frames beats predicting the mean (loss 1 on standardized frames)
    assert np.mean(losses[-10:]) < 0.8


def test_encoder_tokens_do_not_depend_on_batch_padding():
    torch.manual_seed(0)
    model = ssl.MaskedSpeechEncoder(**vars(SMALL)).eval()
    features = log_mels(5)
    together = ssl.encode(model, features, batch=5)
    for f, tokens in zip(features, together, strict=True):
        assert tokens.shape == (math.ceil(f.shape[0] / ssl.STRIDE), SMALL.width)
        torch.testing.assert_close(ssl.encode(model, [f])[0], tokens, rtol=1e-4, atol=1e-5)
    # every level: the convolution output and each layer, the last one equal to the plain tokens up to its norm
    levels = ssl.encode(model, features[:2], all_layers=True)
    assert levels[0].shape == (together[0].shape[0], (SMALL.layers + 1) * SMALL.width)
    torch.testing.assert_close(ssl.encode(model, features[1:2], all_layers=True)[0], levels[1], rtol=1e-4, atol=1e-5)


def test_encoder_save_load_round_trip_and_refusals(tmp_path):
    model, _ = ssl.pretrain(log_mels(4), steps=3, seed=1, config=SMALL, batch=4, crop=32)
    path = ssl.save_encoder(model, tmp_path / "enc.safetensors")
    loaded = ssl.load_encoder(path)
    assert loaded.config == model.config
    f = log_mels(1, seed=5)[0]
    torch.testing.assert_close(ssl.encode(loaded, [f])[0], ssl.encode(model, [f])[0])
    torch.testing.assert_close(loaded.mean, model.mean)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ssl.SSLError, match="cannot read speech encoder") as info:
        ssl.load_encoder(damaged)
    assert "\n" not in str(info.value)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(ssl.SSLError, match="not a saved speech encoder"):
        ssl.load_encoder(foreign)


def test_split_never_shares_a_text_or_a_voice():
    items, splits = deepfake.plan_items(deepfake.CorpusConfig(texts=30))
    assert len(items) == 30 and splits.count("test") == 10
    side = {s: [item for item, k in zip(items, splits, strict=True) if k == s] for s in ("train", "test")}
    for attribute in (lambda it: it[0], lambda it: it[1].voice):
        train = {attribute(it) for it in side["train"]}
        test = {attribute(it) for it in side["test"]}
        assert train and test and not train & test
    assert len({it[1].voice for it in side["test"]}) == deepfake.TEST_VOICES
    # the plan is seeded
    assert deepfake.plan_items(deepfake.CorpusConfig(texts=30)) == (items, splits)


def test_corpus_holds_every_text_bona_fide_and_spoofed(tiny_corpus):
    c = tiny_corpus
    kinds = (deepfake.BONA_FIDE, *TINY.spoofers)
    assert len(c.label) == TINY.texts * len(kinds)
    for text in set(c.text):
        rows = [i for i, t in enumerate(c.text) if t == text]
        assert sorted(c.kind[i] for i in rows) == sorted(kinds)
        assert len({c.split[i] for i in rows}) == 1 and len({c.voice[i] for i in rows}) == 1
    assert set(c.label[[i for i, k in enumerate(c.kind) if k == deepfake.BONA_FIDE]]) == {1}
    assert c.lfcc[0].shape[-1] == TINY.n_lfcc and c.log_mel[0].shape[-1] == TINY.n_mels
    assert all(a.shape[0] == b.shape[0] for a, b in zip(c.lfcc, c.log_mel, strict=True))


def test_channel_sets_the_level_and_the_noise_floor():
    x = fake_speech("a b c d", speech.Voice())
    y = deepfake.channel(10 * x, rms=0.05, snr_db=30.0, seed=0)
    assert np.sqrt(np.mean(y**2)) == pytest.approx(0.05, rel=0.01)
    silent = deepfake.channel(np.r_[x, np.zeros(4000, np.float32)], rms=0.05, snr_db=30.0, seed=0)[-4000:]
    assert np.sqrt(np.mean(silent**2)) > 0.0005  # digital silence is gone


def test_corpus_cache_round_trip_and_damaged_file_rebuilt(tiny_corpus, tmp_path):
    path = tmp_path / "corpus.safetensors"
    deepfake._save_corpus(tiny_corpus, path)
    back = deepfake._load_corpus(path)
    assert back.kind == tiny_corpus.kind and back.split == tiny_corpus.split
    np.testing.assert_array_equal(back.label, tiny_corpus.label)
    torch.testing.assert_close(back.log_mel[5], tiny_corpus.log_mel[5])
    path.write_bytes(path.read_bytes()[:100])
    assert deepfake._load_corpus(path) is None


def test_deltas_and_token_stacking():
    ramp = torch.arange(10.0)[:, None].repeat(1, 3) * 2.0
    d = deepfake.deltas(ramp)
    torch.testing.assert_close(d[2:-2], torch.full((6, 3), 2.0))
    assert deepfake.spectral_frames(ramp).shape == (10, 9)
    tokens = deepfake.stack_frames(torch.arange(10.0)[:, None])
    assert tokens.shape == (3, 4) and tokens[0].tolist() == [0, 1, 2, 3] and tokens[2].tolist() == [8, 9, 0, 0]


def test_bench_end_to_end_reports_every_block_and_both_views(tiny_corpus, plugin, tmp_path):
    result = deepfake.deepfake_bench(tiny_corpus, seeds=[0, 1], ssl_steps=3, steps=4, encoder_width=16)
    assert set(result["results"]) == EXPECTED
    for row in result["results"].values():
        assert len(row["eer"]["per_seed"]) == 2 and all(0.0 <= e <= 1.0 for e in row["eer"]["per_seed"])
        assert set(row["eer_by_spoofer"]) == set(TINY.spoofers)
    assert result["results"]["mutual"]["views"] == "a+b" and result["results"]["view-b"]["views"] == "b"
    assert not set(result["train"]["voices"]) & set(result["test"]["voices"])
    table = deepfake.format_table(result)
    assert all(name in table for name in EXPECTED)
    json.dumps(result)  # JSON-ready
    png = deepfake.plot(result, tmp_path / "eer.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_held_out_spoofer_is_never_trained_on(tiny_corpus, plugin):
    train = tiny_corpus.indices("train", exclude_kind="world")
    assert "world" not in {tiny_corpus.kind[i] for i in train}
    assert "world" in {tiny_corpus.kind[i] for i in tiny_corpus.indices("test")}
    result = deepfake.deepfake_bench(
        tiny_corpus, seeds=[0], ssl_steps=2, steps=2, encoder_width=16, fusions=("gated:width=8",),
        held_out_spoofer="world",
    )  # fmt: skip
    assert set(result["results"]) == {"view-a", "view-b", "gated"} and result["held_out_spoofer"] == "world"
    with pytest.raises(deepfake.DeepfakeBenchError, match="cannot hold out spoofer 'wavenet'"):
        deepfake.deepfake_bench(tiny_corpus, seeds=[0], ssl_steps=1, steps=1, held_out_spoofer="wavenet")


def test_cli_bench_deepfake_writes_json_and_png(tiny_corpus, plugin, tmp_path, monkeypatch):
    from crossedge.core.cli import build_cli

    monkeypatch.setattr(deepfake, "build_corpus", lambda config, progress=None: tiny_corpus)
    out, png = tmp_path / "df.json", tmp_path / "df.png"
    args = ["crossmodal", "bench", "--task", "deepfake", "--seeds", "1", "--ssl-steps", "2", "--steps", "2"]
    result = CliRunner().invoke(build_cli(), [*args, "--json", str(out), "--plot", str(png)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cross-attention" in result.output and "EER" in result.output
    data = json.loads(out.read_text())
    assert set(data["results"]) == EXPECTED and png.is_file()


@needs_espeak
def test_tiny_espeak_corpus_is_cached_and_split_by_text_and_voice(monkeypatch):
    config = deepfake.CorpusConfig(texts=6, spoofers=("codec",))
    corpus = deepfake.build_corpus(config)
    for attribute in (corpus.text, corpus.voice):
        train = {a for a, s in zip(attribute, corpus.split, strict=True) if s == "train"}
        test = {a for a, s in zip(attribute, corpus.split, strict=True) if s == "test"}
        assert train and test and not train & test
    # the second build reads the cache: neither espeak-ng nor a spoofer runs again
    monkeypatch.setattr(speech, "synthesize_many", lambda *a, **k: pytest.fail("synthesized again"))
    again = deepfake.build_corpus(config)
    assert again.text == corpus.text and again.kind == corpus.kind
    torch.testing.assert_close(again.lfcc[3], corpus.lfcc[3])
