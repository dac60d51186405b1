"""The mirror drafter: drafts ahead while the target verifies, and stays lossless either way."""

import copy

import pytest
import torch

from crossedge.core.contracts.drafter import DrafterError
from crossedge.specdec import BatchedSpeculativeDecoder, ConstantPolicy
from crossedge.specdec.drafters import DraftModelDrafter
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.errors import SpecdecError
from crossedge.specdec.mirror import MirrorDrafter
from crossedge.specdec.sampling import SamplingConfig
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, DrafterConformance, greedy_reference, noisy_copy, tiny_target


class TestMirrorDrafter(DrafterConformance):
    def make_drafter(self, target):
        return MirrorDrafter(noisy_copy(target, scale=0.03), ahead=3)


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


def ids_of(tokenizer, index=0):
    return tokenizer(CONFORMANCE_PROMPTS[index], return_tensors="pt").input_ids


def test_an_exact_draft_model_is_served_from_the_concurrent_draft(target):
    """A draft model identical to the target is always right, so after the first proposal every
    proposal comes from the thread that drafted it during the previous verification."""
    model, tokenizer = target
    ids = ids_of(tokenizer)
    drafter = MirrorDrafter(copy.deepcopy(model), ahead=4)
    result = SpeculativeDecoder(model, [drafter], ConstantPolicy(k=4)).generate(ids, 30)
    assert result.tokens == greedy_reference(model, ids, 30)
    assert drafter.misses == 1
    assert drafter.hits >= 4
    assert result.stats.drafters["mirror"].accepted == result.stats.drafters["mirror"].drafted


def test_proposals_match_what_the_draft_model_drafts_on_the_spot(target):
    """Served or not, a mirror proposal is the draft model's own greedy continuation."""
    model, tokenizer = target
    draft = noisy_copy(model, scale=0.05)
    mirror, plain = MirrorDrafter(draft, ahead=2), DraftModelDrafter(copy.deepcopy(draft))
    seen = []
    propose = mirror.propose

    def checked(context_ids, k):
        got = propose(context_ids, k)
        seen.append(list(context_ids))
        plain.begin(mirror.context)
        assert got.tokens == plain.propose(context_ids, k).tokens
        return got

    mirror.propose = checked
    ids = ids_of(tokenizer, 1)
    result = SpeculativeDecoder(model, [mirror], ConstantPolicy(k=5)).generate(ids, 30)
    assert result.tokens == greedy_reference(model, ids, 30)
    assert len(seen) > 3 and mirror.hits > 0 and mirror.misses > 1


def test_a_longer_request_than_drafted_ahead_is_completed_on_the_spot(target):
    model, tokenizer = target
    ids = ids_of(tokenizer, 1)
    drafter = MirrorDrafter(copy.deepcopy(model), ahead=1)
    result = SpeculativeDecoder(model, [drafter], ConstantPolicy(k=4)).generate(ids, 24)
    assert result.tokens == greedy_reference(model, ids, 24)
    assert drafter.hits > 0
    assert result.stats.mean_accepted > 3


def test_sampling_runs_nothing_ahead_and_matches_draft_model(target):
    model, tokenizer = target
    ids = ids_of(tokenizer)
    draft = noisy_copy(model, scale=0.03)
    sampling = SamplingConfig(temperature=0.8, seed=5)
    mirror = MirrorDrafter(draft, ahead=3)
    got = SpeculativeDecoder(model, [mirror], ConstantPolicy(k=3)).generate(ids, 20, sampling).tokens
    want = SpeculativeDecoder(model, [DraftModelDrafter(copy.deepcopy(draft))], ConstantPolicy(k=3))
    assert got == want.generate(ids, 20, sampling).tokens
    assert mirror.hits == 0


def test_the_thread_count_is_the_drafters_own(target):
    model, tokenizer = target
    before = torch.get_num_threads()
    drafter = MirrorDrafter(copy.deepcopy(model), ahead=2, threads=1)
    SpeculativeDecoder(model, [drafter], ConstantPolicy(k=2)).generate(ids_of(tokenizer), 8)
    assert torch.get_num_threads() == before


def test_an_abandoned_stream_does_not_race_the_next_run(target):
    model, tokenizer = target
    ids = ids_of(tokenizer)
    drafter = MirrorDrafter(copy.deepcopy(model), ahead=4)
    decoder = SpeculativeDecoder(model, [drafter], ConstantPolicy(k=4))
    stream = decoder.stream(ids, 40)
    for _ in range(7):
        next(stream)
    assert decoder.generate(ids, 20).tokens == greedy_reference(model, ids, 20)


def test_batched_decoding_refuses_it(target):
    model, tokenizer = target
    decoder = BatchedSpeculativeDecoder(
        model, lambda: [MirrorDrafter(copy.deepcopy(model))], lambda: ConstantPolicy(k=2)
    )
    with pytest.raises(DrafterError, match="does not draft while it verifies"):
        decoder.generate_many([tokenizer(CONFORMANCE_PROMPTS[0]).input_ids], 4)


@pytest.mark.parametrize(("options", "message"), [({"ahead": 0}, "ahead must be 1..64"), ({"threads": 0}, "1..256")])
def test_bad_options_are_refused(target, options, message):
    with pytest.raises(SpecdecError, match=message):
        MirrorDrafter(target[0], **options)
