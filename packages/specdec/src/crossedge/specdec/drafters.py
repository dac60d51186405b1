"""The built-in drafters and ``--drafter`` spec building.

The contract (:class:`Drafter`, :class:`Draft`, the :class:`DraftContext` handed to
``begin``) lives in :mod:`crossedge.core.contracts.drafter`, so third-party drafters
depend on crossedge-core alone; it is re-exported here. Drafters register through the
``register_drafters`` hook with their class; ``name`` is the spec name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter, Sampler
from crossedge.core.specs import Chain, Spec, SpecError, bind, build, parse_chain

from .errors import SpecdecError
from .sampling import check_finite
from .suffix_index import SuffixIndex, SuffixMatcher

__all__ = [
    "CopyDrafter",
    "CrossVocabDrafter",
    "Draft",
    "DraftContext",
    "DraftModelDrafter",
    "Drafter",
    "HistoryDrafter",
    "Sampler",
    "VocabBridge",
    "build_chain",
    "build_drafters",
    "check_drafter_spec",
    "parse_drafter_spec",
]


class CopyDrafter(Drafter):
    """Copy what followed the longest earlier match of the current suffix (prompt lookup / CopySpec).

    With ``realign`` (off by default), when the suffix has no usable match the drafter keeps
    copying from where the last copy would have continued, one source token per emitted
    token: an edit that replaces a token (a renamed variable, a changed word) breaks the
    suffix match for a few tokens, but the text after it often goes on as in the source.
    Such drafts get the bucket ``realign``, so the cost-aware policy learns separately
    whether they pay. Measured on the default suite it helped some tasks and hurt others
    (docs/benchmarks.md), so it is an option.
    """

    name = "copy"
    description = "copy the continuation of the longest earlier suffix match in prompt and output"
    cheap = True

    def __init__(
        self,
        max_copy: int = 16,
        min_match: int = 2,
        occurrence: Literal["earliest", "latest"] = "earliest",
        realign: bool = False,
    ):
        if max_copy < 1 or min_match < 1:
            raise SpecdecError(f"copy drafter needs max_copy >= 1 and min_match >= 1, got {max_copy}, {min_match}")
        if occurrence not in ("earliest", "latest"):
            raise SpecdecError(f"copy drafter occurrence must be 'earliest' or 'latest', got {occurrence!r}")
        self.max_copy = int(max_copy)
        self.min_match = int(min_match)
        #: Which earlier occurrence of the longest match to copy from when there are several.
        self.latest = occurrence == "latest"
        self.realign = bool(realign)
        self.index = SuffixIndex()
        # Source position the last proposal copied from, and the context length at that time.
        self.source: int | None = None
        self.proposed_at = 0

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        # The index is built from the first proposal's context (the prompt plus the first token).
        self.index = SuffixIndex()
        self.source = None

    def _sync(self, context_ids: Sequence[int]) -> None:
        indexed = len(self.index)
        # The context only grows during a run; anything else means a new sequence.
        if indexed > len(context_ids) or (indexed and context_ids[indexed - 1] != self.index.tokens[-1]):
            self.index = SuffixIndex(context_ids)
            self.source = None
        else:
            self.index.extend(context_ids[indexed:])

    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        self._sync(context_ids)
        n = len(self.index)
        # Where the previous copy would be now if every emitted token had replaced one source token.
        aligned = None if self.source is None else self.source + (n - self.proposed_at)
        self.proposed_at = n
        match, end = self.index.latest_match() if self.latest else self.index.longest_match()
        take = min(k, self.max_copy)
        if match >= self.min_match and take > 0:
            self.source = end + 1
            return Draft(self.index.tokens[end + 1 : end + 1 + take], None, _match_bucket(match))
        if self.realign and aligned is not None and aligned < n - 1 and take > 0:
            self.source = aligned
            return Draft(self.index.tokens[aligned : aligned + take], None, "realign")
        self.source = aligned if aligned is not None and aligned < n - 1 else None
        return Draft([], None, _match_bucket(match))


class HistoryDrafter(Drafter):
    """Copy from what this drafter saw in earlier generations (prompts and outputs), not the current one.

    Models repeat their own phrasing across answers (chat boilerplate, the wording of
    code explanations); llama.cpp's lookup decoding keeps such an n-gram cache across
    runs. Every finished context is appended to one suffix automaton (with a separator,
    so no match spans two runs); while decoding, a matcher streams the current context
    through it and proposes what followed the longest match. Chain it after ``copy``
    (``copy,history``) so the current text is tried first. Buckets are prefixed ``h``.
    Sequences decoding side by side (rows of a batch) each take a :meth:`sharing` drafter:
    their own matcher over one shared history, so what any of them finishes, all draft from.
    """

    name = "history"
    description = "copy from earlier generations of the same decoder (an n-gram cache across runs)"
    cheap = True
    SEPARATOR: ClassVar[int] = -1

    def __init__(self, max_copy: int = 16, min_match: int = 2, max_tokens: int = 1_000_000):
        if max_copy < 1 or min_match < 1 or max_tokens < 2:
            raise SpecdecError(
                f"history drafter needs max_copy >= 1, min_match >= 1 and max_tokens >= 2, "
                f"got {max_copy}, {min_match}, {max_tokens}"
            )
        self.max_copy = int(max_copy)
        self.min_match = int(min_match)
        self.max_tokens = int(max_tokens)
        self.memory = _HistoryMemory()
        self._restart()

    @property
    def index(self) -> SuffixIndex:
        """The suffix automaton over every remembered sequence (shared with :meth:`sharing` drafters)."""
        return self.memory.index

    def sharing(self) -> HistoryDrafter:
        """A drafter for a sequence decoding beside this one's: its own matcher, this drafter's history."""
        import copy

        twin = copy.copy(self)
        twin._restart()
        return twin

    def _restart(self) -> None:
        """Match from scratch against the history as it is now."""
        self.matcher = SuffixMatcher(self.memory.index)
        self.seen_version = self.memory.version
        self.fed: list[int] = []

    def remember(self, tokens: Sequence[int]) -> None:
        """Add one finished sequence to the history (the oldest half is dropped past ``max_tokens``)."""
        if not len(tokens):
            return
        memory = self.memory
        if len(memory.index) + len(tokens) + 1 > self.max_tokens:
            kept = memory.index.tokens[-(self.max_tokens // 2) :]
            memory.index = SuffixIndex(kept[kept.index(self.SEPARATOR) + 1 :] if self.SEPARATOR in kept else [])
        if len(memory.index):
            memory.index.append(self.SEPARATOR)
        memory.index.extend(list(tokens)[-(self.max_tokens // 2) :])
        # A matcher must not stream over an index that grew under it: every drafter sharing it restarts.
        memory.version += 1

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        self._restart()

    def end(self, context_ids: Sequence[int]) -> None:
        self.remember(context_ids)
        self._restart()

    def _sync(self, context_ids: Sequence[int]) -> None:
        if self.seen_version != self.memory.version:
            self._restart()
        fed = len(self.fed)
        if fed > len(context_ids) or (fed and context_ids[fed - 1] != self.fed[-1]):
            self.matcher.reset()
            self.fed = []
            fed = 0
        new = [int(t) for t in context_ids[fed:]]
        self.matcher.feed(new)
        self.fed.extend(new)

    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        self._sync(context_ids)
        match = self.matcher.length
        if match < self.min_match:
            return Draft([], None, "h" + _match_bucket(match))
        tokens = self.matcher.continuation(min(k, self.max_copy), stop=self.SEPARATOR)
        return Draft(tokens, None, "h" + _match_bucket(match))


class _HistoryMemory:
    """What a history drafter remembered, held apart so that drafters decoding side by side share it."""

    __slots__ = ("index", "version")

    def __init__(self) -> None:
        self.index = SuffixIndex()
        #: Counts changes to ``index``; a drafter whose matcher saw an older version restarts it.
        self.version = 0


def _match_bucket(match: int) -> str:
    if match <= 2:
        return f"m{match}"
    if match <= 4:
        return "m3-4"
    if match <= 8:
        return "m5-8"
    return "m9+"


def output_size(model: Any) -> int:
    """Rows of a causal LM's logits, whatever its head became (repacked by a backend, quantized)."""
    head = model.get_output_embeddings()
    size = getattr(head, "out_features", None)
    if size is None:
        weight = getattr(head, "weight", None)
        size = weight.shape[0] if isinstance(weight, torch.Tensor) else model.config.vocab_size
    return int(size)


