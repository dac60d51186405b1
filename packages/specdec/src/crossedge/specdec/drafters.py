"""The drafter contract, the built-in drafters, and ``--drafter`` spec parsing.

A drafter is as small as transformers' ``CandidateGenerator``: configuration in
``__init__``, capability flags as class attributes, ``propose(context_ids, k)``
returning up to ``k`` tokens (plus their draft probabilities when it samples), and
``feedback(num_accepted)`` after the target verified them. Drafters register
through the ``register_drafters`` hook with their class; ``name`` is the spec name.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import SpecdecError
from .sampling import SamplingConfig, check_finite, process_logits
from .suffix_index import SuffixIndex, SuffixMatcher


@dataclass
class Draft:
    """Proposed tokens; ``probs`` (k x vocab) when they were sampled, ``None`` for a point mass."""

    tokens: list[int]
    probs: torch.Tensor | None = None
    #: A drafter-chosen label for how confident it is (the copy drafter uses match-length
    #: buckets); policies keep acceptance statistics per bucket.
    bucket: str = ""

    def __len__(self) -> int:
        return len(self.tokens)

    def truncated(self, k: int) -> Draft:
        """The first ``k`` tokens of this draft."""
        probs = None if self.probs is None else self.probs[:k]
        return Draft(self.tokens[:k], probs, self.bucket)


@dataclass
class Sampler:
    """What a drafter needs to know about the current run's sampling."""

    config: SamplingConfig = field(default_factory=SamplingConfig)
    generator: torch.Generator = field(default_factory=torch.Generator)


