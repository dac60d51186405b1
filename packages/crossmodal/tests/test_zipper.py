"""Zipper: gated cross-attention into a frozen text tower (a tiny random Llama here), its freeze, save/load, bench."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from crossedge.core.cli import build_cli
from crossedge.core.sources import load_model
from crossedge.crossmodal import asr, audit, encdec, speech, zipper

SPEECH = zipper.SpeechTowerConfig(width=32, heads=2, layers=1, ff=64, dropout=0.0)
FUSION = zipper.ZipperConfig(every=2, width=16, heads=2, dropout=0.0, max_len=12)


def tiny_tower(folder, seed=0, layers=4):
    """A random 4-layer Llama (width 32) with a character tokenizer (<s> 1, </s> 2), saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(asr.ALPHABET)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    return tiny_tower(tmp_path_factory.mktemp("tower"))


@pytest.fixture
def tower(tower_dir):
    return load_model(tower_dir)


def fake(text, voice):
    """A chirp whose length and pitch follow the text: no espeak-ng needed."""
    t = np.arange(800 * (len(text) + 2)) / 16000
    base = 150 + 10 * (sum(map(ord, text)) % 40) + 5 * voice.pitch
    return (0.3 * np.sin(2 * np.pi * (base + 300 * t) * t)).astype(np.float32)


def zipped(tower, config=FUSION, seed=0):
    torch.manual_seed(seed)
    return zipper.ZipperModel(tower.model, tower.tokenizer, zipper.SpeechTower(SPEECH), config, tower.name)


def open_gates(model, value=0.5):
    with torch.no_grad():
        for block in model.blocks:
            block.gate.fill_(value)


def test_blocks_go_after_every_kth_layer_and_gate_zero_gives_the_text_towers_logits(tower):
    model = zipped(tower)
    assert model.inserted == [1, 3] and len(model.blocks) == 2 and model.frames_per_position == 2
    tokens = torch.tensor([[1, 5, 9, 12, 4]])
    memory = model.encode(torch.randn(1, 13, SPEECH.input_dim))
    own = tower.model(input_ids=tokens).logits
    assert torch.equal(model.decode(None, tokens)[0], own)  # text only: the tower's own logits
    assert torch.equal(model.decode(memory, tokens)[0], own)  # fused, gates at 0: still the tower's
    open_gates(model)
    assert not torch.allclose(model.decode(memory, tokens)[0], own)
    assert torch.equal(model.decode(None, tokens)[0], own)  # no hook is left behind after a fused call
    assert all(not layer._forward_hooks for layer in zipper.decoder_layers(model.text))


def test_bad_sizes_and_towers_are_one_line_errors(tower):
    with pytest.raises(zipper.ZipperError, match="inserts no block") as info:
        zipped(tower, zipper.ZipperConfig(every=5))
    assert "\n" not in str(info.value)
    with pytest.raises(zipper.ZipperError, match="split into"):
        zipper.ZipperConfig(width=30, heads=4)
    with pytest.raises(zipper.ZipperError, match="decoder-only"):
        zipper.ZipperModel(torch.nn.Linear(2, 2), tower.tokenizer, zipper.SpeechTower(SPEECH))


def test_an_unscaled_block_adds_its_update_as_is(tower):
    model = zipped(tower, zipper.ZipperConfig(**{**vars(FUSION), "relative": False}))
    open_gates(model)
    hidden, memory = torch.randn(1, 3, 32) * 50, torch.randn(1, 4, SPEECH.width)
    relative = zipped(tower, zipper.ZipperConfig(**{**vars(FUSION), "relative": True})).blocks[0]
    relative.load_state_dict(model.blocks[0].state_dict())
    plain, _ = model.blocks[0](hidden, memory)
    scaled, _ = relative(hidden, memory)
    rms = hidden.pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(scaled - hidden, (plain - hidden) * rms, rtol=1e-4, atol=1e-4)


