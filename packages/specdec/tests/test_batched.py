"""Batched speculative decoding: every row identical to decoding its prompt alone."""

import pytest
import torch

from crossedge.core.testing import tiny_windowed_lm
from crossedge.specdec import (
    BatchedSpeculativeDecoder,
    ConstantPolicy,
    CopyDrafter,
    Draft,
    Drafter,
    SamplingConfig,
    SpeculativeDecoder,
)
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.testing import tiny_target

TEXTS = (
    "the cat sat on the mat. the cat sat on the",
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return",
    "hello world, hello",
    "abcabcabcabcabcabcab",
    "x",
)


@pytest.fixture(scope="module")
def llama():
    return tiny_target("llama")


def _prompts(tokenizer):
    return [tokenizer(text).input_ids for text in TEXTS]


def _single(model, prompt, n, **kwargs):
    return SpeculativeDecoder(model, **kwargs).generate(prompt, n)


def test_rows_of_different_lengths_match_single_decoding(llama):
    model, tokenizer = llama
    prompts = _prompts(tokenizer)
    decoder = BatchedSpeculativeDecoder(model, "copy", lambda: ConstantPolicy(k=4), max_batch=8)
    results = decoder.generate_many(prompts, 24)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.tokens == _single(model, prompt, 24).tokens
        assert result.stats.stop_reason == "length"
    # The copy drafter was accepted somewhere, so rows really accepted different amounts.
    assert sum(r.stats.drafters["copy"].accepted for r in results) > 0
    assert decoder.counters.admitted == len(prompts) and decoder.counters.rows == 0


def test_rows_join_mid_way_finish_by_eos_and_length_and_cancel(llama):
    model, tokenizer = llama
    prompts = _prompts(tokenizer)
    # An EOS that the first prompt's greedy output reaches after a few tokens.
    plain = _single(model, prompts[0], 30).tokens
    at = next(i for i in range(4, 30) if plain[i] not in plain[:i])
    eos = plain[at]
    references = [_single(model, p, 30, eos_token_id=eos).tokens for p in prompts]
    assert len(references[0]) == at + 1
    decoder = BatchedSpeculativeDecoder(model, "copy", lambda: ConstantPolicy(k=3), max_batch=3, eos_token_id=eos)
    first = [decoder.submit(p, 30) for p in prompts[:2]]
    streamed = {h: [] for h in first}
    for _ in range(3):
        for handle, tokens in decoder.step().items():
            streamed[handle] += tokens
    later = [decoder.submit(p, 30) for p in prompts[2:]]
    streamed.update({h: [] for h in later})
    cancelled = later[0]
    seen_rows = []
    while decoder.active:
        for handle, tokens in decoder.step().items():
            streamed[handle] += tokens
        seen_rows.append(decoder.rows)
        if len(cancelled.tokens) >= 2 and not cancelled.cancelled:
            cancelled.cancel()
    assert max(seen_rows) <= 3
    handles = first + later
    for handle, reference in zip(handles, references, strict=True):
        assert streamed[handle] == handle.tokens
        if handle is cancelled:
            assert handle.stop_reason == "cancelled"
            assert handle.tokens == reference[: len(handle.tokens)]
        else:
            assert handle.tokens == reference
            assert handle.stop_reason == ("eos" if reference[-1] == eos else "length")
    assert first[0].stop_reason == "eos"
    assert decoder.counters.cancelled == 1


class TreeOracle(Drafter):
    """A token tree per row: a wrong root child, then the true continuation with a wrong sibling per level."""

    name = "tree-oracle"
    cheap = True

    def __init__(self, references):
        self.references = references

    def propose(self, context_ids, k):
        prompt = max((p for p in self.references if list(context_ids[: len(p)]) == list(p)), key=len)
        done = len(context_ids) - len(prompt)
        truth = self.references[prompt][done : done + 3]
        if not truth:
            return Draft([])
        tokens, parents = [(truth[0] + 1) % 250, truth[0]], [-1, -1]
        parent = 1
        for token in truth[1:]:
            tokens += [(token + 7) % 250, token]
            parents += [parent, parent]
            parent = len(tokens) - 1
        return Draft(tokens, parents=parents).truncated(k)


