"""The ``medusa`` drafter: a token tree from Medusa heads on the target's newest recorded hidden state.

The offsets are worked out in :mod:`.medusa`: the heads read ``h[n-2]`` (the last cached
position) and head ``k`` guesses the node at depth ``k + 1`` after the last context token.
The tree's shape is fixed (:func:`.tree.sparse_tree` over the per-head rank accuracies
measured on held-out data and saved with the heads), best nodes first, so cutting the
draft to ``k`` nodes keeps the best tree of that size. Greedy runs put the rank-``r``
guess of a head at a rank-``r`` node (point masses, no ``probs``). Sampling runs keep the
shape but draw every node independently from its head's distribution processed as the
target's is (``sampler.probabilities``), returning that distribution as the node's
``probs``: siblings are then i.i.d. draws from one ``q``, which multi-candidate rejection
sampling needs to stay exact (a chain verifier is exact on them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter, check_finite

from ..errors import SpecdecError, check_built_for
from ..exit_head import target_name
from . import HeadsError
from .medusa import MedusaHeads, default_medusa_folder, load_medusa_heads
from .tree import chain, path_score, sparse_tree, tree_parents

TREES = ("sparse", "chain")
#: The most nodes a tree is built for; the engine's policy asks for fewer.
MAX_NODES = 64


class MedusaDrafter(Drafter):
    """Draft a token tree with trained Medusa heads (heads=DIR, top_k=N ranks per head, tree=sparse|chain)."""

    name = "medusa"
    description = "a token tree from trained Medusa heads on the target's last hidden state (heads=DIR, top_k, tree)"
    provides_probs = True
    #: The heads run once per proposal whatever its size, so the engine asks for the largest tree
    #: and the policy cuts it, knowing each node's estimated acceptance (``Draft.scores``).
    cheap = True

    def __init__(self, heads: str | Path | MedusaHeads | None = None, top_k: int | None = None, tree: str = "sparse"):
        if tree not in TREES:
            raise SpecdecError(f"medusa tree must be one of {', '.join(TREES)}, got {tree!r}")
        if top_k is not None and top_k < 1:
            raise SpecdecError(f"medusa top_k must be at least 1, got {top_k}")
        self.heads_source = heads
        self.heads: MedusaHeads | None = heads if isinstance(heads, MedusaHeads) else None
        self.top_k = top_k
        self.tree = tree
        self.target: Any = None
        self.paths: list[tuple[int, ...]] = []
        self.scores: dict[tuple[int, ...], float] = {}

    def _attach(self, target: Any) -> None:
        """Load (or check) the heads for ``target`` and build the tree; once per target."""
        if isinstance(self.heads_source, MedusaHeads):
            check_built_for(self.heads_source.model, target, "Medusa heads were", "heads")
            heads = self.heads_source
        else:
            folder = (
                Path(self.heads_source) if self.heads_source is not None else default_medusa_folder(target_name(target))
            )
            try:
                heads = load_medusa_heads(target, folder)
            except HeadsError as exc:
                raise SpecdecError(str(exc)) from exc
        if self.tree == "chain":
            self.paths = chain(heads.heads)
        else:
            self.paths = sparse_tree(heads.rank_accuracy, MAX_NODES, max_rank=self.top_k)
        self.scores = {path: path_score(heads.rank_accuracy, path) for path in self.paths}
        self.heads, self.target = heads, target

    # -- drafter contract ---------------------------------------------------

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        if context.target is not self.target:
            self._attach(context.target)
        if context.cache is None:
            raise SpecdecError("the medusa drafter reads the target's hidden states: the engine must hand a cache view")
        context.cache.keep_hidden_states(context.target.config.num_hidden_layers)

    def nodes(self, n: int, k: int) -> list[tuple[int, ...]]:
        """The tree's first ``k`` rank paths that stay inside the window after a context of ``n`` tokens."""
        window = self.context.window
        depth = self.heads.heads if window is None else min(self.heads.heads, window - n)
        return [path for path in self.paths if len(path) <= depth][: max(k, 0)]

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        n = len(context_ids)
        view = self.context.cache
        paths = self.nodes(n, k)
        # The cache holds every context token but the last; h[n-2] is its newest recorded state.
        if not paths or n < 2 or view.length != n - 1:
            return Draft([])
        state = view.hidden_states(self.target.config.num_hidden_layers, n - 2, n - 1)
        if state is None:
            return Draft([])
        logits = self.heads(state[0, -1].to(self.heads.weight.dtype)).float()  # (heads, vocab)
        check_finite(logits, "the Medusa heads")
        parents = None if self.tree == "chain" else tree_parents(paths)
        if self.sampler.greedy:
            guesses = logits.topk(1 + max(path[-1] for path in paths), dim=-1).indices
            tokens = [int(guesses[len(path) - 1, path[-1]]) for path in paths]
            return Draft(tokens, None, self.tree, parents, [self.scores[path] for path in paths])
        return self._sampled(logits, paths, parents)

    def _sampled(self, logits: torch.Tensor, paths: list[tuple[int, ...]], parents: list[int] | None) -> Draft:
        """Every node an independent draw from its head's processed distribution, which is returned as its ``probs``."""
        q = torch.stack([self.sampler.probabilities(row) for row in logits])
        depths = [len(path) - 1 for path in paths]
        tokens = [0] * len(paths)
        for head in sorted(set(depths)):
            at = [i for i, d in enumerate(depths) if d == head]
            draws = torch.multinomial(q[head], len(at), replacement=True, generator=self.sampler.generator)
            for i, token in zip(at, draws.tolist(), strict=True):
                tokens[i] = int(token)
        # Sampled nodes are not rank guesses: the policy sizes them from per-depth acceptance instead.
        return Draft(tokens, q[depths], self.tree, parents)
