import pytest
import torch

from crossedge.core.testing import byte_tokenizer
from crossedge.specdec import (
    CopyDrafter,
    DraftModelDrafter,
    HistoryDrafter,
    SpeculativeDecoder,
    build_drafters,
)
from crossedge.specdec.drafters import CrossVocabDrafter
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.testing import (
    CONFORMANCE_PROMPTS,
    DrafterConformance,
    greedy_reference,
    noisy_copy,
    permuted_byte_tokenizer,
    permuted_copy,
    tiny_target,
)


class TestCopyDrafter(DrafterConformance):
    def make_drafter(self, target):
        return CopyDrafter(max_copy=8, min_match=1)


class TestCopyDrafterLatestOccurrence(DrafterConformance):
    def make_drafter(self, target):
        return CopyDrafter(max_copy=8, min_match=1, occurrence="latest")


def test_copy_drafter_occurrence_option():
    context = [1, 2, 3, 4, 9, 1, 2, 3, 5, 8, 1, 2, 3]
    assert CopyDrafter().propose(context, 2).tokens == [4, 9]
    assert CopyDrafter(occurrence="latest").propose(context, 2).tokens == [5, 8]
    with pytest.raises(SpecdecError, match="occurrence"):
        CopyDrafter(occurrence="middle")


class TestCopyDrafterRealign(DrafterConformance):
    def make_drafter(self, target):
        return CopyDrafter(max_copy=8, realign=True)


def test_realign_continues_copying_after_a_replaced_token():
    source = [10, 11, 12, 13, 14, 15, 16, 17]
    drafter = CopyDrafter(min_match=2, realign=True)
    context = [*source, 99, 10, 11]
    assert drafter.propose(context, 3).tokens == [12, 13, 14]  # an ordinary suffix match
    # The target accepted 12 and then emitted 50 instead of 13: a replaced token breaks the match ...
    context += [12, 50]
    draft = drafter.propose(context, 3)
    # ... and realignment copies what followed the replaced source token.
    assert (draft.tokens, draft.bucket) == ([14, 15, 16], "realign")
    assert CopyDrafter(min_match=2).propose(context, 3).tokens == []


class TestDraftModelDrafter(DrafterConformance):
    def make_drafter(self, target):
        return DraftModelDrafter(noisy_copy(target, scale=0.03))


class TestChain(DrafterConformance):
    def make_drafter(self, target):
        return [CopyDrafter(min_match=3), DraftModelDrafter(noisy_copy(target, scale=0.03))]


class TestCrossVocabDrafter(DrafterConformance):
    def make_drafter(self, target):
        draft_tokenizer, perm = permuted_byte_tokenizer(seed=3)
        draft = noisy_copy(permuted_copy(target, perm), scale=0.02)
        return CrossVocabDrafter(draft, draft_tokenizer=draft_tokenizer)


def test_cross_vocab_bridges_text_between_vocabularies():
    model, tokenizer = tiny_target("llama")
    draft_tokenizer, perm = permuted_byte_tokenizer(seed=3)
    assert draft_tokenizer("hello").input_ids != tokenizer("hello").input_ids
    assert draft_tokenizer.decode(draft_tokenizer("hello").input_ids) == "hello"
    drafter = CrossVocabDrafter(permuted_copy(model, perm), draft_tokenizer=draft_tokenizer)
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    stats = SpeculativeDecoder(model, drafter, "constant:k=4", tokenizer=tokenizer).generate(input_ids, 40).stats
    # The permuted copy predicts the same text; drafts are lost only where random bytes are not valid UTF-8
    # and do not survive the round trip through text.
    assert stats.drafters["cross-vocab"].accepted > 0
    assert stats.mean_accepted > 1.2


def test_copy_and_draft_model_both_draft_and_get_tokens_accepted():
    model, tokenizer = tiny_target("llama")
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    chain = [CopyDrafter(min_match=1), DraftModelDrafter(noisy_copy(model, scale=0.03))]
    stats = SpeculativeDecoder(model, chain, "constant:k=4").generate(input_ids, 48).stats
    assert stats.drafters["draft-model"].accepted > 0
    assert stats.drafters["draft-model"].drafted > stats.drafters["draft-model"].accepted  # some rejections too
    assert stats.drafters["copy"].proposals > 0
    assert stats.mean_accepted > 1.0