def test_attention_per_block_has_rows_summing_to_one_and_ignores_padding(tower):
    model = zipped(tower)
    open_gates(model)
    features = torch.randn(2, 11, SPEECH.input_dim)
    frame_mask = torch.ones(2, 11, dtype=torch.bool)
    frame_mask[1, 7:] = False
    memory = model.encode(features, frame_mask)
    assert memory.shape == (2, 6, SPEECH.width)
    tokens = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 2]])
    mask = model.memory_mask(frame_mask)
    logits, attentions = model.decode(memory, tokens, mask)
    assert logits.shape == (2, 4, tower.model.config.vocab_size) and len(attentions) == len(model.blocks)
    for weights in attentions:
        assert weights.shape == (2, FUSION.heads, 4, 6)
        assert torch.allclose(weights.sum(-1), torch.ones(2, FUSION.heads, 4))
        assert torch.all(weights[1, :, :, 4:] == 0)
    # the returned weights are the ones used: changing masked memory positions changes nothing
    changed = memory.clone()
    changed[1, 4:] = 100.0
    assert torch.allclose(model.decode(changed, tokens, mask)[0], logits, atol=1e-6)
    # causal: a token's logits do not depend on later tokens
    later = tokens.clone()
    later[0, 3] = 20
    assert torch.allclose(model.decode(memory, later, mask)[0][0, :3], logits[0, :3], atol=1e-6)


def test_cached_greedy_decoding_matches_decoding_the_whole_prefix_each_step(tower):
    model = zipped(tower)
    open_gates(model, 2.0)
    features = [torch.randn(15, SPEECH.input_dim), torch.randn(9, SPEECH.input_dim)]
    got = model.greedy_batch(features, max_len=6)
    for f, ids in zip(features, got, strict=True):
        memory = model.encode(f[None])
        tokens, expected = torch.tensor([[model.bos_id]]), []
        for _ in range(6):
            nxt = int(model.decode(memory, tokens)[0][0, -1].argmax())
            if nxt == model.eos_id:
                break
            expected.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
        assert ids == expected
    assert any(got) and model.transcribe(features[0][None], 6) == model.tokenizer.decode(got[0])


@pytest.mark.parametrize("tune_speech", [False, True])
def test_only_the_blocks_and_a_tuned_speech_tower_get_gradients(tower, tune_speech):
    config = zipper.ZipperConfig(**{**vars(FUSION), "tune_speech": tune_speech})
    model = zipped(tower, config).train()
    open_gates(model)  # at gate 0 only the gates themselves have a gradient
    assert not model.text.training and model.speech.training == tune_speech
    logits = model(torch.randn(2, 9, SPEECH.input_dim), torch.tensor([[1, 5, 6], [1, 7, 8]]))
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.text.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks.parameters())
    body = model.speech.body_parameters()
    assert all((p.grad is not None) == tune_speech for p in body) and len(body) < len(list(model.speech.parameters()))
    assert all(p.grad is None for p in model.speech.ctc.parameters())  # the CTC head is not part of the fused model
    assert {id(p) for p in model.trainable()} == {id(p) for p in model.blocks.parameters()} | (
        {id(p) for p in body} if tune_speech else set()
    )


def test_the_freeze_holds_through_fusion_training(tower):
    corpus = asr.build_corpus(texts=12, test_fraction=0.25, audio_fn=fake)
    model = zipped(tower)
    tokens = torch.tensor([[1, *model.tokenizer.encode("the code")]])
    text_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    speech_before = {k: v.clone() for k, v in model.speech.state_dict().items()}
    blocks_before = {k: v.clone() for k, v in model.blocks.state_dict().items()}
    logits_before = model.decode(None, tokens)[0].detach().clone()
    ppl_before = zipper.text_perplexity(model, corpus.texts)
    model, losses = zipper.train_zipper(model, corpus, steps=6, batch_size=4, lr=1e-2)
    assert len(losses) == 6 and not model.training and not model.text.training
    assert torch.equal(model.decode(None, tokens)[0], logits_before)  # bit-identical
    assert all(torch.equal(v, model.text.state_dict()[k]) for k, v in text_before.items())
    assert zipper.text_perplexity(model, corpus.texts) == ppl_before
    assert all(torch.equal(v, model.speech.state_dict()[k]) for k, v in speech_before.items())  # frozen by default
    assert not all(torch.equal(v, model.blocks.state_dict()[k]) for k, v in blocks_before.items())
    assert any(float(b.gate.detach()) != 0.0 for b in model.blocks)


