"""The drafter contract: what a speculative-decoding drafter is handed, and what it must do.

A drafter is as small as transformers' ``CandidateGenerator``: configuration in
``__init__`` (keyword arguments with type hints, no ``**kwargs``, so a mistyped option
is refused), capability flags as class attributes, and four calls from the engine:

* ``begin(context)`` before a generation: a :class:`DraftContext` carries everything
  the drafter may use: the target model, its tokenizer, the run's :class:`Sampler`,
  and a :class:`TargetCacheView` of the target's KV cache and hidden states. Nothing
  is put on the engine's modules; a drafter that needs more asks the view for it.
* ``propose(context_ids, k)`` returns a :class:`Draft` of at most ``k`` tokens;
* ``feedback(num_accepted)`` after the target verified a draft;
* ``end(context_ids)`` when a generation finished.

A drafter whose guesses come out of the target's own verification forward (PPD's
prompt tokens) also implements ``ride(context_ids, draft)``, returning :class:`Riders`:
extra input positions, given as embeddings, that the engine appends to the next
verification forward as leaves of the draft tree (they attend to the cache and their
ancestors, and nothing attends to them, so the draft's logits do not change), and
``rode(logits, path)``, which hands back their logits and the accepted path. Their keys
and values never stay in the cache.

The engine times every ``propose`` call itself and reports that time (per drafter in the
run statistics, and to the draft-length policy); drafters do not keep their own clocks.
Torch is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CrossedgeError

if TYPE_CHECKING:
    import torch


class DrafterError(CrossedgeError):
    """A drafter cannot serve the target or the run it was handed."""


class NonFiniteLogitsError(CrossedgeError):
    """A model produced NaN or infinite logits, so no token can be chosen."""


def check_finite(logits: torch.Tensor, where: str, error: type[NonFiniteLogitsError] = NonFiniteLogitsError) -> None:
    """Raise ``error`` (:class:`NonFiniteLogitsError` or a subclass) when a row holds NaN, +inf, or only -inf."""
    import torch

    # -inf entries are legitimate (masked tokens); NaN propagates through max, so one
    # reduction per row catches NaN, +inf and rows that mask everything.
    top = logits.max(dim=-1).values
    if not bool(torch.isfinite(top).all()):
        raise error(
            f"{where} produced non-finite logits (NaN, +inf or all -inf); the weights or the dtype are broken: "
            f"load the model in float32 and check it with plain model.generate()"
        )


@dataclass
class Draft:
    """Proposed tokens: a chain, or a token tree when ``parents`` is given.

    ``probs`` (nodes x vocab) holds, for each node, the distribution it was drawn from
    (the drafter's ``q`` at its parent) when it was sampled; ``None`` means every node is
    a point mass. In a tree, ``parents[i]`` is the index in ``tokens`` of node ``i``'s
    parent, or -1 when the node continues the context directly; a parent always comes
    before its children, so the first ``k`` nodes of a tree are a tree. Sibling nodes
    that were sampled must be independent draws from their parent's ``q`` (SpecInfer's
    multi-candidate rejection sampling is exact only then); greedy engines accept the
    child that equals the target's argmax.
    """

    tokens: list[int]
    probs: torch.Tensor | None = None
    #: A drafter-chosen label for how confident it is (the copy drafter uses match-length
    #: buckets); policies keep acceptance statistics per bucket.
    bucket: str = ""
    parents: list[int] | None = None
    #: The drafter's estimate of each node's chance of being accepted (a tree node's: of its whole
    #: path), or ``None``; the cost-aware policy sizes the draft from it and rescales it online.
    scores: list[float] | None = None

    def __post_init__(self) -> None:
        if self.scores is not None and len(self.scores) != len(self.tokens):
            raise DrafterError(
                f"a draft has {len(self.tokens)} tokens but {len(self.scores)} scores: give one score per token"
            )
        if self.parents is None:
            return
        if len(self.parents) != len(self.tokens):
            raise DrafterError(
                f"a draft tree has {len(self.tokens)} tokens but {len(self.parents)} parents: give one parent per token"
            )
        for i, parent in enumerate(self.parents):
            if not -1 <= parent < i:
                raise DrafterError(
                    f"node {i} of a draft tree has parent {parent}: a parent must be -1 (the context) "
                    f"or an earlier node (0..{i - 1})"
                )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_tree(self) -> bool:
        """True when some node has a sibling (a chain given with ``parents`` is still a chain)."""
        return self.parents is not None and len(set(self.parents)) < len(self.parents)

    def parent_list(self) -> list[int]:
        """Each node's parent index (-1 for the context); a chain's are ``-1, 0, 1, ...``."""
        return list(self.parents) if self.parents is not None else list(range(-1, len(self.tokens) - 1))

    def depths(self) -> list[int]:
        """Each node's depth: 1 for a child of the context, its parent's depth + 1 otherwise."""
        depths: list[int] = []
        for parent in self.parent_list():
            depths.append(1 if parent < 0 else depths[parent] + 1)
        return depths

    def path(self, node: int) -> list[int]:
        """Node indices from the context's child down to ``node`` (empty for -1)."""
        parents = self.parent_list()
        path = []
        while node >= 0:
            path.append(node)
            node = parents[node]
        return path[::-1]

    def children(self) -> dict[int, list[int]]:
        """Node indices by parent (-1 for the context), in proposal order."""
        children: dict[int, list[int]] = {}
        for node, parent in enumerate(self.parent_list()):
            children.setdefault(parent, []).append(node)
        return children

    def greedy_path(self, picks: Sequence[int]) -> tuple[list[int], int]:
        """The nodes greedy decoding accepts, root first, and the target's token after them.

        ``picks[j]`` is the target's argmax after fed token ``j`` of a verification forward
        (0 = the last context token, ``i + 1`` = node ``i``): the path follows the child
        equal to the target's pick for as long as there is one.
        """
        children = self.children()
        node, path = -1, []
        while True:
            pick = int(picks[node + 1])
            match = next((c for c in children.get(node, ()) if self.tokens[c] == pick), None)
            if match is None:
                return path, pick
            path.append(match)
            node = match

    def truncated(self, k: int) -> Draft:
        """The first ``k`` nodes of this draft (a chain's first ``k`` tokens)."""
        probs = None if self.probs is None else self.probs[:k]
        parents = None if self.parents is None else self.parents[:k]
        scores = None if self.scores is None else self.scores[:k]
        return Draft(self.tokens[:k], probs, self.bucket, parents, scores)


