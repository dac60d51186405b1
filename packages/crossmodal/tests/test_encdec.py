"""The audit's encoder-decoder ASR model: shapes, exact attention weights, training, save/load."""

import numpy as np
import pytest
import torch

from crossedge.crossmodal import asr, encdec

TINY = encdec.EncDecConfig(width=32, heads=2, encoder_layers=1, decoder_layers=2, ff=64, dropout=0.0)


def fake(text, voice):
    """A chirp whose length and pitch follow the text: no espeak-ng needed."""
    t = np.arange(800 * (len(text) + 2)) / 16000
    base = 150 + 10 * (sum(map(ord, text)) % 40) + 5 * voice.pitch
    return (0.3 * np.sin(2 * np.pi * (base + 300 * t) * t)).astype(np.float32)


def test_shapes_and_attention_rows_are_distributions_over_real_positions():
    torch.manual_seed(0)
    model = encdec.EncoderDecoderAsr(TINY).eval()
    features = torch.randn(2, 11, TINY.input_dim)
    frame_mask = torch.ones(2, 11, dtype=torch.bool)
    frame_mask[1, 7:] = False
    memory = model.encode(features, frame_mask)
    assert memory.shape == (2, 6, 32) and model.frames_per_position == 2  # ceil(11 / 2)
    tokens = torch.tensor([[asr.BOS, 5, 6, 7], [asr.BOS, 8, 9, asr.PAD]])
    logits, attentions = model.decode(memory, tokens, model.memory_mask(frame_mask))
    assert logits.shape == (2, 4, TINY.vocab_size) and len(attentions) == TINY.decoder_layers
    for weights in attentions:
        assert weights.shape == (2, 2, 4, 6)
        assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 4))
        assert torch.all(weights[1, :, :, 4:] == 0)  # frames 8.. are padding: positions 4, 5 get no weight
    # causal: a token's logits do not depend on later tokens
    changed = tokens.clone()
    changed[0, 3] = 20
    assert torch.allclose(model.decode(memory, changed)[0][0, :3], model.decode(memory, tokens)[0][0, :3], atol=1e-6)


def test_gradients_reach_the_features_through_cross_attention():
    model = encdec.EncoderDecoderAsr(TINY).eval()
    features = torch.randn(1, 9, TINY.input_dim, requires_grad=True)
    logits, attentions = model.decode(model.encode(features), torch.tensor([[asr.BOS, 5]]))
    logits[0, 1, 6].backward()
    assert features.grad.abs().sum() > 0 and attentions[0].requires_grad


def test_training_on_chirps_lowers_the_loss_and_transcribes():
    corpus = asr.build_corpus(texts=16, test_fraction=0.25, audio_fn=fake)
    model, losses = encdec.train_encdec(corpus, steps=60, batch_size=8, lr=3e-3, config=TINY)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert not model.training
    result = encdec.evaluate(model, corpus, "test")
    assert len(result["hypotheses"]) == 4 and all(isinstance(h, str) for h in result["hypotheses"])
    assert result["cer"] == asr.cer(result["references"], result["hypotheses"])


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = encdec.EncoderDecoderAsr(TINY).eval()
    encdec.save(model, tmp_path / "m")
    again = encdec.load(tmp_path / "m")
    assert again.config == model.config and not again.training
    features = torch.randn(1, 13, TINY.input_dim)
    tokens = torch.tensor([[asr.BOS, 4, 5, 6]])
    a, b = model.decode(model.encode(features), tokens), again.decode(again.encode(features), tokens)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    assert model.transcribe(features, 8) == again.transcribe(features, 8)


def test_damaged_foreign_and_missing_folders_are_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    folder = encdec.save(encdec.EncoderDecoderAsr(TINY), tmp_path / "damaged")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(encdec.EncDecError, match="cannot read") as info:
        encdec.load(folder)
    assert "\n" not in str(info.value)
    (tmp_path / "foreign").mkdir()
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign" / "model.safetensors"), metadata={"format": "other"})
    with pytest.raises(encdec.EncDecError, match="not a saved encoder-decoder"):
        encdec.load(tmp_path / "foreign")
    with pytest.raises(encdec.EncDecError, match="does not exist"):
        encdec.load(tmp_path / "nowhere")


def test_config_refuses_widths_that_do_not_split():
    with pytest.raises(encdec.EncDecError, match="divisible"):
        encdec.EncDecConfig(width=30, heads=4)


def test_mask_spans_zeroes_bands_and_spans_of_a_copy():
    features = torch.ones(50, 80)
    masked = encdec.mask_spans(features, np.random.default_rng(3), bands=2, spans=2)
    assert torch.all(features == 1) and masked.shape == features.shape
    zero_columns, zero_rows = (masked == 0).all(0).sum(), (masked == 0).all(1).sum()
    assert 0 < zero_columns <= 16 and zero_rows <= 10 and set(masked.unique().tolist()) <= {0.0, 1.0}


def test_save_never_replaces_a_file_it_did_not_write(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"someone else's weights")
    model = encdec.EncoderDecoderAsr(TINY)
    with pytest.raises(encdec.EncDecError, match="was not written as"):
        encdec.save(model, folder)
    assert (folder / "model.safetensors").read_bytes() == b"someone else's weights"
    ours = encdec.save(model, tmp_path / "ours")
    encdec.save(model, ours)  # an earlier save of the same format may be replaced
    assert encdec.load(ours).config == model.config