def test_token_batch_and_text_perplexity_follow_the_prompt_format(tower):
    model = zipped(tower)
    inputs, targets = zipper.token_batch(["ab", "c"], model.tokenizer, 12, model.bos_id, model.eos_id)
    space, a, b, c = (tower.tokenizer.convert_tokens_to_ids(x) for x in " abc")
    assert model.tokenizer.encode("ab") == [space, a, b]  # a leading space: a word's first token is the same anywhere
    assert model.tokenizer.decode([space, a, b, 2, c]) == "ab"  # stops at EOS, strips the space
    assert inputs.tolist() == [[1, space, a, b], [1, space, c, 2]]
    assert targets.tolist() == [[space, a, b, 2], [space, c, 2, zipper.IGNORE]]
    logits = tower.model(input_ids=inputs).logits.double()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                            ignore_index=zipper.IGNORE)  # fmt: skip
    assert zipper.text_perplexity(model, ["ab", "c"]) == pytest.approx(float(nll.exp()), rel=1e-9)


def test_ctc_speech_tower_and_baseline_train_and_transcribe():
    corpus = asr.build_corpus(texts=12, test_fraction=0.25, audio_fn=fake)
    tower, losses = zipper.train_speech_tower(corpus, steps=40, batch_size=8, lr=3e-3, config=SPEECH)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]) and not tower.training
    assert isinstance(tower.transcribe(corpus.features[0][None]), str)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    config = zipper.matched_decoder(tower, 20_000, layers=1)
    baseline, _ = zipper.train_baseline(tower, corpus, config, steps=3, batch_size=4)
    assert abs(zipper.count(baseline.trainable()) - 20_000) < 5_000
    assert all(torch.equal(v, tower.state_dict()[k]) for k, v in before.items())  # the shared tower stays frozen
    result = zipper.evaluate(baseline, corpus)
    assert result["cer"] == asr.cer(result["references"], result["hypotheses"]) and len(result["hypotheses"]) == 3


