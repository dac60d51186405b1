"""The drafter and draft-length policy contracts, and the drafter suite catching what it should."""

import pytest
import torch

from crossedge.core import get_registry, hookimpl, registered
from crossedge.core.conformance.drafter import (
    CONFORMANCE_PROMPTS,
    DrafterConformance,
    greedy_reference,
    reference_generate,
    tiny_target,
)
from crossedge.core.contracts.drafter import (
    Draft,
    DraftContext,
    Drafter,
    DrafterError,
    NonFiniteLogitsError,
    Sampler,
    TargetCacheView,
)
from crossedge.core.contracts.policy import DraftLengthPolicy


class CopyBackDrafter(Drafter):
    """Proposes what followed the previous occurrence of the last token (a one-token prompt lookup)."""

    name = "copy-back"
    cheap = True

    def __init__(self, max_copy: int = 8):
        self.max_copy = max_copy

    def propose(self, context_ids, k):
        last = context_ids[-1]
        for i in range(len(context_ids) - 2, -1, -1):
            if context_ids[i] == last:
                return Draft(list(context_ids[i + 1 : i + 1 + min(k, self.max_copy)]))
        return Draft([])


class TestCopyBackDrafter(DrafterConformance):
    def make_drafter(self, target):
        return CopyBackDrafter()


class OverlongDrafter(CopyBackDrafter):
    name = "overlong"

    def propose(self, context_ids, k):
        return Draft([context_ids[-1]] * (k + 1))


class SwallowingDrafter(CopyBackDrafter):
    name = "swallowing"

    def __init__(self, max_copy: int = 8, **_):
        super().__init__(max_copy)


def test_the_suite_catches_overlong_proposals_and_swallowed_options():
    target = tiny_target("llama")
    overlong = TestCopyBackDrafter()
    overlong.make_drafter = lambda model: OverlongDrafter()
    with pytest.raises(AssertionError, match="proposals longer than k"):
        overlong.test_proposals_are_at_most_k(target)
    swallowing = TestCopyBackDrafter()
    swallowing.make_drafter = lambda model: SwallowingDrafter()
    with pytest.raises(AssertionError, match="takes \\*\\*_"):
        swallowing.test_refuses_unknown_options(target)


def test_reference_verifier_is_greedy_identical_whatever_is_drafted():
    model, tokenizer = tiny_target("gpt2")
    input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    run = reference_generate(model, OverlongDrafter(), input_ids, 20, lengths=(3,))
    # Wrong drafts are cropped away: the output is plain greedy, and every forward but the first verified a draft.
    assert run.tokens == greedy_reference(model, input_ids, 20)
    assert run.forwards == len(run.tokens) - run.accepted


def test_cache_view_records_hidden_states_and_lends_the_cache_back_unchanged():
    from transformers import DynamicCache

    model, _ = tiny_target("llama")
    cache = DynamicCache(config=model.config)
    view = TargetCacheView(cache)
    view.keep_hidden_states(1)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), cache=cache, use_cache=True, output_hidden_states=True)
    view.record(out.hidden_states, 0)
    assert view.length == 4
    assert torch.equal(view.hidden_states(1, 1, 3), out.hidden_states[1][:, 1:3])
    assert view.hidden_states(1, 2, 6) is None  # past what the cache holds
    with pytest.raises(DrafterError, match="keep_hidden_states\\(2\\)"):
        view.hidden_states(2, 0, 1)
    keys = [layer.keys.clone() for layer in cache.layers]
    with view.scratch() as borrowed, torch.inference_mode():
        model(input_ids=torch.tensor([[9, 10]]), cache=borrowed, use_cache=True)
        assert borrowed.get_seq_length() == 6
    assert view.length == 4
    assert all(torch.equal(layer.keys, k) for layer, k in zip(cache.layers, keys, strict=True))


def test_sampler_is_greedy_and_refuses_non_finite_logits():
    sampler = Sampler()
    assert sampler.draw(torch.tensor([0.0, 3.0, 1.0]), "x") == (1, None)
    with pytest.raises(NonFiniteLogitsError, match="the draft model produced non-finite"):
        sampler.draw(torch.tensor([0.0, float("nan")]), "the draft model")
    drafter = CopyBackDrafter()
    assert drafter.sampler.greedy  # before begin
    context = DraftContext(target=None, sampler=sampler)
    drafter.begin(context)
    assert drafter.context is context and drafter.sampler is sampler


class HalvingPolicy(DraftLengthPolicy):
    name = "halving"

    def __init__(self, k: int = 8):
        self.k = self.max_k = k

    def choose(self, drafter, bucket, max_k):
        return min(self.k, max_k)


class PolicyPlugin:
    @hookimpl
    def register_draft_policies(self, register):
        register(HalvingPolicy, aliases=("half",))


def test_draft_policies_register_through_their_hook():
    with registered(PolicyPlugin(), name="policy-test"):
        registry = get_registry("draft_policy")
        assert registry.get("half") is HalvingPolicy
        assert registry.entry("halving").plugin == "policy-test"
    assert "halving" not in get_registry("draft_policy")