class DraftModelDrafter(Drafter):
    """A smaller causal LM with the same tokenizer drafting autoregressively with its own rolled-back KV cache."""

    name = "draft-model"
    description = "a smaller model with the same tokenizer (option model=NAME)"
    provides_probs = True

    def __init__(self, model: Any = None):
        if model is None:
            raise SpecdecError(f"the {self.name} drafter needs a model: use '{self.name}:model=NAME' in --drafter")
        if isinstance(model, str):
            model = self._load(model)
        self.model = model
        self.window = getattr(model.config, "max_position_embeddings", None)
        self.cache = None
        self.cached_ids: list[int] = []
        self._checked_target: Any = None

    def _load(self, name: str) -> Any:
        from crossedge.core import load_model

        return load_model(name).model

    def _check_target(self, target: Any) -> None:
        """Refuse a target whose vocabulary differs from the draft model's."""
        target_vocab, draft_vocab = output_size(target), output_size(self.model)
        if target_vocab != draft_vocab:
            raise SpecdecError(
                f"draft model vocabulary ({draft_vocab}) differs from the target's ({target_vocab}); "
                f"draft-model needs the same tokenizer (use cross-vocab:model=NAME for a different one)"
            )

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        from transformers import DynamicCache

        if context.target is not None and context.target is not self._checked_target:
            self._check_target(context.target)
            self._checked_target = context.target
        self.cache = DynamicCache(config=self.model.config)
        self.trim_always = any(getattr(layer, "is_sliding", False) for layer in getattr(self.cache, "layers", ()))
        if self.trim_always:
            self.cache.activate_past_recording()
        self.cached_ids = []

    def _rollback(self, context_ids: Sequence[int]) -> None:
        common = 0
        limit = min(len(self.cached_ids), len(context_ids))
        while common < limit and self.cached_ids[common] == context_ids[common]:
            common += 1
        # Keep one token uncached so the next forward always yields logits for the next position.
        common = min(common, len(context_ids) - 1)
        extra = len(self.cached_ids) - common
        if extra > 0 or (self.trim_always and self.cached_ids):
            self.cache.crop(-extra)
            del self.cached_ids[common:]

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        tokens, rows = self._draft_tokens(context_ids, k, sample=not self.sampler.greedy)
        return Draft(tokens, torch.stack(rows) if rows else None)

    def _draft_tokens(self, context_ids: Sequence[int], k: int, sample: bool) -> tuple[list[int], list[torch.Tensor]]:
        """Up to ``k`` draft-vocabulary tokens after ``context_ids``, with their q rows when sampling."""
        if self.window is not None:
            k = min(k, self.window - len(context_ids))
        if k <= 0:
            return [], []
        self._rollback(context_ids)
        feed = list(context_ids[len(self.cached_ids) :])
        tokens: list[int] = []
        rows = []
        for _ in range(k):
            out = self.model(input_ids=torch.tensor([feed]), cache=self.cache, use_cache=True, logits_to_keep=1)
            self.cached_ids.extend(feed)
            logits = out.logits[0, -1]
            if sample:
                token, probs = self.draw(logits, "the draft model")
            else:
                check_finite(logits, "the draft model")
                token, probs = int(logits.argmax()), None
            if probs is not None:
                rows.append(probs)
            tokens.append(token)
            feed = [token]
        return tokens, rows