class Drafter:
    """Base class of drafters. Subclasses set ``name`` and implement :meth:`propose`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Proposing costs next to nothing, so the engine may ask for the most tokens and let
    #: the draft-length policy cut the draft after seeing it.
    cheap: ClassVar[bool] = False
    #: ``propose`` returns draft probabilities when sampling (else drafts are a point mass).
    provides_probs: ClassVar[bool] = False
    #: The constructor needs the target model (``target=``) or its tokenizer (``tokenizer=``).
    needs_target: ClassVar[bool] = False

    def begin(self, prompt_ids: Sequence[int], sampler: Sampler) -> None:
        """Reset per-generation state; called once before the first ``propose`` of a run."""
        self.sampler = sampler

    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        """Up to ``k`` tokens continuing ``context_ids`` (prompt plus accepted output)."""
        raise NotImplementedError

    def feedback(self, num_accepted: int) -> None:
        """How many tokens of the last proposal the target accepted (``propose`` order)."""

    def end(self, context_ids: Sequence[int]) -> None:
        """A generation finished with ``context_ids`` (prompt plus output); not called when a stream is abandoned."""

    def draw(self, logits: torch.Tensor, where: str, sample: bool) -> tuple[int, torch.Tensor | None]:
        """Check one position's logits, then take the greedy token or sample one from the processed
        distribution; returns (token, probabilities or ``None`` when greedy)."""
        check_finite(logits, where)
        if not sample:
            return int(logits.argmax()), None
        probs = process_logits(logits, self.sampler.config)
        return int(torch.multinomial(probs, 1, generator=self.sampler.generator)), probs


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

    def __init__(self, max_copy: int = 16, min_match: int = 2, occurrence: str = "earliest", realign: bool = False):
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

    def begin(self, prompt_ids: Sequence[int], sampler: Sampler) -> None:
        super().begin(prompt_ids, sampler)
        self.index = SuffixIndex(prompt_ids)
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
        self.index = SuffixIndex()
        self.matcher = SuffixMatcher(self.index)
        self.fed: list[int] = []

    def remember(self, tokens: Sequence[int]) -> None:
        """Add one finished sequence to the history (the oldest half is dropped past ``max_tokens``)."""
        if not len(tokens):
            return
        if len(self.index) + len(tokens) + 1 > self.max_tokens:
            kept = self.index.tokens[-(self.max_tokens // 2) :]
            self.index = SuffixIndex(kept[kept.index(self.SEPARATOR) + 1 :] if self.SEPARATOR in kept else [])
            self.matcher = SuffixMatcher(self.index)
        if len(self.index):
            self.index.append(self.SEPARATOR)
        self.index.extend(list(tokens)[-(self.max_tokens // 2) :])

    def begin(self, prompt_ids: Sequence[int], sampler: Sampler) -> None:
        super().begin(prompt_ids, sampler)
        self.matcher.reset()
        self.fed = []

    def end(self, context_ids: Sequence[int]) -> None:
        self.remember(context_ids)
        self.matcher.reset()
        self.fed = []

    def _sync(self, context_ids: Sequence[int]) -> None:
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


def _match_bucket(match: int) -> str:
    if match <= 2:
        return f"m{match}"
    if match <= 4:
        return "m3-4"
    if match <= 8:
        return "m5-8"
    return "m9+"


class DraftModelDrafter(Drafter):
    """A smaller causal LM with the same tokenizer drafting autoregressively with its own rolled-back KV cache."""

    name = "draft-model"
    description = "a smaller model with the same tokenizer (option model=NAME)"
    provides_probs = True
    needs_target = True

    def __init__(self, model: Any = None, target: Any = None):
        if model is None:
            raise SpecdecError("the draft-model drafter needs a model: use 'draft-model:model=NAME' in --drafter")
        if isinstance(model, str):
            from crossedge.core import load_model

            model = load_model(model).model
        self.model = model
        if target is not None:
            target_vocab = target.get_output_embeddings().weight.shape[0]
            draft_vocab = model.get_output_embeddings().weight.shape[0]
            if target_vocab != draft_vocab:
                raise SpecdecError(
                    f"draft model vocabulary ({draft_vocab}) differs from the target's ({target_vocab}); "
                    f"draft-model needs the same tokenizer"
                )
        self.window = getattr(model.config, "max_position_embeddings", None)
        self.cache = None
        self.cached_ids: list[int] = []
        self.seconds = 0.0

    def begin(self, prompt_ids: Sequence[int], sampler: Sampler) -> None:
        super().begin(prompt_ids, sampler)
        from transformers import DynamicCache

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
        start = time.perf_counter()
        tokens, rows = self._draft_tokens(context_ids, k, sample=not self.sampler.config.greedy)
        self.seconds += time.perf_counter() - start
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
            token, probs = self.draw(out.logits[0, -1], "the draft model", sample)
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

    def __init__(
        self,
        model: Any = None,
        target: Any = None,
        tokenizer: Any = None,
        draft_tokenizer: Any = None,
        ngram_cache: bool = True,
    ):
        if model is None:
            raise SpecdecError("the cross-vocab drafter needs a model: use 'cross-vocab:model=NAME' in --drafter")
        if isinstance(model, str):
            from crossedge.core import load_model

            loaded = load_model(model)
            model, draft_tokenizer = loaded.model, loaded.tokenizer
        if tokenizer is None or draft_tokenizer is None:
            raise SpecdecError(
                "cross-vocab needs the target's and the draft's tokenizers (tokenizer=, draft_tokenizer=)"
            )
        super().__init__(model)
        self.target_tokenizer = tokenizer
        self.draft_tokenizer = draft_tokenizer
        self.bridge = VocabBridge() if ngram_cache else None
        self.learned_chars = 0

    def begin(self, prompt_ids: Sequence[int], sampler: Sampler) -> None:
        super().begin(prompt_ids, sampler)
        self.learned_chars = 0

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        start = time.perf_counter()
        text = self.target_tokenizer.decode(list(context_ids), skip_special_tokens=False)
        draft_context = self.draft_tokenizer(text).input_ids
        draft_tokens, _ = self._draft_tokens(draft_context, k, sample=False)
        tokens: list[int] = []
        rest = draft_tokens
        if self.bridge is not None:
            # Learn from the text added since the last step. Tokenizing only a tail keeps the cost per step
            # flat; the tail starts earlier than what is learned, so the tokenizers' cuts have settled there.
            start = max(0, self.learned_chars - 64)
            since = max(0, self.learned_chars - 32) - start
            self.bridge.learn(text[start:], self.draft_tokenizer, self.target_tokenizer, since=since)
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
        self.seconds += time.perf_counter() - start
        return Draft(list(tokens[:k]))


def _convert(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``name[:key=value[:key=value]][,name...]`` into (name, options) pairs, in chain order."""
    if spec is None or not spec.strip():
        raise SpecdecError("empty drafter spec: use 'none', 'copy', 'draft-model:model=NAME' or a chain 'copy,...'")
    chain = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise SpecdecError(f"drafter spec {spec!r} has an empty element between commas")
        name, *pairs = part.split(":")
        options: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise SpecdecError(f"drafter option {pair!r} in {spec!r} must look like key=value")
            options[key.strip().replace("-", "_")] = _convert(value.strip())
        chain.append((name.strip(), options))
    return chain


def build_drafters(spec: str, *, target: Any = None, **context: Any) -> list[Drafter]:
    """Instantiate the drafters of a spec from the drafter registry; ``none``/``vanilla`` gives an empty chain."""
    from crossedge.core import get_registry

    if spec is not None and spec.strip().lower() in ("none", "vanilla"):
        return []
    registry = get_registry("drafter")
    drafters = []
    for name, options in parse_spec(spec):
        cls = registry.get(name)
        kwargs = dict(options)
        if getattr(cls, "needs_target", False):
            accepted = inspect.signature(cls.__init__).parameters
            supplied = {"target": target, **context}
            kwargs.update({k: v for k, v in supplied.items() if k in accepted and k not in kwargs})
        try:
            drafters.append(cls(**kwargs))
        except TypeError as exc:
            raise SpecdecError(f"drafter {name!r} does not accept options {sorted(options)}: {exc}") from exc
    names = [d.name for d in drafters]
    if len(set(names)) != len(names):
        raise SpecdecError(f"drafter spec {spec!r} names a drafter twice; statistics are kept per drafter name")
    return drafters
