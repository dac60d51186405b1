"""Batched speculative decoding: several sequences draft and verify in one target forward.

:class:`BatchedSpeculativeDecoder` keeps a set of rows (one per request), each with its own
drafters, its own draft-length policy, its own sampler, and its own cache length. One call
of :meth:`~BatchedSpeculativeDecoder.step` admits waiting requests, lets every row draft
(a chain or a token tree, of the length its policy chooses), verifies all drafts in one
target forward, and keeps per row what that row accepted. Rows join and leave between steps
(continuous batching).

Design, and why:

* **One DynamicCache of batch B, rows left-aligned.** Row ``b``'s valid keys always sit at
  slots ``0 .. len_b - 1``; slots past ``len_b`` (up to the cache length, the longest row)
  are padding that every mask hides. Keeping rows left-aligned means a row's cached slot
  equals its token position, so positions, masks and compaction are plain per-row offsets,
  and a row's keys are exactly those a single-sequence run would hold. (Left padding, the
  usual choice for batched prompts, makes every row's start move when the longest row
  grows; a packed layout needs a varlen kernel that SDPA does not have.)
* **Each forward feeds a (B, T) block**, row ``b`` holding its last token and its draft,
  padded on the right with the pad token, with position ids ``len_b + depth`` and an
  explicit 4D mask (B, 1, T, L + T): a fed token sees its row's ``len_b`` cached keys and
  its fed ancestors and itself; padding keys are hidden; a padding query sees only its own
  key, so no row is ever fully masked. Chains and trees take the same path: a chain is a
  tree whose parents are ``-1, 0, 1, ...``.
* **After verification the kept keys are gathered per row** (the fed last token and the
  accepted path) into slots ``len_b ..`` of that row, and the cache is cut to the longest
  row. Only the slots past the shortest row move, in place, as the single-sequence
  engine's ``keep_fed`` does.
* **Admission prefills a prompt alone** (batch 1, the same forward as single-sequence
  decoding, so the first token is identical) and splices its cache into the batch, padding
  the shorter side. Leaving rows are dropped with an ``index_select`` over the batch.
* **Exactness.** Row ``b`` computes what a single-sequence verification computes, up to
  the reduction order of attention over a padded key set. In float32 that is ~1e-7; models
  whose kernels round activations (int8, bf16) need row-invariant attention
  (:mod:`crossedge.core.attention`, switched on by ``crossedge.quant.quantize_``), which
  runs each query of each row alone over exactly its visible keys, so batched verification
  is bit-identical per row.
* **Sliding windows are applied by the masks, per row.** The batched cache keeps every key
  (plain ``DynamicLayer`` s): a sliding-window cache layer trims by the physical cache length,
  which ragged rows do not share. A sliding layer's mask hides, per row, the keys at
  positions ``<= query position - window``, as the model's own masks do. Such a model's
  cache then grows with the whole sequence instead of the window (the budget counts it so).
* **Sampling is supported per row** with the exact rejection sampler (each row has its own
  seeded generator, so a row draws what a single-sequence run with the same seed draws as
  long as its drafts are the same).
* **Memory budget** (``memory_budget`` bytes): the padded cache holds ``rows x longest row``
  token slots of ``kv_bytes_per_token`` each. A request is admitted only if, with it, the
  rows' longest final length (prompt + max new tokens) times the row count fits; otherwise
  it waits (``throttled`` counts such requests once each). Each step caps draft lengths so
  that the verification block (``rows x (cache length + T)``) fits too. A request that
  cannot fit even alone is refused at :meth:`submit`. Transient copies made while
  splicing or compacting are not counted.

Drafters that read the target's cache or hidden states (self-speculation, heads) are not
supported here: their :class:`TargetCacheView` raises a clear error when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter, DrafterError, TargetCacheView
from crossedge.core.contracts.policy import DraftLengthPolicy

from .drafters import HistoryDrafter, build_chain
from .engine import (
    DrafterStats,
    GenerationResult,
    RunStats,
    _eos_ids,
    _prompt_list,
    check_request,
    clock,
    concurrent_drafters,
    propose_draft,
    record_outcome,
    rider_of,
)
from .errors import SpecdecError
from .policies import VerificationCostModel, build_policy
from .sampling import RunSampler, SamplingConfig, check_finite, process_logits, sample, verify_tree_sampled

DrafterFactory = Callable[[], "Drafter | Sequence[Drafter]"]
PolicyFactory = Callable[[], DraftLengthPolicy]


class _RowCacheView(TargetCacheView):
    """A row's view of the batched cache: its length only; hidden states and scratch are refused."""

    def __init__(self) -> None:
        super().__init__(None)
        self.row_length = 0

    @property
    def length(self) -> int:
        return self.row_length

    def keep_hidden_states(self, layer: int) -> None:
        raise DrafterError(
            "batched decoding does not record the target's hidden states: use this drafter with "
            "SpeculativeDecoder (one sequence), or a drafter that needs only the context (copy, draft-model)"
        )

    def scratch(self) -> Any:
        raise DrafterError(
            "batched decoding does not lend the target's cache to drafters: use this drafter with SpeculativeDecoder"
        )