class VocabBridge:
    """An online n-gram cache from draft-token sequences to the target tokens that spell the same text.

    OmniDraft's cross-vocabulary cache: both tokenizers cut the same text, and wherever
    their cuts coincide, the draft n-gram between two common cuts spells exactly the target
    m-gram between them (n, m <= ``max_n``). Those pairs are learned from the running context;
    a drafted sequence is then translated by longest cached prefixes, and only a tail the
    cache does not know goes through decode-and-re-encode.
    """

    def __init__(self, max_n: int = 4, max_entries: int = 200_000):
        self.max_n = max_n
        self.max_entries = max_entries
        self.table: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.translated = 0  # target tokens produced from the cache
        self.bridged = 0  # target tokens produced by re-encoding text

    @staticmethod
    def _cuts(offsets: Sequence[tuple[int, int]]) -> list[int]:
        """Character positions after which a tokenization has a complete token (one per token, -1 inside)."""
        cuts = []
        for i, (_, end) in enumerate(offsets):
            complete = i + 1 == len(offsets) or offsets[i + 1][0] >= end
            cuts.append(end if complete else -1)
        return cuts

    def learn(self, text: str, draft_tokenizer: Any, target_tokenizer: Any, since: int = 0) -> None:
        """Align both tokenizations of ``text`` and cache the n-gram pairs between common cuts after ``since``."""
        if len(self.table) >= self.max_entries:
            return
        encoded = []
        for tokenizer in (draft_tokenizer, target_tokenizer):
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            encoded.append((enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]))
        (draft_ids, draft_off), (target_ids, target_off) = encoded
        draft_cuts, target_cuts = self._cuts(draft_off), self._cuts(target_off)
        i = j = 0
        di = dj = 0  # first token of the current segment in each tokenization
        while i < len(draft_ids) and j < len(target_ids):
            a, b = draft_cuts[i], target_cuts[j]
            if a == b and a >= 0:
                draft_part, target_part = tuple(draft_ids[di : i + 1]), tuple(target_ids[dj : j + 1])
                if a > since and len(draft_part) <= self.max_n and len(target_part) <= self.max_n:
                    self.table[draft_part] = target_part
                i, j = i + 1, j + 1
                di, dj = i, j
            elif a < 0 or (b >= 0 and a < b):
                i += 1
            else:
                j += 1

    def translate(self, draft_tokens: Sequence[int]) -> tuple[list[int], int]:
        """Target tokens for the longest prefix of ``draft_tokens`` the cache can spell, and that prefix's length."""
        out: list[int] = []
        i = 0
        while i < len(draft_tokens):
            for n in range(min(self.max_n, len(draft_tokens) - i), 0, -1):
                hit = self.table.get(tuple(draft_tokens[i : i + n]))
                if hit is not None:
                    out.extend(hit)
                    i += n
                    break
            else:
                break
        return out, i


