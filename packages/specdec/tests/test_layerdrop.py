"""LoRA-Drop: the refresh schedule, skipping, adapters, training, save/load, the lossy loop and the drafter."""

import pytest
import torch
from click.testing import CliRunner
from transformers import DynamicCache

from crossedge.core.cli import build_cli
from crossedge.core.contracts.drafter import DraftContext, TargetCacheView
from crossedge.core.specs import SpecError
from crossedge.core.testing import save_tiny_causal_lm, tiny_causal_lm
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.exit_head import TrainConfig, collect_exit_data, self_generated_sequences, training_prompts
from crossedge.specdec.lora_drop import LoraDropError, full_positions, is_full_step
from crossedge.specdec.lora_drop.drafter import LoraDropDrafter
from crossedge.specdec.lora_drop.model import PROJECTIONS, LoraDrop, dropped_layers
from crossedge.specdec.lora_drop.training import (
    WEIGHTS_NAME,
    greedy_agreement,
    load_adapters,
    lora_drop_loss,
    perplexity,
    save_adapters,
    train_adapters,
    train_lora_drop,
)
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, DrafterConformance, greedy_reference, tiny_target

TEXTS = [
    "Speculative decoding drafts several tokens cheaply and verifies them in one pass of the large model. " * 6,
    "A quantized linear layer stores int8 weights with one scale per output channel, saving memory. " * 6,
    "The cat sat on the mat and looked at the dog, who sat on the rug and looked back at the cat. " * 6,
    "Low-rank adapters add a small product of two thin matrices to a frozen weight matrix. " * 6,
    "Every few steps the full model runs again, so the cache of the skipped layers catches up. " * 6,
]
PROMPT_TOKENS = 12


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm("llama", layers=4, hidden=32, seed=1, initializer_range=0.15)


def random_adapters(model, dropped="layers:ids=1+2", rank=4, seed=0, scale=0.05):
    drop = LoraDrop(model, dropped, rank)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in drop.adapters.values():
            adapter.lora_b.copy_(torch.randn(adapter.lora_b.shape, generator=gen) * scale)
    return drop.eval()


def one_line(caught):
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# -- the schedule and the pattern -------------------------------------------------


def test_the_refresh_schedule_is_exact():
    assert [s for s in range(1, 13) if is_full_step(s, 4)] == [4, 8, 12]
    assert [s for s in range(1, 8) if is_full_step(s, 3)] == [3, 6]
    assert all(is_full_step(s, 1) for s in range(1, 10))
    assert not any(is_full_step(s, 0) for s in range(1, 50))
    # A 3-token prompt (the prefill, full), then step 1 feeds position 3, step 3 feeds position 5 ...
    assert full_positions(3, 11, 3) == [True, True, True, False, False, True, False, False, True, False, False]
    assert full_positions(2, 5, 0) == [True, True, False, False, False]
    assert full_positions(2, 5, 1) == [True] * 5
    with pytest.raises(LoraDropError, match="count from 1"):
        is_full_step(0, 4)
    with pytest.raises(LoraDropError, match="refresh must be 0"):
        is_full_step(1, -1)
    with pytest.raises(LoraDropError, match="prefill"):
        full_positions(0, 5, 2)


def test_drop_patterns():
    assert dropped_layers("block", 30) == tuple(range(11, 18))  # SmolLM2-135M: 7 middle layers
    assert dropped_layers("block", 4) == (1,)
    assert dropped_layers("block:count=3,start=1", 8) == (1, 2, 3)
    assert dropped_layers("layers:ids=5+3", 8) == (3, 5)
    assert dropped_layers([2, 1], 4) == (1, 2)
    with pytest.raises(SpecError, match="unknown drop pattern 'middle'; the patterns: block, layers"):
        dropped_layers("middle", 8)
    with pytest.raises(SpecError, match="has no option 'size'"):
        dropped_layers("block:size=2", 8)
    with pytest.raises(LoraDropError, match=r"layers 0..3; the drop pattern names \[4\]"):
        dropped_layers("layers:ids=1+4", 4)
    with pytest.raises(LoraDropError, match="keep at least one"):
        dropped_layers("block:count=4,start=0", 4)
    with pytest.raises(LoraDropError, match="names a layer twice"):
        dropped_layers([1, 1], 4)
    with pytest.raises(LoraDropError, match="names no layer"):
        dropped_layers("layers", 4)


# -- skipping, adapters, the two forwards ---------------------------------------