@dataclass
class Riders:
    """Positions a drafter hangs on a verification forward that are not tokens (see :meth:`Drafter.ride`).

    ``parents[i]`` is rider ``i``'s parent among the fed positions after the last context
    token: -1 for that token, ``0 .. k-1`` for the draft's nodes, ``k + j`` for rider ``j``
    (an earlier one), so riders may form chains.
    """

    #: (riders, hidden): input embeddings, in the space of the target's input embedding layer.
    embeddings: torch.Tensor
    parents: list[int]

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.parents):
            raise DrafterError(
                f"riders need one embedding row per parent, got {tuple(self.embeddings.shape)} for "
                f"{len(self.parents)} parents"
            )

    def __len__(self) -> int:
        return len(self.parents)


class Sampler:
    """How the current run picks tokens; drafters draw through it so their ``q`` matches the target's ``p``.

    This base class decodes greedily. An engine that samples hands a subclass that sets
    ``greedy = False`` and implements :meth:`probabilities` with the same logit processing
    it applies to the target (temperature, top-k, top-p).
    """

    greedy: bool = True

    def __init__(self, generator: torch.Generator | None = None):
        import torch

        self.generator = generator if generator is not None else torch.Generator()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The processed distribution the run samples from (only called when not greedy)."""
        raise NotImplementedError(f"{type(self).__name__} is greedy; it has no sampling distribution")

    def draw(self, logits: torch.Tensor, where: str) -> tuple[int, torch.Tensor | None]:
        """Check one position's logits, then take the greedy token or sample one from the processed
        distribution; returns (token, probabilities or ``None`` when greedy)."""
        import torch

        check_finite(logits, where)
        if self.greedy:
            return int(logits.argmax()), None
        probs = self.probabilities(logits)
        return int(torch.multinomial(probs, 1, generator=self.generator)), probs


class TargetCacheView:
    """What a drafter may see of the target's KV cache, and the one way it may borrow it.

    The engine builds one per generation around its cache and, after every target forward,
    calls :meth:`record` with that forward's hidden states when a drafter asked for a layer
    with :meth:`keep_hidden_states`. :meth:`scratch` lends the cache to a drafter that runs
    some of the target's own layers on it (self-speculation); whatever it appends is cropped
    away when the block ends, so the engine always gets its cache back as it left it.
    """

    def __init__(self, cache: Any):
        self._cache = cache
        self._wanted: set[int] = set()
        self._states: dict[int, list[Any]] = {}

    @property
    def length(self) -> int:
        """Tokens the target's cache holds (the context minus the token the engine feeds next)."""
        return int(self._cache.get_seq_length())

    # -- drafters ------------------------------------------------------------

    def keep_hidden_states(self, layer: int) -> None:
        """Ask the engine to keep the hidden states after decoder layer ``layer`` (0 = embeddings)."""
        if layer < 0:
            raise DrafterError(f"hidden-state layer must be >= 0, got {layer}")
        self._wanted.add(int(layer))
        self._states.setdefault(int(layer), [])

    def hidden_states(self, layer: int, start: int, end: int) -> torch.Tensor | None:
        """Hidden states (1, end - start, hidden) after ``layer`` at cached positions ``start..end-1``.

        ``None`` when some of those positions were never recorded (the layer was asked for
        late, or the positions are past the cache).
        """
        import torch

        if layer not in self._wanted:
            raise DrafterError(
                f"hidden states of layer {layer} were not kept: call keep_hidden_states({layer}) in begin"
            )
        if start >= end:
            return None
        states = self._states[layer]
        if end > min(len(states), self.length) or any(s is None for s in states[start:end]):
            return None
        return torch.cat(states[start:end], dim=1)

    @contextmanager
    def scratch(self) -> Iterator[Any]:
        """Lend the live cache for a block; every layer is cropped back to its length when the block ends."""
        lengths = [layer.get_seq_length() for layer in self._cache.layers]
        try:
            yield self._cache
        finally:
            for layer, length in zip(self._cache.layers, lengths, strict=True):
                extra = layer.get_seq_length() - length
                if extra > 0:
                    layer.crop(-extra)

    # -- engines -------------------------------------------------------------

    @property
    def wanted_layers(self) -> frozenset[int]:
        """Layers whose hidden states a drafter asked for; the engine then runs forwards with them."""
        return frozenset(self._wanted)

    def forward(
        self,
        model: Any,
        feed: Sequence[int],
        keep: int,
        parents: Sequence[int] | None = None,
        riders: Riders | None = None,
    ) -> Any:
        """One target forward over ``feed`` on the viewed cache, recording the wanted hidden states.

        Engines call this for every target forward, so what a drafter sees through the view
        is always what the target computed; returns the model's output (``logits`` of the
        last ``keep`` positions). With ``parents`` (a :class:`Draft` tree's, one per token
        after ``feed[0]``), the tokens after the first are a tree: each attends to the cache
        and its ancestors only and sits at the position of its depth (see
        :func:`tree_attention`); :meth:`keep_fed` then keeps the accepted path. ``riders``
        are appended after the fed tokens as further leaves of that tree; their logits are
        the last ``len(riders)`` rows of the output, after the ``keep`` kept ones, and
        :meth:`keep_fed` must then drop them.
        """
        import torch

        start = self.length
        wanted = bool(self._wanted)
        ids = torch.tensor([list(feed)])
        extra: dict[str, Any] = {"input_ids": ids}
        if parents is not None and len(parents) != len(feed) - 1:
            raise DrafterError(f"a tree forward feeds {len(feed)} tokens but got {len(parents)} parents")
        if riders is not None and len(riders):
            chain = list(parents) if parents is not None else list(range(-1, len(feed) - 2))
            parents = [*chain, *riders.parents]
            for i, parent in enumerate(riders.parents):
                if not -1 <= parent < len(chain) + i:
                    raise DrafterError(f"rider {i} has parent {parent}: it must be -1, a draft node or an earlier one")
            embeddings = model.get_input_embeddings()(ids)
            extra = {"inputs_embeds": torch.cat([embeddings, riders.embeddings.to(embeddings.dtype)[None]], dim=1)}
            keep += len(riders)
        if parents is not None:
            positions, mask = tree_attention(model, self._cache, parents)
            extra.update(position_ids=positions, attention_mask=mask)
        out = model(
            cache=self._cache,
            use_cache=True,
            logits_to_keep=keep,
            output_hidden_states=wanted,
            **extra,
        )
        if wanted:
            self.record(out.hidden_states, start)
        return out

    def keep_fed(self, fed: int, indices: Sequence[int]) -> None:
        """After a forward that fed ``fed`` tokens, keep only the fed tokens at ``indices`` (ascending).

        Used after a tree forward: the accepted path's keys and values (and recorded hidden
        states) are gathered per layer into the places a chain forward of that path would
        have written, so the cache is as if only the path had been fed. Sliding-window layers
        must have past recording active (the engine turns it on).
        """
        import torch
        from transformers.cache_utils import DynamicLayer

        indices = [int(i) for i in indices]
        ascending = all(a < b for a, b in zip(indices, indices[1:], strict=False))
        if not ascending or (indices and not 0 <= indices[0] <= indices[-1] < fed):
            raise DrafterError(f"keep_fed needs ascending indices inside the {fed} fed tokens, got {indices}")
        kept = len(indices)
        if indices == list(range(kept)):
            self._cache.crop(kept - fed)
        else:
            index = torch.tensor(indices)
            for layer in self._cache.layers:
                if not isinstance(layer, DynamicLayer):
                    raise DrafterError(
                        f"tree verification gathers the cache per layer, which {type(layer).__name__} does not "
                        f"support: use a DynamicCache (the engine's default)"
                    )
                base = layer.keys.shape[-2] - fed
                # In place and then a view: only the fed tail is copied, never the whole cache.
                layer.keys[..., base : base + kept, :] = layer.keys.index_select(-2, index + base)
                layer.values[..., base : base + kept, :] = layer.values.index_select(-2, index + base)
                layer.keys = layer.keys[..., : base + kept, :]
                layer.values = layer.values[..., : base + kept, :]
                if hasattr(layer, "cumulative_length"):
                    layer.cumulative_length -= fed - kept
        start = self.length - kept
        for states in self._states.values():
            if len(states) >= start + fed:
                states[start : start + kept] = [states[start + i] for i in indices]
                del states[start + kept :]

    def record(self, hidden_states: Sequence[torch.Tensor], start: int) -> None:
        """Keep the wanted layers of one forward's ``hidden_states``, whose first fed token sat at ``start``."""
        for layer in self._wanted:
            hidden = hidden_states[layer]
            states = self._states[layer]
            end = start + hidden.shape[1]
            if len(states) < end:
                states.extend([None] * (end - len(states)))
            for offset in range(hidden.shape[1]):
                states[start + offset] = hidden[:, offset : offset + 1].detach()


