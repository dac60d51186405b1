"""The conformance suite every drafter runs by subclassing, and the reference verifier it runs on.

A new drafter gets its tests by declaring one class::

    from crossedge.core.conformance.drafter import DrafterConformance

    class TestMyDrafter(DrafterConformance):
        def make_drafter(self, target):
            return MyDrafter()

The suite checks, on tiny random Llama and GPT-2 targets, that greedy speculative output
is token-identical to ``model.generate(do_sample=False)``, that no proposal is longer
than the ``k`` asked for, that ``feedback``/``end`` are accepted and a second generation
starts clean, and that the drafter class refuses an unknown option.

Why core carries its own verifier: core cannot import crossedge-specdec, and a
third-party drafter should need crossedge-core alone to prove itself. So
:func:`reference_generate` is a deliberately plain draft-then-verify loop (greedy, one
target forward per draft, rollback by cropping the cache) that hands drafters the same
:class:`DraftContext` as the real engine does. An engine package overrides the
``engine`` fixture to run the suite on its own engine as well (crossedge-specdec does,
under each of its draft-length policies). Importing this module needs pytest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from typing import Any

import pytest

from ..contracts.drafter import Draft, DraftContext, Drafter, Sampler, TargetCacheView, check_finite
from ..specs import Spec, SpecError, bind

#: Prompts with repeated structure so that copy-style drafters get to draft.
CONFORMANCE_PROMPTS = (
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return",
    "the cat sat on the mat. the cat sat on the",
)


def tiny_target(arch: str, seed: int = 1) -> tuple[Any, Any]:
    """A tiny random target whose greedy output varies (large init, so not one repeated token)."""
    from ..testing import tiny_causal_lm

    return tiny_causal_lm(arch, seed=seed, initializer_range=0.15, layers=2, hidden=32)


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def greedy_reference(model: Any, input_ids: Any, max_new_tokens: int) -> list[int]:
    """New tokens of plain transformers greedy decoding, up to and including EOS."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=max_new_tokens
        )
    tokens = out[0, input_ids.shape[1] :].tolist()
    eos = _eos_ids(model)
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


@dataclass
class ReferenceRun:
    """What :func:`reference_generate` produced: the new tokens and every (asked k, proposed length)."""

    tokens: list[int]
    proposals: list[tuple[int, int]] = field(default_factory=list)
    accepted: int = 0
    forwards: int = 0


def reference_generate(
    model: Any,
    drafters: Drafter | Sequence[Drafter],
    input_ids: Any,
    max_new_tokens: int,
    *,
    lengths: Sequence[int] = (4,),
    tokenizer: Any = None,
) -> ReferenceRun:
    """Greedy speculative decoding in its plainest form: the first drafter in the chain with a
    non-empty proposal drafts (a chain or a tree), the target verifies it in one forward, and the
    cache keeps the accepted path only.

    ``lengths`` are the draft lengths asked for, in turn (cycled), so drafters see varied ``k``.
    """
    import torch
    from transformers import DynamicCache

    chain = [drafters] if isinstance(drafters, Drafter) else list(drafters)
    prompt = [int(t) for t in (input_ids[0].tolist() if hasattr(input_ids, "tolist") else input_ids)]
    window = getattr(model.config, "max_position_embeddings", None)
    limit = max_new_tokens if window is None else min(max_new_tokens, window - len(prompt))
    eos = _eos_ids(model)
    cache = DynamicCache(config=model.config)
    view = TargetCacheView(cache)
    context = DraftContext(target=model, tokenizer=tokenizer, sampler=Sampler(), cache=view, window=window)
    for drafter in chain:
        drafter.begin(context)
    run = ReferenceRun([])
    ids = list(prompt)
    asked = cycle(lengths)

    def forward(feed: list[int], keep: int, parents: list[int] | None = None) -> Any:
        out = view.forward(model, feed, keep, parents)
        run.forwards += 1
        check_finite(out.logits[0], "the target model")
        return out.logits[0]

    with torch.inference_mode():
        pending = [int(forward(ids, 1)[-1].argmax())]
        while True:
            for token in pending:
                ids.append(token)
                run.tokens.append(token)
                if token in eos or len(run.tokens) >= limit:
                    for drafter in chain:
                        drafter.end(ids)
                    return run
            budget = limit - len(run.tokens) - 1
            draft, used = Draft([]), None
            if budget > 0:
                k = min(next(asked), budget)
                for drafter in chain:
                    proposal = drafter.propose(ids, k)
                    run.proposals.append((k, len(proposal)))
                    if len(proposal):
                        draft, used = proposal.truncated(k), drafter
                        break
            # A chain is fed plainly; a tree gets its ancestor mask. Either way the accepted
            # path's cache is kept and the rest dropped.
            parents = draft.parent_list() if draft.is_tree else None
            for drafter in chain:
                drafter.verifying(ids, draft)
            logits = forward([ids[-1], *draft.tokens], len(draft) + 1, parents)
            path, next_token = draft.greedy_path(logits.argmax(dim=-1).tolist())
            view.keep_fed(len(draft) + 1, [0, *(node + 1 for node in path)])
            if used is not None:
                used.feedback(len(path))
                run.accepted += len(path)
            pending = [*(draft.tokens[node] for node in path), next_token]