class CrossVocabDrafter(DraftModelDrafter):
    """A draft model with a different tokenizer, bridged through text (universal assisted decoding).

    Each step decodes the target context to text, re-encodes it with the draft
    tokenizer (the draft KV cache keeps the longest unchanged prefix) and drafts
    greedily. The drafted tokens are translated into target tokens by an online
    n-gram cache learned from the context (:class:`VocabBridge`, ``ngram_cache=true``,
    the default); what the cache cannot spell is decoded to text and re-encoded with
    the target tokenizer. The proposal is deterministic given the context, so
    verification treats it as a point mass, which keeps sampling exact.
    """

    name = "cross-vocab"
    description = "a draft model with a different tokenizer, bridged through text (option model=NAME)"
    provides_probs = False

    def __init__(self, model: Any = None, draft_tokenizer: Any = None, ngram_cache: bool = True):
        if model is None:
            raise SpecdecError("the cross-vocab drafter needs a model: use 'cross-vocab:model=NAME' in --drafter")
        if isinstance(model, str):
            from crossedge.core import load_model

            loaded = load_model(model)
            model, draft_tokenizer = loaded.model, loaded.tokenizer
        if draft_tokenizer is None:
            raise SpecdecError("cross-vocab needs the draft model's tokenizer (draft_tokenizer=, or model=NAME)")
        super().__init__(model)
        self.draft_tokenizer = draft_tokenizer
        self.target_tokenizer: Any = None
        self.bridge = VocabBridge() if ngram_cache else None
        self.learned_chars = 0

    def _check_target(self, target: Any) -> None:
        """Any vocabulary will do: drafts are bridged through text."""

    def begin(self, context: DraftContext) -> None:
        if context.tokenizer is None:
            raise SpecdecError(
                "cross-vocab bridges through text and needs the target's tokenizer: "
                "pass tokenizer= to SpeculativeDecoder"
            )
        super().begin(context)
        self.target_tokenizer = context.tokenizer
        self.learned_chars = 0

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        text = self.target_tokenizer.decode(list(context_ids), skip_special_tokens=False)
        draft_context = self.draft_tokenizer(text).input_ids
        draft_tokens, _ = self._draft_tokens(draft_context, k, sample=False)
        tokens: list[int] = []
        rest = draft_tokens
        if self.bridge is not None:
            # Learn from the text added since the last step. Tokenizing only a tail keeps the cost per step
            # flat; the tail starts earlier than what is learned, so the tokenizers' cuts have settled there.
            # (This is a character offset into ``text``, kept apart from any timing.)
            tail = max(0, self.learned_chars - 64)
            since = max(0, self.learned_chars - 32) - tail
            self.bridge.learn(text[tail:], self.draft_tokenizer, self.target_tokenizer, since=since)
            self.learned_chars = len(text)
            tokens, used = self.bridge.translate(draft_tokens)
            self.bridge.translated += len(tokens)
            rest = draft_tokens[used:]
        if rest and len(tokens) < k:
            drafted_text = self.draft_tokenizer.decode(rest, skip_special_tokens=True)
            bridged = self.target_tokenizer(drafted_text, add_special_tokens=False).input_ids if drafted_text else []
            if self.bridge is not None:
                self.bridge.bridged += len(bridged)
            tokens.extend(bridged)
        return Draft(list(tokens[:k]))


