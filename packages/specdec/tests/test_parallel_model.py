"""The diffusion LM: its masking objective, save/load, and LLaDA-style checkpoint loading on a tiny random model."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from crossedge.core.errors import CrossedgeError, ModelSourceError
from crossedge.specdec.parallel import tasks as T
from crossedge.specdec.parallel import train as TR
from crossedge.specdec.parallel.model import DLLM_FILE, DiffusionLM, build_tokenizer, load_diffusion_lm, load_llada


@pytest.fixture(scope="module")
def tiny():
    return TR.new_model(["copy", "reverse"], hidden=32, layers=1, heads=2, seed=0)


def test_the_canvas_fits_the_longest_answer_in_whole_blocks(tiny):
    longest = TR.longest_answer(tiny, ["copy", "reverse"])
    assert tiny.info.gen_length % tiny.info.block_length == 0
    assert longest < tiny.info.gen_length <= longest + tiny.info.block_length


def test_batches_pad_answers_with_end_of_text_and_mark_the_canvas(tiny):
    examples = T.make_examples(["copy"], 4, seed=0)
    batch = TR.make_batch(tiny, examples)
    info = tiny.info
    for row, e in enumerate(examples):
        canvas = batch.ids[row][batch.answer[row]].tolist()
        answer = tiny.encode(e.answer)
        assert len(canvas) == info.gen_length
        assert canvas[: len(answer)] == answer and set(canvas[len(answer) :]) == {info.eos_token_id}
        assert batch.keep[row].sum() == len(tiny.encode(e.prompt)) + 1 + info.gen_length


def test_the_diffusion_loss_masks_answer_positions_only(tiny):
    batch = TR.make_batch(tiny, T.make_examples(["copy", "reverse"], 8, seed=1))
    seen = torch.zeros_like(batch.answer)
    for seed in range(10):
        _, masked = TR.diffusion_loss(tiny, batch, torch.Generator().manual_seed(seed))
        assert not bool((masked & ~batch.answer).any()), "a prompt or padding position was masked"
        assert bool(masked.any(dim=1).all()), "a row had nothing masked"
        seen |= masked
    assert bool(seen[batch.answer].float().mean() > 0.5)


def test_the_diffusion_loss_is_the_masked_cross_entropy_weighted_by_one_over_t(tiny):
    batch = TR.make_batch(tiny, T.make_examples(["copy"], 4, seed=2))
    with torch.no_grad():
        loss, masked = TR.diffusion_loss(tiny, batch, torch.Generator().manual_seed(0))
    changed = batch.ids.clone()
    t = torch.rand(batch.ids.shape[0], 1, generator=torch.Generator().manual_seed(0)) * (1 - TR.MIN_RATIO)
    t = t + TR.MIN_RATIO
    inputs = torch.where(masked, torch.full_like(changed, tiny.info.mask_token_id), changed)
    with torch.no_grad():
        logits = tiny(inputs, batch.keep)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.ids, reduction="none")
    by_hand = ((ce * masked / t).sum(1) / batch.answer.sum(1)).mean()
    unmasked_only = ((ce * (batch.answer & ~masked) / t).sum(1) / batch.answer.sum(1)).mean()
    assert float(unmasked_only) != pytest.approx(float(by_hand))
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)


def test_the_edit_objective_corrupts_unmasked_answer_tokens_and_restores_them(tiny):
    batch = TR.make_batch(tiny, T.make_examples(["copy"], 6, seed=4))
    seen = {}

    class Recording(DiffusionLM):
        def __call__(self, inputs, keep=None, **kwargs):
            seen["inputs"] = inputs
            return tiny(inputs, keep, **kwargs)

    probe = Recording(tiny.model, tiny.tokenizer, tiny.info)
    with torch.no_grad():
        loss, masked = TR.diffusion_loss(probe, batch, torch.Generator().manual_seed(0), edit_ratio=0.5)
    # The same random stream by hand: ratio, mask draw, corruption draw, noise tokens.
    g = torch.Generator().manual_seed(0)
    t = torch.rand(batch.ids.shape[0], 1, generator=g) * (1 - TR.MIN_RATIO) + TR.MIN_RATIO
    torch.rand(batch.ids.shape, generator=g)
    corrupted = (torch.rand(batch.ids.shape, generator=g) < 0.5) & batch.answer & ~masked
    noise = torch.randint(0, len(tiny.tokenizer), batch.ids.shape, generator=g)
    noise[noise == tiny.info.mask_token_id] = tiny.info.eos_token_id
    inputs = seen["inputs"]
    assert bool(corrupted.any()) and not bool((corrupted & ~batch.answer).any())
    assert torch.equal(inputs[corrupted], noise[corrupted])
    assert bool((inputs[masked] == tiny.info.mask_token_id).all())
    untouched = ~(masked | corrupted)
    assert torch.equal(inputs[untouched], batch.ids[untouched]), "a prompt or kept token changed"
    with torch.no_grad():
        logits = tiny(inputs, batch.keep)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.ids, reduction="none")
    by_hand = (((ce * masked / t).sum(1) + (ce * corrupted).sum(1)) / batch.answer.sum(1)).mean()
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    with pytest.raises(CrossedgeError, match="edit_ratio"):
        TR.train(tiny, steps=1, edit_ratio=1.5)


@pytest.mark.parametrize("objective", ["diffusion", "autoregressive"])
def test_training_lowers_the_loss(objective):
    model = TR.new_model(["copy"], objective=objective, hidden=32, layers=1, heads=2, seed=0)
    batch = TR.make_batch(model, T.make_examples(["copy"], 16, seed=5))

    def loss():
        with torch.no_grad():
            if objective == "diffusion":
                return float(TR.diffusion_loss(model, batch, torch.Generator().manual_seed(0))[0])
            return float(TR.autoregressive_loss(model, batch))

    before = loss()
    report = TR.train(model, steps=60, batch_size=16, lr=3e-3, warmup=5, seed=0)
    assert report.steps == 60 and math.isfinite(report.held_out_loss)
    assert loss() < 0.8 * before
    assert model.info.trained["steps"] == 60


def test_save_and_load_round_trip(tiny, tmp_path):
    out = TR.save_new(tiny, tmp_path / "dllm")
    loaded = load_diffusion_lm(str(out))
    assert loaded.info == tiny.info
    ids = torch.tensor([tiny.encode("copy the waiting line")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), tiny(ids))


def test_save_refuses_a_folder_of_foreign_files(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CrossedgeError, match="notes.txt"):
        TR.save_new(tiny, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_folder_that_is_no_diffusion_lm_is_refused(tmp_path):
    from crossedge.core.testing import save_tiny_causal_lm

    folder = save_tiny_causal_lm(tmp_path / "causal")
    with pytest.raises(ModelSourceError, match="not a diffusion LM"):
        load_diffusion_lm(str(folder))


def test_a_truncated_checkpoint_is_refused(tiny, tmp_path):
    out = TR.save_new(tiny, tmp_path / "dllm")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelSourceError, match="truncated"):
        load_diffusion_lm(str(out))


def test_the_bidirectional_model_sees_later_tokens_and_the_ar_twin_does_not(tiny):
    twin = TR.new_model(["copy", "reverse"], objective="autoregressive", hidden=32, layers=1, heads=2, seed=0)
    ids = torch.tensor([tiny.encode("copy the waiting line")])
    later = ids.clone()
    later[0, -1] = tiny.info.mask_token_id
    with torch.no_grad():
        assert not torch.allclose(tiny(ids)[0, 0], tiny(later)[0, 0])
        assert torch.allclose(twin(ids)[0, 0], twin(later)[0, 0])


# ------------------------------------------------------------------ LLaDA-style checkpoints

D, HEADS, LAYERS, FF = 16, 2, 2, 24


def _llada_folder(folder, *, fused=False, extra=None):
    tokenizer = build_tokenizer(["copy the line , Ann Lee Bo Park"])
    vocab = len(tokenizer)
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    tensors = {"model.transformer.wte.weight": w(vocab, D), "model.transformer.ln_f.weight": 1 + w(D)}
    tensors["model.transformer.ff_out.weight"] = w(vocab, D)
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}."
        q, k, v = w(D, D), w(D, D), w(D, D)
        if fused:
            tensors[p + "att_proj.weight"] = torch.cat([q, k, v])
        else:
            tensors.update({p + "q_proj.weight": q, p + "k_proj.weight": k, p + "v_proj.weight": v})
        tensors.update(
            {
                p + "attn_out.weight": w(D, D),
                p + "ff_proj.weight": w(FF, D),
                p + "up_proj.weight": w(FF, D),
                p + "ff_out.weight": w(D, FF),
                p + "attn_norm.weight": 1 + w(D),
                p + "ff_norm.weight": 1 + w(D),
            }
        )
    tensors.update(extra or {})
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)
    config = {
        "model_type": "llada",
        "architectures": ["LLaDAModelLM"],
        "d_model": D,
        "n_heads": HEADS,
        "n_kv_heads": HEADS,
        "n_layers": LAYERS,
        "mlp_hidden_size": FF,
        "vocab_size": vocab,
        "embedding_size": vocab,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "weight_tying": False,
        "block_type": "llama",
        "layer_norm_type": "rms",
        "mask_token_id": tokenizer.mask_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return tensors


def _reference_logits(tensors, ids):
    """A bidirectional LLaDA forward written out by hand from the checkpoint's own tensor names."""

    def t(name):
        return tensors["model.transformer." + name]

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    n, hd = ids.shape[0], D // HEADS
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.arange(n).float()[:, None] * inv[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(x):  # (heads, n, hd)
        half = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos + half * sin

    x = t("wte.weight")[ids]
    for i in range(LAYERS):
        p = f"blocks.{i}."
        a = rms(x, t(p + "attn_norm.weight"))
        if "model.transformer." + p + "att_proj.weight" in tensors:
            q, k, v = (a @ t(p + "att_proj.weight").T).split(D, dim=-1)
        else:
            q, k, v = a @ t(p + "q_proj.weight").T, a @ t(p + "k_proj.weight").T, a @ t(p + "v_proj.weight").T
        q, k, v = (z.view(n, HEADS, hd).transpose(0, 1) for z in (q, k, v))
        att = torch.softmax(rope(q) @ rope(k).transpose(1, 2) / math.sqrt(hd), dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(n, D) @ t(p + "attn_out.weight").T
        m = rms(x, t(p + "ff_norm.weight"))
        gated = torch.nn.functional.silu(m @ t(p + "ff_proj.weight").T) * (m @ t(p + "up_proj.weight").T)
        x = x + gated @ t(p + "ff_out.weight").T
    return rms(x, t("ln_f.weight")) @ t("ff_out.weight").T


@pytest.mark.parametrize("fused", [False, True])
def test_a_llada_checkpoint_loads_with_its_own_weights_and_mask(tmp_path, fused):
    tensors = _llada_folder(tmp_path / "llada", fused=fused)
    model = load_diffusion_lm(str(tmp_path / "llada"))
    assert model.bidirectional and model.info.mask_token_id == model.tokenizer.mask_token_id
    ids = torch.tensor([3, 7, 5, 2, 2, 9])
    with torch.no_grad():
        ours = model(ids[None])[0]
    torch.testing.assert_close(ours, _reference_logits(tensors, ids), rtol=1e-4, atol=1e-4)


def test_a_llada_checkpoint_with_tensors_we_cannot_place_is_refused(tmp_path):
    _llada_folder(tmp_path / "llada", extra={"model.transformer.blocks.0.surprise.weight": torch.zeros(2)})
    with pytest.raises(ModelSourceError, match="cannot place"):
        load_llada(tmp_path / "llada")


def test_a_llada_checkpoint_missing_a_tensor_is_refused(tmp_path):
    _llada_folder(tmp_path / "llada")
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "llada" / "model.safetensors"))
    del tensors["model.transformer.blocks.1.up_proj.weight"]
    save_file(tensors, str(tmp_path / "llada" / "model.safetensors"))
    with pytest.raises(ModelSourceError, match="up_proj"):
        load_llada(tmp_path / "llada")