#: An engine runs (model, tokenizer, drafters, input_ids, max_new_tokens) and returns the new tokens.
Engine = Callable[[Any, Any, list[Drafter], Any, int], list[int]]


class DrafterConformance:
    """Base class of drafter test classes; subclasses implement :meth:`make_drafter`."""

    max_new_tokens = 32

    def make_drafter(self, target: Any) -> Drafter | list[Drafter]:
        """A fresh drafter (or chain) for the given target model."""
        raise NotImplementedError

    def _chain(self, target: Any) -> list[Drafter]:
        made = self.make_drafter(target)
        return [made] if isinstance(made, Drafter) else list(made)

    @pytest.fixture(params=["llama", "gpt2"], scope="class")
    @classmethod
    def target(cls, request: Any) -> tuple[Any, Any]:
        """(model, tokenizer) of a tiny random target."""
        return tiny_target(request.param)

    @pytest.fixture(params=[(4,), (1, 3, 8)], ids=["k4", "k-varied"])
    def engine(self, request: Any) -> Engine:
        """The engine under which greedy identity is checked; engine packages override this fixture."""
        lengths = request.param

        def run(model: Any, tokenizer: Any, drafters: list[Drafter], input_ids: Any, max_new_tokens: int) -> list[int]:
            return reference_generate(
                model, drafters, input_ids, max_new_tokens, lengths=lengths, tokenizer=tokenizer
            ).tokens

        return run

    @pytest.mark.parametrize("prompt", CONFORMANCE_PROMPTS, ids=["code", "prose"])
    def test_greedy_identity(self, target: Any, engine: Engine, prompt: str) -> None:
        """Speculative greedy output equals plain greedy output, token for token."""
        model, tokenizer = target
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = greedy_reference(model, input_ids, self.max_new_tokens)
        assert engine(model, tokenizer, self._chain(model), input_ids, self.max_new_tokens) == reference

    def test_proposals_are_at_most_k(self, target: Any) -> None:
        """No proposal is longer than the ``k`` asked for, whatever ``k`` is."""
        model, tokenizer = target
        input_ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
        run = reference_generate(
            model, self._chain(model), input_ids, self.max_new_tokens, lengths=(1, 2, 5, 3), tokenizer=tokenizer
        )
        assert run.proposals, "the drafter was never asked to propose"
        too_long = [(k, n) for k, n in run.proposals if n > k]
        assert not too_long, f"proposals longer than k (k, length): {too_long}"

    def test_feedback_end_and_a_second_generation(self, target: Any) -> None:
        """``feedback`` and ``end`` are accepted, and a second ``begin`` starts a clean, identical run."""
        model, tokenizer = target
        input_ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
        chain = self._chain(model)
        first = reference_generate(model, chain, input_ids, self.max_new_tokens, tokenizer=tokenizer)
        second = reference_generate(model, chain, input_ids, self.max_new_tokens, tokenizer=tokenizer)
        assert first.tokens == second.tokens == greedy_reference(model, input_ids, self.max_new_tokens)
        assert first.accepted <= sum(n for _, n in first.proposals)

    def test_refuses_unknown_options(self, target: Any) -> None:
        """The class names itself and takes keyword options only: an unknown one is refused, not swallowed."""
        for drafter in self._chain(target[0]):
            cls = type(drafter)
            assert isinstance(cls.name, str) and cls.name, f"{cls.__name__} needs a non-empty class attribute 'name'"
            parameters = list(inspect.signature(cls.__init__).parameters.values())
            swallowing = [p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
            assert not swallowing, f"{cls.__name__}.__init__ takes **{swallowing[0]}: mistyped options would vanish"
            with pytest.raises(TypeError):
                cls(no_such_option=1)
            # From a spec, the one binder in core refuses it listing the options the class does take.
            with pytest.raises(SpecError, match="has no option 'no_such_option'; .*its options: ") as refused:
                bind(Spec(cls.name, {"no_such_option": "1"}), cls, kind="drafter")
            options = [p.name for p in parameters if p.name != "self"]
            assert all(o in str(refused.value) for o in options), str(refused.value)