def test_skipped_layers_are_really_skipped_and_write_no_kv(tiny):
    model, tokenizer = tiny
    drop = random_adapters(model)
    calls = [0] * 4
    handles = [
        layer.self_attn.q_proj.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(model.model.layers)
    ]
    try:
        prompt = tokenizer("the cat sat", return_tensors="pt").input_ids
        new = 10  # the prefill and 9 fed steps, of which steps 3, 6 and 9 are full
        assert len(drop.generate(prompt, new, refresh=3)) == new
        assert calls == [10, 4, 4, 10]
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            n = prompt.shape[1]
            drop.step(prompt[0].tolist(), 0, cache, full=True)
            drop.step([5], n, cache, full=False)
            assert [layer.get_seq_length() for layer in cache.layers] == [n + 1, n, n, n + 1]
            drop.step([6], n + 1, cache, full=True)
            assert [layer.get_seq_length() for layer in cache.layers] == [n + 2, n + 1, n + 1, n + 2]
    finally:
        for handle in handles:
            handle.remove()


def test_zero_adapters_leave_the_kept_layers_unchanged_and_share_the_targets_weights(tiny):
    model, tokenizer = tiny
    drop = LoraDrop(model, "layers:ids=2", rank=4)
    assert drop.kept == (0, 1, 3)
    hidden = torch.randn(2, 7, 32)
    positions = torch.arange(7).unsqueeze(0).expand(2, -1)
    embeddings = model.model.rotary_emb(hidden, position_ids=positions)
    with torch.no_grad():
        for i in drop.kept:
            plain = model.model.layers[i](hidden, position_ids=positions, position_embeddings=embeddings)
            viewed = drop.view(i)(hidden, position_ids=positions, position_embeddings=embeddings)
            assert torch.equal(plain, viewed)
            assert drop.view(i) is not model.model.layers[i]
            assert drop.view(i).mlp.up_proj._base["linear"] is model.model.layers[i].mlp.up_proj
        ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
        torch.testing.assert_close(drop(ids, [True] * ids.shape[1]), model(input_ids=ids).logits)
    # Only the adapters are this module's weights; the target's modules are untouched.
    assert all(name.startswith("adapters.") for name, _ in drop.named_parameters())
    assert len(drop.adapters) == 3 * len(PROJECTIONS)
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert drop.generate(ids, 12, refresh=1) == greedy_reference(model, ids, 12)


@pytest.mark.parametrize("refresh", [0, 2, 3])
def test_the_training_forward_computes_what_step_by_step_decoding_does(tiny, refresh):
    model, tokenizer = tiny
    drop = random_adapters(model, scale=0.3)
    prompt = tokenizer("the cat sat", return_tensors="pt").input_ids[0].tolist()
    fed = [ord(c) for c in " on the mat, looking"]
    sequence = prompt + fed
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        stepped = [drop.step(prompt, 0, cache, full=True)[-1]]
        for step, token in enumerate(fed, start=1):
            stepped.append(drop.step([token], len(prompt) + step - 1, cache, full=is_full_step(step, refresh))[-1])
        parallel = drop(torch.tensor([sequence]), full_positions(len(prompt), len(sequence), refresh))[0]
    torch.testing.assert_close(torch.stack(stepped), parallel[len(prompt) - 1 :], atol=1e-5, rtol=1e-4)
    # The lossy loop's greedy tokens are the parallel forward's argmax over its own output.
    tokens = drop.generate(torch.tensor([prompt]), 12, refresh)
    with torch.inference_mode():
        logits = drop(torch.tensor([prompt + tokens]), full_positions(len(prompt), len(prompt) + 12, refresh))
    assert logits[0, len(prompt) - 1 : -1].argmax(-1).tolist() == tokens
    assert tokens != greedy_reference(model, torch.tensor([prompt]), 12) or refresh == 1


# -- training, quality, saving ----------------------------------------------------


@pytest.fixture(scope="module")
def data(tiny):
    model, tokenizer = tiny
    prompts = training_prompts(tokenizer, TEXTS, 12, PROMPT_TOKENS)
    sequences = self_generated_sequences(model, prompts, 12, progress=False)
    return collect_exit_data(model, sequences, [], top_k=8, progress=False), prompts.shape[1]