def test_dllm_json_of_another_format_is_refused(tiny, tmp_path):
    out = TR.save_new(tiny, tmp_path / "dllm")
    meta = json.loads((out / DLLM_FILE).read_text())
    meta["format"] = 99
    (out / DLLM_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelSourceError, match="format 99"):
        load_diffusion_lm(str(out))


def test_a_hub_id_is_fetched_through_the_model_cache_then_loaded(tmp_path, monkeypatch):
    from crossedge.core import sources

    folder = tmp_path / "snapshot"
    _llada_folder(folder)
    pulled = []

    def pull(self, *, force=False):
        pulled.append(self.repo_id)
        return folder

    monkeypatch.setattr(sources.HubSource, "pull", pull)
    model = load_diffusion_lm("someone/tiny-llada")
    assert pulled == ["someone/tiny-llada"] and model.bidirectional


def test_an_ar_warmup_trains_causally_first_then_switches_to_diffusion(monkeypatch):
    model = TR.new_model(["copy"], hidden=32, layers=1, heads=2, seed=0)
    seen = []
    real_ar, real_diffusion = TR.autoregressive_loss, TR.diffusion_loss

    def ar(m, batch):
        seen.append(("ar", m.bidirectional))
        return real_ar(m, batch)

    def diffusion(m, batch, generator=None, edit_ratio=0.0):
        seen.append(("diffusion", m.bidirectional))
        return real_diffusion(m, batch, generator, edit_ratio)

    monkeypatch.setattr(TR, "autoregressive_loss", ar)
    monkeypatch.setattr(TR, "diffusion_loss", diffusion)
    TR.train(model, steps=8, batch_size=4, ar_warmup=0.5)
    assert seen[:8] == [("ar", False)] * 4 + [("diffusion", True)] * 4
    assert model.info.objective == "diffusion" and model.info.trained["ar_warmup"] == 0.5
    twin = TR.new_model(["copy"], objective="autoregressive", hidden=32, layers=1, heads=2)
    with pytest.raises(CrossedgeError, match="diffusion LM only"):
        TR.train(twin, steps=1, ar_warmup=0.5)