@dataclass
class BatchCounters:
    """What the scheduler did, for ``/metrics``."""

    admitted: int = 0
    throttled: int = 0
    finished: int = 0
    cancelled: int = 0
    forwards: int = 0
    rows: int = 0
    waiting: int = 0

    def to_dict(self) -> dict[str, int]:
        """Plain-data form."""
        return dict(self.__dict__)


class RowHandle:
    """One submitted request: its tokens so far, whether it is done, and why it stopped."""

    def __init__(
        self,
        prompt: list[int],
        max_new_tokens: int,
        sampling: SamplingConfig,
        own_drafters: Mapping[int, Drafter] | None = None,
    ):
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        #: Drafters the caller keeps for this request, by place in the chain (see ``submit``).
        self.own_drafters = dict(own_drafters or {})
        self.tokens: list[int] = []
        self.stats = RunStats(prompt_tokens=len(prompt))
        self.done = False
        self._cancel = False
        self._throttled = False

    def cancel(self) -> None:
        """Stop this request at the next step (safe to call from another thread)."""
        self._cancel = True

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel

    @property
    def stop_reason(self) -> str:
        """``eos``, ``length``, ``context`` or ``cancelled``; empty while running."""
        return self.stats.stop_reason

    def result(self) -> GenerationResult:
        """The tokens so far and the run's metrics."""
        return GenerationResult(list(self.tokens), self.stats)


@dataclass
class _Row:
    handle: RowHandle
    drafters: list[Drafter]
    policy: DraftLengthPolicy
    limit: int
    generator: torch.Generator | None
    view: _RowCacheView
    context: list[int] = field(default_factory=list)
    last: int = 0
    emitted: int = 0

    @property
    def length(self) -> int:
        return self.view.row_length


def _shared(value: Any) -> bool:
    """Values a row's copy of a drafter shares with the template: models and tokenizers (read-only, heavy)."""
    module = type(value).__module__
    return isinstance(value, torch.nn.Module) or module.startswith(("transformers", "tokenizers"))


def row_copy(template: Any) -> Any:
    """A copy of a drafter (or policy) for one row: its own state, the template's models and tokenizers.

    A history drafter's copy shares the template's history (:meth:`HistoryDrafter.sharing`), so a
    batched decoder learns across its requests as a single-sequence one does.
    """
    import copy

    if isinstance(template, HistoryDrafter):
        return template.sharing()
    memo = {id(v): v for v in vars(template).values() if _shared(v)}
    return copy.deepcopy(template, memo)


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token takes in a full-attention cache of ``model``."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    return 2 * layers * kv_heads * head_dim * itemsize