def tree_attention(model: Any, cache: Any, parents: Sequence[int]) -> tuple[torch.Tensor, Any]:
    """Position ids and 4D attention mask for feeding one token plus a draft tree after ``cache``.

    The fed tokens are the last context token (depth 0) and the tree's nodes; node ``i``
    (fed at index ``i + 1``) sits at position ``cache length + depth`` and attends to the
    cached positions and to its ancestors and itself, so no row is ever fully masked. A
    sliding-window layer sees only cached keys inside its window, exactly as the model's
    own masks do (``key position > query position - window``). Layers of one kind share a
    mask; a cache mixing full and sliding layers gets a mask per layer type, keyed as
    transformers' models key them (``full_attention``, ``sliding_attention``).
    """
    import torch

    past = int(cache.get_seq_length())
    fed = len(parents) + 1
    depth = [0]
    for parent in parents:
        depth.append(depth[parent + 1] + 1)
    visible = torch.eye(fed, dtype=torch.bool)
    for node, parent in enumerate(parents, start=1):
        visible[node] |= visible[parent + 1]
    positions = torch.tensor(depth) + past
    masks: dict[str, torch.Tensor] = {}
    for layer in cache.layers:
        sliding = bool(getattr(layer, "is_sliding", False))
        kind = "sliding_attention" if sliding else "full_attention"
        if kind in masks:
            continue
        if sliding:
            window = int(layer.sliding_window)
            held = min(past, window - 1)
            key_positions = torch.arange(past - held, past)
            cached = key_positions[None, :] > positions[:, None] - window
        else:
            cached = torch.ones(fed, past, dtype=torch.bool)
        masks[kind] = torch.cat([cached, visible], dim=1)[None, None]
    dtype = model.dtype
    if getattr(model.config, "_attn_implementation", "sdpa") != "sdpa":
        # Eager attention adds the mask to the scores: True -> 0, False -> the dtype's minimum.
        low = torch.finfo(dtype).min
        masks = {k: torch.zeros(m.shape, dtype=dtype).masked_fill(~m, low) for k, m in masks.items()}
    mask: Any = next(iter(masks.values())) if len(masks) == 1 else masks
    return positions[None], mask