DRAFTER_KIND = "drafter"
POLICY_KIND = "draft-length policy"
#: Specs that mean "no drafter": plain decoding.
NO_DRAFTER = ("none", "vanilla")


def parse_drafter_spec(spec: str | Chain) -> Chain | None:
    """The drafter chain (and ``@policy``) a spec names, or ``None`` for ``none``/``vanilla``.

    The grammar is crossedge's one spec grammar (docs/specs.md): ``copy,history:max_copy=8@heuristic``;
    the older ``copy:max_copy=8:min_match=2`` form parses too.
    """
    if isinstance(spec, str) and spec.strip().lower() in NO_DRAFTER:
        return None
    chain = parse_chain(spec, kind=DRAFTER_KIND, policy_kind=POLICY_KIND)
    if len(chain.specs) == 1 and chain.specs[0].name.lower() in NO_DRAFTER and not chain.specs[0].options:
        if chain.policy is not None:
            raise chain.specs[0].error("'none' drafts nothing, so it takes no '@policy'")
        return None
    return chain


def _drafter_class(spec: Spec) -> type[Drafter]:
    from crossedge.core import get_registry

    return get_registry("drafter").get(spec.name)


def check_drafter_spec(spec: str | Chain) -> Chain | None:
    """Parse a drafter spec and check every name and option against the registry, building nothing.

    Commands call this before any model loads, so a typo costs nothing.
    """
    chain = parse_drafter_spec(spec)
    if chain is None:
        return None
    names = []
    for part in chain.specs:
        cls = _drafter_class(part)
        bind(part, cls, kind=DRAFTER_KIND)
        names.append(cls.name)
    if len(set(names)) != len(names):
        raise SpecError(DRAFTER_KIND, chain.text, None, "names a drafter twice; statistics are kept per drafter name")
    if chain.policy is not None:
        from .policies import check_policy_spec

        check_policy_spec(chain.policy)
    return chain


def build_drafters(spec: str | Chain) -> list[Drafter]:
    """Instantiate the drafters of a spec from the drafter registry; ``none``/``vanilla`` gives an empty chain.

    A ``@policy`` in the spec is checked but not built here (see :func:`build_chain`).
    """
    chain = check_drafter_spec(spec)
    if chain is None:
        return []
    return [build(part, _drafter_class(part), kind=DRAFTER_KIND) for part in chain.specs]


def build_chain(spec: str | Chain) -> tuple[list[Drafter], Any]:
    """The drafters of a spec and its ``@policy`` built (``None`` when the spec names no policy)."""
    from .policies import build_policy

    chain = check_drafter_spec(spec)
    if chain is None:
        return [], None
    drafters = [build(part, _drafter_class(part), kind=DRAFTER_KIND) for part in chain.specs]
    return drafters, (build_policy(chain.policy) if chain.policy is not None else None)