def test_draft_model_cache_follows_the_context_after_rollback():
    model, tokenizer = tiny_target("gpt2")
    drafter = DraftModelDrafter(noisy_copy(model, scale=0.03))
    input_ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
    SpeculativeDecoder(model, drafter, "constant:k=5").generate(input_ids, 30)
    # Whatever was rolled back, the cache holds exactly the tokens it believes it holds.
    assert drafter.cache.get_seq_length() == len(drafter.cached_ids)
    with torch.inference_mode():
        fresh = drafter.model(input_ids=torch.tensor([drafter.cached_ids])).logits[0, -1]
    assert drafter.cached_ids[: input_ids.shape[1]] == input_ids[0].tolist()
    assert torch.isfinite(fresh).all()


def test_copy_drafter_index_is_incremental():
    drafter = CopyDrafter(min_match=1)
    from crossedge.specdec.drafters import DraftContext

    drafter.begin(DraftContext(target=None))
    assert drafter.propose([1, 2, 3, 1, 2], 4).tokens == [3, 1, 2]
    index = drafter.index
    assert drafter.propose([1, 2, 3, 1, 2, 3], 2).tokens == [1, 2]
    assert drafter.index is index  # extended, not rebuilt


def test_draft_model_vocabulary_must_match():
    target, tokenizer = tiny_target("llama")
    other, _ = tiny_target("llama")
    other.resize_token_embeddings(300)
    # The target arrives in the draft context: the mismatch is refused when the engine begins.
    decoder = SpeculativeDecoder(target, DraftModelDrafter(other), "constant:k=2")
    with pytest.raises(SpecdecError, match="vocabulary"):
        decoder.generate(tokenizer("hi", return_tensors="pt").input_ids, 4)


def test_spec_building_takes_both_option_separators(specdec_plugin):
    from crossedge.specdec import build_chain

    old, new = build_drafters("copy:max_copy=8:min_match=3"), build_drafters("copy:max_copy=8,min_match=3")
    for drafters in (old, new):
        assert isinstance(drafters[0], CopyDrafter) and (drafters[0].max_copy, drafters[0].min_match) == (8, 3)
    drafters = build_drafters("prompt-lookup:max-copy=4,history:max_copy=2")
    assert [d.name for d in drafters] == ["copy", "history"] and drafters[0].max_copy == 4
    assert build_drafters("none") == [] and build_drafters("vanilla") == []
    chain, policy = build_chain("copy,history@heuristic:k=2")
    assert [d.name for d in chain] == ["copy", "history"] and (policy.name, policy.initial) == ("heuristic", 2)


def test_bad_drafter_specs_say_what_is_wrong(specdec_plugin):
    from crossedge.core.specs import SpecError

    with pytest.raises(SpecError, match="option max_copy takes an integer, got 'abc'"):
        build_drafters("copy:max_copy=abc")
    with pytest.raises(SpecError, match=r"no option 'colour'.*its options: max_copy, min_match, occurrence, realign"):
        build_drafters("copy:colour=red")
    with pytest.raises(SpecError, match="occurrence takes one of 'earliest', 'latest'"):
        build_drafters("copy:occurrence=middle")
    with pytest.raises(SpecError, match="twice"):
        build_drafters("copy,copy")
    with pytest.raises(SpecError, match="character 6"):
        build_drafters("copy,,copy")
    for bad in ["", "copy:max_copy"]:
        with pytest.raises(SpecError):
            build_drafters(bad)
    with pytest.raises(SpecdecError, match="max_copy >= 1"):
        build_drafters("copy:max_copy=0")
    with pytest.raises(SpecError, match="no option 'kk'"):
        build_drafters("copy@constant:kk=3")
    with pytest.raises(Exception, match="unknown drafter 'cpy': did you mean 'copy'"):
        build_drafters("cpy")


class TestHistoryDrafter(DrafterConformance):
    def make_drafter(self, target):
        drafter = HistoryDrafter(min_match=1)
        drafter.remember(list(range(20, 60)) * 2)  # unrelated history: drafts rejected, output unchanged
        return [CopyDrafter(min_match=3), drafter]