def test_save_load_round_trip_and_refusals(tower, tower_dir, tmp_path):
    model = zipped(tower)
    open_gates(model, 0.3)
    zipper.save(model, tmp_path / "z")
    features = torch.randn(1, 15, SPEECH.input_dim)
    tokens = torch.tensor([[1, 5, 6, 7]])
    again = zipper.load(tmp_path / "z")  # re-loads the tower from the folder it recorded
    assert torch.equal(again.decode(again.encode(features), tokens)[0], model.decode(model.encode(features), tokens)[0])
    assert again.config == model.config and again.text_identity == model.text_identity
    assert isinstance(audit.load_explainable(tmp_path / "z"), zipper.ZipperModel)
    with safe_open(str(tmp_path / "z" / zipper.WEIGHTS), framework="pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118 (safe_open is not a mapping)
    assert keys and not any(k.startswith("text.") for k in keys)  # only what was trained
    zipper.save(again, tmp_path / "z")  # our own file may be overwritten

    other = load_model(tiny_tower(tmp_path / "other", seed=1))
    with pytest.raises(zipper.ZipperError, match="another text tower") as info:
        zipper.load(tmp_path / "z", text_tower=other)
    assert "\n" not in str(info.value) and "fingerprint" in str(info.value)
    shallower = load_model(tiny_tower(tmp_path / "shallow", layers=2))
    with pytest.raises(zipper.ZipperError, match="layers 4 saved, 2 given"):
        zipper.load(tmp_path / "z", text_tower=shallower)

    encdec.save(encdec.EncoderDecoderAsr(encdec.EncDecConfig(width=16, heads=2, max_len=6)), tmp_path / "e")
    with pytest.raises(zipper.ZipperError, match="not a saved Zipper model"):
        zipper.load(tmp_path / "e")
    with pytest.raises(zipper.ZipperError, match="was not written as"):
        zipper.save(model, tmp_path / "e")
    assert encdec.load(tmp_path / "e")  # untouched
    with pytest.raises(zipper.ZipperError, match="does not exist"):
        zipper.load(tmp_path / "nowhere")


def test_audit_runs_on_a_zipper_and_explain_cli_opens_a_saved_one(plugin, tower, tmp_path):
    model = zipped(tower)
    open_gates(model)
    features = asr.features(fake("the code", speech.Voice()))[None]
    tokens = model.tokenizer.encode("the code")
    result = audit.audit(model, features, tokens)
    assert len(result.attention) == len(model.blocks) and result.attention[0].shape[1] == len(tokens) + 1
    assert np.allclose(result.attention_mean.sum(1), 1.0) and np.allclose(result.memory_saliency.sum(1), 1.0)
    assert result.memory_saliency.shape == result.attention_mean.shape
    zipper.save(model, tmp_path / "z")
    speech.write_wav(tmp_path / "a.wav", fake("the code", speech.Voice()))
    out = tmp_path / "out"
    args = ["crossmodal", "explain", "--model", str(tmp_path / "z"), str(tmp_path / "a.wav"), "--max-len", "4"]
    ran = CliRunner().invoke(build_cli(), [*args, "--out", str(out), "--text", "the code"])
    assert ran.exit_code == 0, ran.output
    data = json.loads((out / "audit.json").read_text())
    assert data["steps"] == len(tokens) + 1 and len(data["memory"]["layers"]) == 2


def test_bench_through_the_cli_with_a_tiny_tower(plugin, tower, tmp_path, monkeypatch):
    import crossedge.core.sources as sources

    monkeypatch.setattr(sources, "load_model", lambda name: tower)
    real_build = asr.build_corpus
    monkeypatch.setattr(asr, "build_corpus", lambda texts, progress=None: real_build(texts=texts, audio_fn=fake))
    out, png = tmp_path / "z.json", tmp_path / "z.png"
    args = ["crossmodal", "bench", "--task", "zipper-asr", "--zipper-texts", "10", "--zipper-steps", "2"]
    ran = CliRunner().invoke(
        build_cli(), [*args, "--json", str(out), "--plot", str(png), "--save", str(tmp_path / "s")]
    )
    assert ran.exit_code == 0, ran.output
    assert "speech-only" in ran.output and "identical" in ran.output and "CHANGED" not in ran.output
    data = json.loads(out.read_text())
    assert data["task"] == "zipper-asr" and set(data["cer"]) == {"zipper", "speech_only", "ctc"}
    frozen = data["frozen_text_tower"]
    assert frozen["perplexity_before"] == frozen["perplexity_after"] and frozen["logits_identical"]
    assert frozen["parameters_unchanged"] and data["inserted_after_layers"] == [2]  # default every=3
    assert data["trainable_parameters"]["zipper"] > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert zipper.load(tmp_path / "s", text_tower=tower).config == zipper.ZipperConfig()
    # a folder holding another model is refused before any training
    encdec.save(encdec.EncoderDecoderAsr(encdec.EncDecConfig(width=16, heads=2, max_len=6)), tmp_path / "e")
    refused = CliRunner().invoke(build_cli(), [*args, "--save", str(tmp_path / "e")])
    assert refused.exit_code == 1 and "was not written as" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_espeak_corpus_features_fit_the_speech_tower():
    corpus = asr.build_corpus(texts=4, test_fraction=0.25)
    states = zipper.SpeechTower(SPEECH)(corpus.features[0][None])
    assert states.shape[-1] == SPEECH.width and states.shape[1] == -(-corpus.features[0].shape[0] // SPEECH.stride)


@pytest.mark.model
def test_smollm2_keeps_its_logits_when_zipped():
    loaded = load_model("smollm2-135m")
    model = zipper.ZipperModel(loaded.model, loaded.tokenizer, zipper.SpeechTower(SPEECH))
    assert len(model.blocks) == 10 and (model.bos_id, model.eos_id) == (asr.BOS, asr.EOS)  # <|im_start|>, <|im_end|>
    tokens = torch.tensor([[model.bos_id, *model.tokenizer.encode("the file")]])
    own = loaded.model(input_ids=tokens).logits
    memory = model.encode(torch.randn(1, 20, SPEECH.input_dim))
    assert torch.equal(model.decode(None, tokens)[0], own) and torch.equal(model.decode(memory, tokens)[0], own)