@dataclass
class DraftContext:
    """Everything the engine hands a drafter in :meth:`Drafter.begin`."""

    #: The target causal LM, as the engine runs it.
    target: Any
    #: The target's tokenizer, or ``None`` when the engine was not given one.
    tokenizer: Any = None
    sampler: Sampler = field(default_factory=Sampler)
    #: The target's KV cache and hidden states for this generation.
    cache: TargetCacheView | None = None
    #: The target's maximum positions (``None`` when it has no limit): drafts must stay inside.
    window: int | None = None


class Drafter:
    """Base class of drafters. Subclasses set ``name`` and implement :meth:`propose`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Proposing costs next to nothing, so the engine may ask for the most tokens and let
    #: the draft-length policy cut the draft after seeing it.
    cheap: ClassVar[bool] = False
    #: ``propose`` returns draft probabilities when sampling (else drafts are a point mass).
    provides_probs: ClassVar[bool] = False

    context: DraftContext

    def begin(self, context: DraftContext) -> None:
        """Reset per-generation state; called once before the first ``propose`` of a run."""
        self.context = context

    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        """At most ``k`` tokens continuing ``context_ids`` (prompt plus accepted output)."""
        raise NotImplementedError

    def feedback(self, num_accepted: int) -> None:
        """How many tokens of the last proposal the target accepted (``propose`` order)."""

    def verifying(self, context_ids: Sequence[int], draft: Draft) -> None:
        """The target is about to verify ``draft`` (any drafter's, possibly empty) after ``context_ids``.

        A drafter that works while the target verifies (Mirror-SD: its next proposal) starts
        here, on its own thread; until its next ``propose``, ``begin`` or ``end`` it must not
        touch the target, the target's cache or the sampler. Called before every verification.
        """

    def ride(self, context_ids: Sequence[int], draft: Draft) -> Riders | None:
        """Positions to append to the verification forward of ``draft`` (possibly empty) after ``context_ids``."""
        return None

    def rode(self, logits: torch.Tensor, path: Sequence[int]) -> None:
        """The riders' logits (riders x vocab) from that forward and the accepted draft nodes (root first)."""

    def end(self, context_ids: Sequence[int]) -> None:
        """A generation finished with ``context_ids`` (prompt plus output); not called when a stream is abandoned."""

    @property
    def sampler(self) -> Sampler:
        """The current run's sampler (greedy before the first ``begin``)."""
        context = getattr(self, "context", None)
        return context.sampler if context is not None else Sampler()

    def draw(self, logits: torch.Tensor, where: str) -> tuple[int, torch.Tensor | None]:
        """One token from ``logits`` as the run's sampler picks it (see :meth:`Sampler.draw`)."""
        return self.sampler.draw(logits, where)