def test_tree_drafts_per_row_match_single_decoding(llama):
    model, tokenizer = llama
    prompts = _prompts(tokenizer)[:4]
    references = {tuple(p): _single(model, p, 20).tokens for p in prompts}
    decoder = BatchedSpeculativeDecoder(model, lambda: TreeOracle(references), lambda: ConstantPolicy(k=16))
    results = decoder.generate_many(prompts, 20)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.tokens == references[tuple(prompt)]
        assert result.stats.mean_accepted > 2.0


def test_memory_budget_throttles_admission_and_stays_exact(llama):
    model, tokenizer = llama
    prompts = _prompts(tokenizer)[:4]
    probe = BatchedSpeculativeDecoder(model)
    longest = max(len(p) for p in prompts) + 16
    # Room for two rows of the longest request, not three.
    budget = 2 * longest * probe.kv_bytes_per_token + probe.kv_bytes_per_token
    decoder = BatchedSpeculativeDecoder(model, "copy", lambda: ConstantPolicy(k=8), memory_budget=budget)
    handles = [decoder.submit(p, 16) for p in prompts]
    rows = []
    while decoder.active:
        decoder.step()
        rows.append(decoder.rows)
        cache = decoder._cache
        if cache is not None:
            held = cache.layers[0].keys.shape[0] * cache.get_seq_length() * decoder.kv_bytes_per_token
            assert held <= budget
    assert max(rows) == 2
    assert decoder.counters.throttled >= 1
    for prompt, handle in zip(prompts, handles, strict=True):
        assert handle.tokens == _single(model, prompt, 16).tokens
    with pytest.raises(SpecdecError, match="memory_budget"):
        decoder.submit(prompts[0], 10 * longest)


def test_sampling_per_row_draws_what_a_single_run_draws(llama):
    model, tokenizer = llama
    prompts = _prompts(tokenizer)[:3]
    configs = [SamplingConfig(temperature=0.8, top_k=5, seed=s) for s in (1, 2, 3)]
    decoder = BatchedSpeculativeDecoder(model, "copy", lambda: ConstantPolicy(k=4), eos_token_id=[])
    handles = [decoder.submit(p, 20, c) for p, c in zip(prompts, configs, strict=True)]
    while decoder.active:
        decoder.step()
    for prompt, config, handle in zip(prompts, configs, handles, strict=True):
        single = SpeculativeDecoder(model, CopyDrafter(), ConstantPolicy(k=4), eos_token_id=[])
        assert handle.tokens == single.generate(prompt, 20, config).tokens


def _mistral_sliding():
    """A tiny random Mistral with an 8-token sliding window (as test_engine's)."""
    return tiny_windowed_lm("mistral", window=8, seed=0)


def _gemma3_mixed():
    """A tiny random Gemma 3 whose layers mix a 5-token sliding window and full attention."""
    return tiny_windowed_lm("gemma3", window=5, seed=5)


def _llama_eager():
    model, _ = tiny_target("llama")
    model.config._attn_implementation = "eager"
    return model


ARCHITECTURES = {
    "mistral-sliding": _mistral_sliding,
    "gemma3-mixed": _gemma3_mixed,
    "llama-eager": _llama_eager,
    "gpt2": lambda: tiny_target("gpt2")[0],
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_other_architectures_match_single_decoding(arch):
    """Sliding windows past the window, a mix of sliding and full layers (a mask per layer kind),
    eager attention (additive masks) and GPT-2's learned positions, under a draft model."""
    from crossedge.specdec import DraftModelDrafter
    from crossedge.specdec.testing import noisy_copy

    with torch.random.fork_rng():
        model = ARCHITECTURES[arch]()
    model.generation_config.eos_token_id = None
    draft = noisy_copy(model, scale=0.05)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6], [9, 8, 7], [4, 4, 5, 5, 6, 6, 7, 7, 8, 8]]
    decoder = BatchedSpeculativeDecoder(model, lambda: DraftModelDrafter(draft), lambda: ConstantPolicy(k=4))
    results = decoder.generate_many(prompts, 24)
    for prompt, result in zip(prompts, results, strict=True):
        single = SpeculativeDecoder(model, DraftModelDrafter(draft), ConstantPolicy(k=4)).generate(prompt, 24)
        assert result.tokens == single.tokens
    # Rows accepted different amounts, rejections included: the cache was compacted raggedly.
    stats = [r.stats.drafters["draft-model"] for r in results]
    assert 0 < sum(s.accepted for s in stats) < sum(s.drafted for s in stats)