def test_a_few_training_steps_lower_the_distillation_loss_and_change_only_the_adapters(tiny, data):
    model, _ = tiny
    data, prefill = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = data.split(4)
    untrained = LoraDrop(model, "layers:ids=1+2", 4)
    with torch.no_grad():
        loss_before = float(lora_drop_loss(untrained, held, slice(None), prefill, 3))
    drop, history = train_adapters(
        model,
        train,
        "layers:ids=1+2",
        prefill,
        rank=4,
        refresh=3,
        config=TrainConfig(epochs=6, lr=1e-2),
        progress=False,
    )
    assert len(history) == 12
    assert sum(history[-2:]) / 2 < sum(history[:2]) / 2
    with torch.no_grad():
        assert float(lora_drop_loss(drop, held, slice(None), prefill, 3)) < loss_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert 0.0 <= greedy_agreement(drop, held, prefill, 3, lora=False) <= 1.0
    assert greedy_agreement(LoraDrop(model, [1], 4), held, prefill, 1) == 1.0  # all full: the full model
    full = perplexity(None, model, held.input_ids, 4, 3)
    assert perplexity(LoraDrop(model, [1], 4), model, held.input_ids, 4, 1) == pytest.approx(full, rel=1e-4)


def test_save_load_round_trip_is_exact_and_another_models_adapters_are_refused(tiny, tmp_path):
    model, tokenizer = tiny
    drop = random_adapters(model, scale=0.3)
    folder = save_adapters(drop, tmp_path / "adapters", model_name="tiny", refresh=3)
    loaded, refresh = load_adapters(model, folder)
    assert refresh == 3 and loaded.dropped == drop.dropped and loaded.rank == drop.rank
    for key, value in drop.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
    full = full_positions(4, ids.shape[1], 3)
    with torch.no_grad():
        assert torch.equal(loaded(ids, full), drop(ids, full))
    save_adapters(loaded, folder, model_name="tiny", refresh=3)  # files crossedge wrote may be replaced
    same_shape, _ = tiny_causal_lm("llama", layers=4, hidden=32, seed=7, initializer_range=0.15)
    with pytest.raises(LoraDropError, match="whose weights differ") as caught:
        load_adapters(same_shape, folder)
    one_line(caught)
    deeper, _ = tiny_causal_lm("llama", layers=5, hidden=32)
    with pytest.raises(LoraDropError, match="num_hidden_layers=4") as caught:
        load_adapters(deeper, folder)
    one_line(caught)
    with pytest.raises(LoraDropError, match="train-lora-drop") as caught:
        load_adapters(model, tmp_path / "nowhere")
    one_line(caught)
    path = folder / WEIGHTS_NAME
    flipped = bytearray(path.read_bytes())
    flipped[-3] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(LoraDropError, match="damaged") as caught:
        load_adapters(model, folder)
    one_line(caught)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(LoraDropError, match="notes.txt that crossedge did not write"):
        save_adapters(drop, mine, model_name="tiny", refresh=3)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_train_lora_drop_end_to_end(tiny, tmp_path):
    model, tokenizer = tiny
    result = train_lora_drop(
        model,
        tokenizer,
        "tiny",
        "layers:ids=2",
        rank=4,
        refresh=3,
        out=tmp_path / "adapters",
        prompts=10,
        prompt_tokens=PROMPT_TOKENS,
        new_tokens=10,
        holdout=3,
        eval_chunks=4,
        eval_tokens=32,
        config=TrainConfig(epochs=2, batch_size=4, lr=1e-2),
        texts=TEXTS,
        progress=False,
    )
    assert result.dropped == [2] and result.steps == 4 and result.seconds > 0
    assert 0 <= result.agreement_dropped <= 1 and 0 <= result.agreement_lora <= 1
    assert result.perplexity_full > 1 and result.perplexity_lora > 1
    loaded, refresh = load_adapters(model, result.folder)
    assert refresh == 3 and loaded.dropped == (2,)


