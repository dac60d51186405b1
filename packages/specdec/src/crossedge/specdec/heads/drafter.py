"""Drafters over trained heads: a token tree grown from the anchor, one depth at a time.

The offsets are worked out in :mod:`.base`: the heads read the anchor ``n - 2`` (the
last cached position) and the node at depth ``j`` guesses the token ``j`` places after
the last context token. The tree's shape is fixed (:func:`.tree.sparse_tree` over the
per-depth rank accuracies measured on held-out data and saved with the heads), best
nodes first, so cutting the draft to ``k`` nodes keeps the best tree of that size.

Greedy runs put a node's rank-``r`` guess at its rank-``r`` child (point masses, no
``probs``). Sampling runs keep the shape but draw the children of every node
independently from the heads' distribution there, processed as the target's is
(``sampler.probabilities``), and return it as each child's ``probs``: siblings are then
i.i.d. draws from one ``q``, which multi-candidate rejection sampling needs to stay
exact (a chain verifier is exact on them too). For parallel kinds the distribution
depends on the depth only; for regressive ones (Clover) on the parent's token too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter, Riders, check_finite

from ..errors import SpecdecError, check_built_for
from ..exit_head import target_name
from . import HeadsError
from .base import DraftHeads, default_heads_folder, load_heads
from .clover import CloverHeads
from .hidden_transfer import HiddenTransferHeads
from .medusa import MedusaHeads
from .ppd import PromptHeads
from .tree import chain, path_score, sparse_tree, tree_parents

TREES = ("sparse", "chain")
#: The most nodes a tree is built for; the engine's policy asks for fewer.
MAX_NODES = 64


class HeadsDrafter(Drafter):
    """Draft a token tree with trained heads of one kind (heads=DIR, top_k=N ranks per depth, tree=sparse|chain)."""

    heads_class: ClassVar[type[DraftHeads]] = DraftHeads
    provides_probs = True
    #: The heads run once per proposal and depth whatever the tree's width, so the engine asks for
    #: the largest tree and the policy cuts it, knowing each node's estimated acceptance (``Draft.scores``).
    cheap = True

    def __init__(self, heads: str | Path | DraftHeads | None = None, top_k: int | None = None, tree: str = "sparse"):
        if tree not in TREES:
            raise SpecdecError(f"{self.name} tree must be one of {', '.join(TREES)}, got {tree!r}")
        if top_k is not None and top_k < 1:
            raise SpecdecError(f"{self.name} top_k must be at least 1, got {top_k}")
        if isinstance(heads, DraftHeads) and not isinstance(heads, self.heads_class):
            raise SpecdecError(f"the {self.name} drafter needs {self.heads_class.kind} heads, got {heads.kind} heads")
        self.heads_source = heads
        self.heads: DraftHeads | None = heads if isinstance(heads, DraftHeads) else None
        self.top_k = top_k
        self.tree = tree
        self.target: Any = None
        self.paths: list[tuple[int, ...]] = []
        self.scores: dict[tuple[int, ...], float] = {}

    def _attach(self, target: Any) -> None:
        """Load (or check) the heads for ``target`` and build the tree; once per target."""
        kind = self.heads_class.kind
        if isinstance(self.heads_source, DraftHeads):
            check_built_for(self.heads_source.model, target, f"{kind} heads were", "heads")
            heads = self.heads_source
        else:
            source = self.heads_source
            folder = Path(source) if source is not None else default_heads_folder(kind, target_name(target))
            try:
                heads = load_heads(self.heads_class, target, folder)
            except HeadsError as exc:
                raise SpecdecError(str(exc)) from exc
        if self.tree == "chain":
            self.paths = chain(heads.depth)
        else:
            # Heads with a reduced vocabulary have no more ranks than tokens.
            ranks = min(self.top_k or MAX_NODES, heads.vocab or MAX_NODES)
            self.paths = sparse_tree(heads.rank_accuracy, MAX_NODES, max_rank=ranks)
        self.scores = {path: path_score(heads.rank_accuracy, path) for path in self.paths}
        self.heads, self.target = heads, target

    # -- drafter contract ---------------------------------------------------

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        if context.target is not self.target:
            self._attach(context.target)
        if context.cache is None:
            raise SpecdecError(f"the {self.name} drafter reads the target's computation: the engine must give a view")
        for layer in self.heads.layers_read():
            context.cache.keep_hidden_states(layer)

    def nodes(self, n: int, k: int) -> list[tuple[int, ...]]:
        """The tree's first ``k`` rank paths that stay inside the window after a context of ``n`` tokens."""
        window = self.context.window
        depth = self.heads.depth if window is None else min(self.heads.depth, window - n)
        return [path for path in self.paths if len(path) <= depth][: max(k, 0)]

    def _root(self, view: Any, context_ids: list[int]) -> Any:
        return self.heads.root(view, context_ids)

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        n = len(context_ids)
        view = self.context.cache
        paths = self.nodes(n, k)
        # The cache holds every context token but the last; the anchor n-2 is its newest position.
        if not paths or n < 2 or view.length != n - 1:
            return Draft([])
        root = self._root(view, list(context_ids))
        if root is None:
            return Draft([])
        parents = tree_parents(paths)
        greedy = self.sampler.greedy
        tokens = [0] * len(paths)
        probs: list[torch.Tensor] = [torch.empty(0)] * len(paths)
        states: dict[int, Any] = {-1: root}
        for depth in range(1, max(len(path) for path in paths) + 1):
            here = [i for i, path in enumerate(paths) if len(path) == depth]
            above = sorted({parents[i] for i in here})
            known = [int(context_ids[-1]) if p == -1 else tokens[p] for p in above]
            logits, below = self.heads.grow([states[p] for p in above], known, depth)
            check_finite(logits, f"the {self.name} heads")
            for row, parent in enumerate(above):
                kids = [i for i in here if parents[i] == parent]
                if greedy:
                    ranked = self.heads.token_ids(logits[row].topk(1 + max(paths[i][-1] for i in kids)).indices)
                    picks = [int(ranked[paths[i][-1]]) for i in kids]
                else:
                    q = self.sampler.probabilities(self.heads.full_logits(logits[row]))
                    generator = self.sampler.generator
                    picks = torch.multinomial(q, len(kids), replacement=True, generator=generator).tolist()
                for i, token in zip(kids, picks, strict=True):
                    tokens[i] = int(token)
                    states[i] = below[row]
                    if not greedy:
                        probs[i] = q
        shape = None if self.tree == "chain" else parents
        if greedy:
            return Draft(tokens, None, self.tree, shape, [self.scores[path] for path in paths])
        # Sampled nodes are not rank guesses: the policy sizes them from per-depth acceptance instead.
        return Draft(tokens, torch.stack(probs), self.tree, shape)