def test_refusals(llama):
    model, _ = llama
    with pytest.raises(SpecdecError, match="factory"):
        BatchedSpeculativeDecoder(model, CopyDrafter())
    with pytest.raises(SpecdecError, match="policy instance"):
        BatchedSpeculativeDecoder(model, "copy", ConstantPolicy(k=2))
    decoder = BatchedSpeculativeDecoder(model)
    with pytest.raises(SpecdecError, match="empty prompt"):
        decoder.submit([], 4)
    with pytest.raises(SpecdecError, match="max_new_tokens"):
        decoder.submit([1, 2], 0)


def test_rows_get_their_own_drafters_sharing_the_draft_model(llama, monkeypatch):
    """A spec is built once: every row gets its own drafter state, all rows one draft model."""
    from crossedge.specdec import DraftModelDrafter
    from crossedge.specdec.testing import noisy_copy

    model, tokenizer = llama
    draft = noisy_copy(model, scale=0.05)
    loads = []

    def load(self, name):
        loads.append(name)
        return draft

    monkeypatch.setattr(DraftModelDrafter, "_load", load)
    begun = []
    begin = DraftModelDrafter.begin

    def noting_begin(self, context):
        begun.append(self)
        return begin(self, context)

    monkeypatch.setattr(DraftModelDrafter, "begin", noting_begin)
    prompts = _prompts(tokenizer)[:3]
    decoder = BatchedSpeculativeDecoder(model, "draft-model:model=tiny", lambda: ConstantPolicy(k=3))
    results = decoder.generate_many(prompts, 12)
    assert loads == ["tiny"]
    assert len({id(d) for d in begun}) == 3 and all(d.model is draft for d in begun)
    for prompt, result in zip(prompts, results, strict=True):
        single = SpeculativeDecoder(model, DraftModelDrafter(draft), ConstantPolicy(k=3)).generate(prompt, 12)
        assert result.tokens == single.tokens


def test_cost_aware_rows_share_the_verification_cost_model(llama):
    model, tokenizer = llama
    decoder = BatchedSpeculativeDecoder(model, "copy", "cost-aware")
    handles = [decoder.submit(p, 8) for p in _prompts(tokenizer)[:3]]
    decoder.step()
    policies = [row.policy for row in decoder._rows]
    assert len(policies) == 3 and len({id(p) for p in policies}) == 3
    assert len({id(p.cost) for p in policies}) == 1
    while decoder.active:
        decoder.step()
    for prompt, handle in zip(_prompts(tokenizer)[:3], handles, strict=True):
        assert handle.tokens == _single(model, prompt, 8).tokens


def test_rows_share_the_decoders_history_and_a_callers_own_history_drafter(llama):
    from crossedge.specdec import HistoryDrafter

    model, tokenizer = llama
    prompt = tokenizer(TEXTS[2]).input_ids
    alone = _single(model, prompt, 24).tokens
    decoder = BatchedSpeculativeDecoder(model, "history", lambda: ConstantPolicy(k=4))
    # Side by side, neither row has anything to draft from yet ...
    first = decoder.generate_many([prompt, prompt], 24)
    assert all(r.tokens == alone and r.stats.drafters["history"].drafted == 0 for r in first)
    # ... but both remembered into the decoder's one history, and the next request drafts from it.
    (again,) = decoder.generate_many([prompt], 24)
    assert again.tokens == alone and again.stats.drafters["history"].accepted >= 16
    # A caller's own drafter (one user's history) serves, and learns from, only the rows it is passed to.
    mine = HistoryDrafter()
    handle = decoder.submit(prompt, 24, own_drafters={0: mine})
    other = decoder.submit(prompt, 24)
    while decoder.active:
        decoder.step()
    assert handle.tokens == alone and handle.result().stats.drafters["history"].drafted == 0
    assert other.tokens == alone and other.result().stats.drafters["history"].accepted >= 16
    assert mine.index.tokens == list(prompt) + alone
    with pytest.raises(SpecdecError, match="place 0 does not match the chain"):
        decoder.submit(prompt, 4, own_drafters={0: CopyDrafter()})
    with pytest.raises(SpecdecError, match="place 3"):
        decoder.submit(prompt, 4, own_drafters={3: HistoryDrafter()})
    with pytest.raises(SpecdecError, match="spec string"):
        BatchedSpeculativeDecoder(model, lambda: HistoryDrafter()).submit(prompt, 4, own_drafters={0: mine})