def test_the_cli_trains_prints_the_comparison_and_refuses_foreign_folders(tmp_path, monkeypatch, specdec_plugin):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    folder = str(save_tiny_causal_lm(tmp_path / "tiny", "llama", layers=4, seed=1, initializer_range=0.15))
    out = tmp_path / "adapters"
    args = ["specdec", "train-lora-drop", "--model", folder, "--drop", "layers:ids=2", "--rank", "2"]
    small = ["--out", str(out), "--prompts", "8", "--prompt-tokens", "8", "--new-tokens", "8", "--epochs", "1"]
    runner = CliRunner()
    result = runner.invoke(build_cli(), [*args, *small], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for row in ("full", "dropped", "dropped+LoRA", "perplexity", "greedy_agreement"):
        assert row in result.output
    assert (out / WEIGHTS_NAME).is_file()
    (out / "mine.txt").write_text("keep")
    refused = runner.invoke(build_cli(), [*args, *small], catch_exceptions=False)
    assert refused.exit_code == 1 and "mine.txt that crossedge did not write" in refused.output
    assert "Traceback" not in refused.output
    bad = runner.invoke(build_cli(), [*args[:-4], "--drop", "layers:ids=9", *small[:2]], catch_exceptions=False)
    assert bad.exit_code == 1 and "layers 0..3" in bad.output


# -- the drafter -----------------------------------------------------------------


class TestLoraDropConformance(DrafterConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def target(cls):
        return tiny_target("llama")

    def make_drafter(self, target):
        return LoraDropDrafter(adapters=random_adapters(target, dropped="layers:ids=1", scale=0.3))


@pytest.mark.parametrize("refresh", [0, 2])
def test_greedy_speculation_with_lora_drop_is_token_identical(tiny, refresh):
    model, tokenizer = tiny
    for prompt in CONFORMANCE_PROMPTS:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = greedy_reference(model, input_ids, 24)
        drafter = LoraDropDrafter(adapters=random_adapters(model, scale=0.3), refresh=refresh)
        result = SpeculativeDecoder(model, drafter, "constant:k=4").generate(input_ids, 24)
        assert result.tokens == reference
        assert result.stats.drafters["lora-drop"].drafted > 0


def test_drafting_leaves_the_target_cache_as_it_was_and_zero_adapters_skip_plainly(tiny):
    model, tokenizer = tiny
    drafter = LoraDropDrafter(drop="layers:ids=1+2", rank=2)
    prompt = tokenizer("the cat sat", return_tensors="pt").input_ids[0].tolist()
    cache = DynamicCache(config=model.config)
    view = TargetCacheView(cache)
    drafter.begin(DraftContext(target=model, cache=view, window=512))
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt[:-1]]), cache=cache, use_cache=True)
    keys = [layer.keys.clone() for layer in cache.layers]
    draft = drafter.propose(prompt, 5)
    assert len(draft) == 5 and draft.probs is None
    for layer, before in zip(cache.layers, keys, strict=True):
        assert torch.equal(layer.keys, before)
    assert drafter.propose(prompt[:-1], 3).tokens == []  # the cache must hold all but the last token
    assert all(
        float(a.lora_b.detach().abs().max()) == 0.0 for a in drafter.drop.adapters.values()
    )  # zero: plain skipping


def test_drafter_options_folders_and_refusals(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    input_ids = tokenizer("hi there", return_tensors="pt").input_ids
    folder = save_adapters(random_adapters(model), tmp_path / "adapters", model_name="tiny", refresh=3)
    drafter = LoraDropDrafter(adapters=str(folder))
    SpeculativeDecoder(model, drafter, "constant:k=4").generate(input_ids, 6)
    assert drafter.drop.dropped == (1, 2)
    result = SpeculativeDecoder(model, 'lora-drop:drop="layers:ids=2",refresh=2', "constant:k=3").generate(input_ids, 6)
    assert result.tokens == greedy_reference(model, input_ids, 6)
    with pytest.raises(SpecdecError, match="not both"):
        LoraDropDrafter(adapters=str(folder), drop="block")
    with pytest.raises(SpecdecError, match="refresh must be 0"):
        LoraDropDrafter(refresh=-2)
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SpecdecError, match="train-lora-drop"):
        SpeculativeDecoder(model, LoraDropDrafter(), "constant:k=2").generate(input_ids, 3)
    other, _ = tiny_causal_lm("llama", layers=4, hidden=32, seed=4)
    with pytest.raises(SpecdecError, match="another model"):
        SpeculativeDecoder(other, LoraDropDrafter(adapters=random_adapters(model)), "constant:k=2").generate(
            input_ids, 3
        )


@pytest.mark.model
def test_lora_drop_drafting_is_greedy_identical_on_smollm2():
    from crossedge.core import load_model
    from crossedge.core.sources import encode_prompt

    loaded = load_model("smollm2-135m")
    input_ids = encode_prompt(loaded.tokenizer, "Explain in two sentences why the sky is blue.")
    reference = greedy_reference(loaded.model, input_ids, 32)
    drafter = LoraDropDrafter(drop="block", refresh=0)  # zero adapters: layers 11..17 skipped
    result = SpeculativeDecoder(loaded.model, drafter, "constant:k=4").generate(input_ids, 32)
    assert result.tokens == reference
    assert result.stats.drafters["lora-drop"].accepted > 0