class BatchedSpeculativeDecoder:
    """Lossless speculative decoding of many sequences at once, with continuous batching.

    ``drafters`` is a spec string (built afresh for every row), a factory returning a
    drafter or a list of them (called once per row), or ``None`` for plain batched
    decoding. ``policy`` is a spec or a factory (one policy per row: draft lengths are per
    row). ``max_batch`` bounds the rows decoding together; ``memory_budget`` (bytes) bounds
    the KV cache and the verification block (see the module doc). One thread drives it
    (``submit``, ``step``); :meth:`RowHandle.cancel` may come from any thread.
    """

    def __init__(
        self,
        model: Any,
        drafters: str | DrafterFactory | None = None,
        policy: str | PolicyFactory | None = None,
        *,
        max_batch: int = 8,
        memory_budget: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        tokenizer: Any = None,
    ):
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        if isinstance(drafters, Drafter) or (
            isinstance(drafters, Sequence) and not isinstance(drafters, str) and drafters
        ):
            raise SpecdecError(
                "BatchedSpeculativeDecoder needs drafters per row: pass a spec string or a factory "
                "(lambda: MyDrafter()), not drafter instances"
            )
        if isinstance(policy, DraftLengthPolicy):
            raise SpecdecError(
                "BatchedSpeculativeDecoder keeps one policy per row: pass a spec string or a factory "
                "(lambda: ConstantPolicy(k=4)), not a policy instance"
            )
        if max_batch < 1:
            raise SpecdecError(f"max_batch must be at least 1, got {max_batch}")
        if memory_budget is not None and memory_budget <= 0:
            raise SpecdecError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        probe = DynamicCache(config=model.config)
        #: Per cache layer: its mask kind as transformers keys it, and its window (None: full attention).
        self._layer_kinds: list[tuple[str, int | None]] = []
        for layer in getattr(probe, "layers", ()):
            if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
                raise SpecdecError(
                    f"batched decoding needs full or sliding-window attention caches, not {type(layer).__name__}: "
                    f"use SpeculativeDecoder (one sequence)"
                )
            if getattr(layer, "is_sliding", False):
                self._layer_kinds.append(("sliding_attention", int(layer.sliding_window)))
            else:
                self._layer_kinds.append(("full_attention", None))
        self.model = model
        self.tokenizer = tokenizer
        self.drafters = drafters
        self.policy = policy
        self.max_batch = int(max_batch)
        self.memory_budget = memory_budget
        self.eos = _eos_ids(model, eos_token_id)
        self.window: int | None = getattr(model.config, "max_position_embeddings", None)
        self.kv_bytes_per_token = kv_bytes_per_token(model)
        pad = getattr(model.config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else 0
        self.counters = BatchCounters()
        self._rows: list[_Row] = []
        self._waiting: list[RowHandle] = []
        self._cache: Any = None
        self._templates: tuple[list[Drafter], Any] | None = None
        self._cost: VerificationCostModel | None = None

    # ----------------------------------------------------------------- public

    def submit(
        self,
        input_ids: Any,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        *,
        own_drafters: Mapping[int, Drafter] | None = None,
    ) -> RowHandle:
        """Queue a request; it joins the batch at the next :meth:`step` that has room for it.

        ``own_drafters`` replaces, by place in the chain, the row's copies of the spec's drafters
        with instances the caller keeps (a server passes each user's own history drafter, so one
        user's text never shapes another's drafts); each must be of its place's kind.
        """
        prompt = _prompt_list(input_ids)
        check_request(prompt, max_new_tokens, self.window)
        if own_drafters:
            self._check_own(own_drafters)
        handle = RowHandle(prompt, int(max_new_tokens), sampling or SamplingConfig(), own_drafters)
        if self.memory_budget is not None:
            need = self._final_length(handle) * self.kv_bytes_per_token
            if need > self.memory_budget:
                raise SpecdecError(
                    f"a request of {len(prompt)} prompt + {max_new_tokens} new tokens needs {need} bytes of KV cache "
                    f"alone but memory_budget is {self.memory_budget}: raise the budget or ask for fewer tokens"
                )
        self._waiting.append(handle)
        self.counters.waiting = len(self._waiting)
        return handle

    @property
    def active(self) -> bool:
        """True while some request is decoding or waiting."""
        return bool(self._rows or self._waiting)

    @property
    def rows(self) -> int:
        """Rows decoding together now."""
        return len(self._rows)

    def step(self) -> dict[RowHandle, list[int]]:
        """Admit what fits, then one batched draft-and-verify forward; returns each row's new tokens."""
        out: dict[RowHandle, list[int]] = {}
        with torch.inference_mode():
            self._drop([row for row in self._rows if row.handle.cancelled], "cancelled")
            self._admit(out)
            if self._rows:
                self._verify(out)
        self.counters.rows = len(self._rows)
        self.counters.waiting = len(self._waiting)
        return out

    def generate_many(
        self, prompts: Sequence[Any], max_new_tokens: int, sampling: SamplingConfig | None = None
    ) -> list[GenerationResult]:
        """Decode every prompt (batched as ``max_batch`` and the budget allow) and return the results in order."""
        handles = [self.submit(p, max_new_tokens, sampling) for p in prompts]
        while any(not h.done for h in handles):
            self.step()
        return [h.result() for h in handles]

    def reset(self) -> list[RowHandle]:
        """Drop every row and waiting request (after a failed step); returns them, marked cancelled."""
        dropped = [row.handle for row in self._rows] + self._waiting
        for handle in dropped:
            handle.cancel()
            self._finish_handle(handle, "cancelled")
        self._rows, self._waiting, self._cache = [], [], None
        self.counters.rows = self.counters.waiting = 0
        return dropped

    # ------------------------------------------------------------- scheduling

    def _final_length(self, handle: RowHandle) -> int:
        limit = handle.max_new_tokens
        if self.window is not None:
            limit = min(limit, self.window - len(handle.prompt))
        return len(handle.prompt) + limit

    def _fits(self, handle: RowHandle) -> bool:
        if self.memory_budget is None:
            return True
        finals = [len(row.handle.prompt) + row.limit for row in self._rows] + [self._final_length(handle)]
        return len(finals) * max(finals) * self.kv_bytes_per_token <= self.memory_budget

    def _admit(self, out: dict[RowHandle, list[int]]) -> None:
        for handle in [h for h in self._waiting if h.cancelled]:
            self._waiting.remove(handle)
            self._finish_handle(handle, "cancelled")
            self.counters.cancelled += 1
        while self._waiting and len(self._rows) < self.max_batch:
            handle = self._waiting[0]
            if not self._fits(handle):
                if not handle._throttled:
                    handle._throttled = True
                    self.counters.throttled += 1
                return
            self._waiting.pop(0)
            self._start(handle, out)

    def _check_own(self, own_drafters: Mapping[int, Drafter]) -> None:
        """Refuse own drafters that are not of the kind at their place in the spec's chain."""
        if not isinstance(self.drafters, str):
            raise SpecdecError("own_drafters replaces drafters of a spec chain: build the decoder from a spec string")
        if self._templates is None:
            self._templates = build_chain(self.drafters)
        templates = self._templates[0]
        for place, own in own_drafters.items():
            if not 0 <= place < len(templates) or type(own) is not type(templates[place]):
                kinds = ", ".join(f"{i}: {d.name}" for i, d in enumerate(templates)) or "none"
                raise SpecdecError(
                    f"own drafter {getattr(own, 'name', own)!r} at place {place} does not match the chain ({kinds}): "
                    "pass a drafter of the kind at that place"
                )

    def _build_drafters(self) -> tuple[list[Drafter], DraftLengthPolicy]:
        policy_spec: Any = self.policy
        if self.drafters is None:
            drafters: list[Drafter] = []
        elif isinstance(self.drafters, str):
            if self._templates is None:
                # Built once: a spec naming a draft model loads it once, and every row shares its weights.
                self._templates = build_chain(self.drafters)
            templates, own = self._templates
            drafters = [row_copy(d) for d in templates]
            if own is not None:
                return drafters, self._share_cost(row_copy(own))
        else:
            made = self.drafters()
            drafters = [made] if isinstance(made, Drafter) else list(made)
        policy = policy_spec() if callable(policy_spec) else build_policy(policy_spec)
        return drafters, self._share_cost(policy)

    def _share_cost(self, policy: DraftLengthPolicy) -> DraftLengthPolicy:
        """Rows' cost-aware policies share one verification-cost model: t(k) of the batched forward, learned
        across requests (acceptance stays per row)."""
        if isinstance(getattr(policy, "cost", None), VerificationCostModel):
            if self._cost is None:
                self._cost = policy.cost
            policy.cost = self._cost
        return policy

    def _start(self, handle: RowHandle, out: dict[RowHandle, list[int]]) -> None:
        """Prefill one prompt alone, emit its first token and splice its cache into the batch."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        started = clock()
        model = self.model
        sampling = handle.sampling
        generator = None if sampling.greedy else sampling.generator()
        drafters, policy = self._build_drafters()
        for place, own in handle.own_drafters.items():
            drafters[place] = own
        riding = rider_of(drafters)
        if riding is not None:
            raise DrafterError(
                f"batched decoding does not append a drafter's riders to its verification forwards ({riding.name}): "
                f"use {riding.name} with SpeculativeDecoder (one sequence)"
            )
        concurrent = [d.name for d in concurrent_drafters(drafters)]
        if concurrent:
            raise DrafterError(
                f"batched decoding does not draft while it verifies ({', '.join(concurrent)}): a batch already "
                f"keeps the cores busy; use {concurrent[0]} with SpeculativeDecoder (one sequence)"
            )
        view = _RowCacheView()
        context = DraftContext(
            target=model,
            tokenizer=self.tokenizer,
            sampler=RunSampler(sampling, generator),
            cache=view,
            window=self.window,
        )
        for drafter in drafters:
            drafter.begin(context)
            handle.stats.drafters.setdefault(drafter.name, DrafterStats())
        limit = self._final_length(handle) - len(handle.prompt)
        row = _Row(handle, drafters, policy, limit, generator, view, context=list(handle.prompt))
        cache = DynamicCache(config=model.config)
        # Every layer keeps all its keys (sliding windows are applied by the masks, per row):
        # a sliding layer trims by the physical cache length, which ragged rows do not share.
        cache.layers = [DynamicLayer() for _ in cache.layers]
        logits = model(input_ids=torch.tensor([handle.prompt]), cache=cache, use_cache=True, logits_to_keep=1).logits[
            0, -1
        ]
        check_finite(logits, "the target model")
        token = int(logits.argmax()) if sampling.greedy else sample(process_logits(logits, sampling), generator)
        handle.stats.target_forwards = 1
        view.row_length = len(handle.prompt)
        self.counters.admitted += 1
        self._splice(cache)
        self._rows.append(row)
        handle.stats.seconds += clock() - started
        self._emit(row, [token], out)
        if handle.done:
            self._remove([len(self._rows) - 1])

    def _splice(self, cache: Any) -> None:
        """Append a batch-1 cache as a new row, padding the shorter of the two to the longer length."""
        if self._cache is None or not self._rows:
            self._cache = cache
            return
        length, new = self._cache.get_seq_length(), cache.get_seq_length()
        total = max(length, new)
        pad = torch.nn.functional.pad
        for big, small in zip(self._cache.layers, cache.layers, strict=True):
            big.keys = torch.cat([pad(big.keys, (0, 0, 0, total - length)), pad(small.keys, (0, 0, 0, total - new))])
            big.values = torch.cat(
                [pad(big.values, (0, 0, 0, total - length)), pad(small.values, (0, 0, 0, total - new))]
            )

    def _remove(self, indices: list[int]) -> None:
        """Drop rows at ``indices`` from the batch and the cache (cut to the longest remaining row)."""
        gone = set(indices)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = None
            return
        index = torch.tensor(keep)
        longest = max(row.length for row in self._rows)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., :longest, :]
            layer.values = layer.values.index_select(0, index)[..., :longest, :]

    def _drop(self, rows: list[_Row], reason: str) -> None:
        if not rows:
            return
        for row in rows:
            self._finish_handle(row.handle, reason)
            self.counters.cancelled += 1
        self._remove([i for i, row in enumerate(self._rows) if row in rows])

    def _finish_handle(self, handle: RowHandle, reason: str) -> None:
        handle.done = True
        handle.stats.stop_reason = reason
        if reason != "cancelled":
            self.counters.finished += 1

    def _emit(self, row: _Row, tokens: list[int], out: dict[RowHandle, list[int]]) -> None:
        """Hand out ``tokens`` up to a stop; the row's next fed token becomes the last one."""
        handle = row.handle
        new = out.setdefault(handle, [])
        for token in tokens:
            row.context.append(token)
            row.emitted += 1
            handle.tokens.append(token)
            handle.stats.new_tokens = row.emitted
            new.append(token)
            stop = None
            if token in self.eos:
                stop = "eos"
            elif row.emitted >= row.limit:
                stop = "length" if row.limit == handle.max_new_tokens else "context"
            if stop is not None:
                for drafter in row.drafters:
                    drafter.end(row.context)
                self._finish_handle(handle, stop)
                return
        row.last = tokens[-1]

    # ----------------------------------------------------------- verification

    def _block_cap(self, length: int) -> int | None:
        """The most tokens one row may feed this step so the verification block stays in the budget."""
        if self.memory_budget is None:
            return None
        slots = self.memory_budget // (len(self._rows) * self.kv_bytes_per_token)
        return max(1, slots - length)

    def _verify(self, out: dict[RowHandle, list[int]]) -> None:
        started = clock()
        rows = self._rows
        length = self._cache.get_seq_length()
        cap = self._block_cap(length)
        drafts: list[tuple[Draft | None, Drafter | None]] = []
        for row in rows:
            budget = row.limit - row.emitted - 1
            if cap is not None:
                budget = min(budget, cap - 1)
            if budget > 0 and row.drafters:
                drafts.append(propose_draft(row.drafters, row.policy, row.context, budget, row.handle.stats))
            else:
                drafts.append((None, None))
        feeds = [[row.last, *(d.tokens if d is not None else [])] for row, (d, _) in zip(rows, drafts, strict=True)]
        parents = [d.parent_list() if d is not None else [] for d, _ in drafts]
        width = max(len(feed) for feed in feeds)
        batch = len(rows)
        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        visible = torch.zeros((batch, 1, width, length + width), dtype=torch.bool)
        key_positions = torch.zeros((batch, length + width), dtype=torch.long)
        for b, (row, feed, tree) in enumerate(zip(rows, feeds, parents, strict=True)):
            n = len(feed)
            ids[b, :n] = torch.tensor(feed)
            depth = [0]
            for parent in tree:
                depth.append(depth[parent + 1] + 1)
            positions[b, :n] = torch.tensor(depth) + row.length
            positions[b, n:] = row.length
            fed = torch.eye(width, dtype=torch.bool)
            for node, parent in enumerate(tree, start=1):
                fed[node] |= fed[parent + 1]
            visible[b, 0, :n, : row.length] = True
            visible[b, 0, :, length:] = fed
            key_positions[b, :length] = torch.arange(length)
            key_positions[b, length:] = positions[b]
        masks: dict[str, torch.Tensor] = {}
        for kind, window in self._layer_kinds:
            if kind in masks:
                continue
            if window is None:
                masks[kind] = visible
            else:
                inside = key_positions[:, None, None, :] > positions[:, None, :, None] - window
                # A query's own key is always inside its window, so no row is ever fully masked.
                masks[kind] = visible & inside
        if getattr(self.model.config, "_attn_implementation", "sdpa") == "eager":
            low = torch.finfo(self.model.dtype).min
            masks = {k: torch.zeros(m.shape, dtype=self.model.dtype).masked_fill(~m, low) for k, m in masks.items()}
        mask: Any = next(iter(masks.values())) if len(masks) == 1 else masks
        logits = self.model(
            input_ids=ids, cache=self._cache, use_cache=True, position_ids=positions, attention_mask=mask
        ).logits
        self.counters.forwards += 1
        seconds = clock() - started
        kept_all: list[list[int]] = []
        emitted: list[list[int]] = []
        for b, (row, (draft, drafter), feed) in enumerate(zip(rows, drafts, feeds, strict=True)):
            row_logits = logits[b, : len(feed)]
            check_finite(row_logits, "the target model")
            draft = draft if draft is not None else Draft([])
            sampling = row.handle.sampling
            if sampling.greedy:
                path, next_token = draft.greedy_path(row_logits.argmax(dim=-1).tolist())
            else:
                path, next_token = verify_tree_sampled(process_logits(row_logits, sampling), draft, row.generator)
            kept_all.append([0, *(node + 1 for node in path)])
            emitted.append([*(draft.tokens[node] for node in path), next_token])
            stats = row.handle.stats
            stats.target_forwards += 1
            row.policy.observe_verification(len(draft), seconds)
            if drafter is not None:
                record_outcome(row.policy, stats, drafter, draft, len(path))
        self._compact(length, kept_all)
        elapsed = clock() - started
        for row, tokens in zip(rows, emitted, strict=True):
            row.handle.stats.seconds += elapsed
            self._emit(row, tokens, out)
        self._remove([i for i, row in enumerate(rows) if row.handle.done])

    def _compact(self, length: int, kept: list[list[int]]) -> None:
        """Move each row's kept fed keys to follow its cached keys; cut the cache to the longest row."""
        rows = self._rows
        old = [row.length for row in rows]
        new = [n + len(k) for n, k in zip(old, kept, strict=True)]
        longest, shortest = max(new), min(old)
        # Slots below the shortest row's old length hold cached keys in every row and never move.
        index = torch.zeros((len(rows), longest - shortest), dtype=torch.long)
        for b, (n, keep) in enumerate(zip(old, kept, strict=True)):
            row_index = list(range(shortest, n)) + [length + i for i in keep]
            index[b, : len(row_index)] = torch.tensor(row_index)
            index[b, len(row_index) :] = shortest  # padding: any slot, masked later
        tail = longest - shortest
        for layer in self._cache.layers:
            for name in ("keys", "values"):
                tensor = getattr(layer, name)
                heads, dim = tensor.shape[1], tensor.shape[3]
                gather = index[:, None, :, None].expand(len(rows), heads, tail, dim)
                moved = tensor.gather(2, gather)
                tensor[:, :, shortest:longest] = moved
                setattr(layer, name, tensor[:, :, :longest])
        for row, n in zip(rows, new, strict=True):
            row.view.row_length = n