def test_history_drafter_copies_from_an_earlier_generation_only():
    model, tokenizer = tiny_target("llama")
    input_ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
    history = HistoryDrafter(min_match=2)
    decoder = SpeculativeDecoder(model, history, "constant:k=6")
    first = decoder.generate(input_ids, 40)
    # The first run has no history, so nothing is drafted even if it repeats itself.
    assert first.stats.drafters["history"].drafted == 0
    second = decoder.generate(input_ids, 40)
    assert second.tokens == first.tokens
    # The same prompt again: the earlier run's continuation is proposed and accepted.
    assert second.stats.drafters["history"].accepted >= 30
    assert second.stats.target_forwards < first.stats.target_forwards


def test_history_drafter_keeps_runs_apart_and_bounded():
    history = HistoryDrafter(min_match=1, max_tokens=10)
    history.remember([1, 2, 3])
    history.remember([4, 5])
    assert history.index.tokens == [1, 2, 3, -1, 4, 5]
    history.remember([6, 7, 8, 9])
    assert len(history.index) <= 10 and history.index.tokens[-4:] == [6, 7, 8, 9]
    from crossedge.specdec.drafters import DraftContext

    history.begin(DraftContext(target=None))
    assert history.propose([3], 4).tokens == []  # what followed 3 was the end of its run, not the next run
    with pytest.raises(SpecdecError, match="history drafter"):
        HistoryDrafter(max_copy=0)


def test_history_drafters_sharing_one_history_draft_from_what_either_remembers():
    from crossedge.specdec.drafters import DraftContext

    history = HistoryDrafter(min_match=1)
    twin = history.sharing()
    for drafter in (history, twin):
        drafter.begin(DraftContext(target=None))
    assert twin.propose([7, 8], 3).tokens == []
    # The history grew while the twin was matching against it: the twin starts its match again.
    history.remember([7, 8, 9, 10])
    assert twin.index is history.index
    assert twin.propose([7, 8], 3).tokens == [9, 10]
    twin.end([1, 2, 3])
    assert history.propose([5, 1], 3).tokens == [2, 3]
    # Each keeps its own place in its own sequence.
    assert twin.propose([7], 3).tokens == [8, 9, 10]


def test_vocab_bridge_learns_aligned_ngrams_and_translates_drafts():
    from crossedge.specdec.drafters import VocabBridge

    target_tokenizer = byte_tokenizer()
    draft_tokenizer, _ = permuted_byte_tokenizer(seed=3)
    bridge = VocabBridge()
    bridge.learn("héllo wörld", draft_tokenizer, target_tokenizer)

    def ids(tokenizer, text):
        return tokenizer(text, add_special_tokens=False).input_ids

    # "é" is two bytes in both vocabularies with one shared character span: one 2-gram pair.
    assert bridge.table[tuple(ids(draft_tokenizer, "é"))] == tuple(ids(target_tokenizer, "é"))
    translated, used = bridge.translate(ids(draft_tokenizer, "hollow") + ids(draft_tokenizer, "z"))
    assert translated == ids(target_tokenizer, "hollow") and used == 6  # "z" was never seen
    # Text before ``since`` is not learned again.
    fresh = VocabBridge()
    fresh.learn("ab", draft_tokenizer, target_tokenizer, since=1)
    assert list(fresh.table) == [tuple(ids(draft_tokenizer, "b"))]


def test_cross_vocab_drafts_through_the_ngram_cache():
    model, tokenizer = tiny_target("llama")
    draft_tokenizer, perm = permuted_byte_tokenizer(seed=3)
    drafter = CrossVocabDrafter(permuted_copy(model, perm), draft_tokenizer=draft_tokenizer)
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    result = SpeculativeDecoder(model, drafter, "constant:k=4", tokenizer=tokenizer).generate(input_ids, 40)
    assert result.tokens == greedy_reference(model, input_ids, 40)
    assert drafter.bridge.translated > 0
    assert result.stats.drafters["cross-vocab"].accepted > 0
    plain = CrossVocabDrafter(permuted_copy(model, perm), draft_tokenizer=draft_tokenizer, ngram_cache=False)
    assert plain.bridge is None