class MedusaDrafter(HeadsDrafter):
    """Draft a token tree with trained Medusa heads (heads=DIR, top_k=N ranks per head, tree=sparse|chain)."""

    name = "medusa"
    description = "a token tree from trained Medusa heads on the target's last hidden state (heads=DIR, top_k, tree)"
    heads_class = MedusaHeads


class HiddenTransferDrafter(HeadsDrafter):
    """Draft a token tree from pseudo states transferred at an intermediate layer (heads=DIR, top_k, tree)."""

    name = "hidden-transfer"
    description = "a token tree from Hidden Transfer pseudo states refined by the target's upper layers (heads=DIR)"
    heads_class = HiddenTransferHeads


class CloverDrafter(HeadsDrafter):
    """Draft a token tree with Clover's regressive attention decoder (heads=DIR, top_k, tree)."""

    name = "clover"
    description = "a token tree from Clover heads: regressive attention decoder with an augmenting block (heads=DIR)"
    heads_class = CloverHeads


class PPDDrafter(HeadsDrafter):
    """Draft a token tree from trained prompt tokens that ride each verification forward (heads=DIR, top_k, tree)."""

    name = "ppd"
    description = "a token tree from PPD prompt tokens carried by the target's verification forward (heads=DIR)"
    heads_class = PromptHeads

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        #: (context length they serve, logits (depth, vocab)) of the chain under the last accepted position.
        self.pending: tuple[int, torch.Tensor] | None = None
        self.riding: tuple[int, int] | None = None

    def _root(self, view: Any, context_ids: list[int]) -> Any:
        if self.pending is None or self.pending[0] != len(context_ids):
            return None
        return self.pending[1]

    def ride(self, context_ids: Sequence[int], draft: Draft) -> Riders | None:
        n = len(context_ids)
        window = self.context.window
        # The last context token sits at n - 1, a node at n - 1 + its depth, a prompt token j below it.
        if window is not None and n + max(draft.depths(), default=0) + self.heads.depth > window:
            self.riding = None
            return None
        self.riding = (n, len(draft))
        return self.heads.riders(len(draft))

    def rode(self, logits: torch.Tensor, path: Sequence[int]) -> None:
        n, _ = self.riding
        depth = self.heads.depth
        anchor = path[-1] + 1 if path else 0  # chain 0 hangs under the fed last token, chain i + 1 under node i
        self.pending = (n + len(path) + 1, logits[anchor * depth : (anchor + 1) * depth].float())
