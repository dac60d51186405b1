"""What every kind of trained draft head shares: offsets, the training loop, accuracies, saving and loading.

Offsets (the same for every kind). Let ``c[0..n-1]`` be the context the engine hands
``propose``. The target's cache holds ``c[0..n-2]``; the verification forward feeds
``[c[n-1], *draft nodes]``. The heads' *anchor* is the newest cached position ``t = n - 2``;
``c[n-1]`` (offset +1) is already known, and the node at depth ``j`` guesses the token at
``t + 1 + j``. In training the anchor runs over every position whose next token the target
generated itself, and depth ``j`` is taught the target's own token at ``t + 1 + j``,
distilled to the target's top-k distribution of that token (which sits at ``t + j``).

A kind is a :class:`DraftHeads` module. Training calls :meth:`DraftHeads.training_logits`
(teacher-forced logits for every anchor and depth); drafting calls :meth:`DraftHeads.root`
once per proposal and :meth:`DraftHeads.grow` once per depth. Kinds whose guesses
depend only on the depth (Medusa, Hidden Transfer, PPD) are :class:`ParallelHeads`; a
*regressive* kind (Clover) computes a node's children from the node's own token.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from crossedge.core.bench import progress_bar

from ..exit_head import (
    ExitData,
    TrainConfig,
    claim_folder,
    decoder_parts,
    distillation_loss,
    model_folder,
    optimize,
    read_marked_safetensors,
    refuse_other_config,
    safetensors_marker,
    teacher_targets,
    weights_digest,
)
from . import DEFAULT_PROMPT_MIX, PROMPT_MIXES, HeadsError
from .tree import prior_rank_accuracy

FORMAT_VERSION = "1"
#: Ranks per depth whose accuracy is measured and saved (the sparse tree is built from them).
MEASURED_RANKS = 10


def final_state_is_normed(model: nn.Module) -> bool:
    """Whether ``output_hidden_states[num_hidden_layers]`` already went through the final norm (one probe forward).

    In transformers 5 (``utils/output_capturing.py``, ``capture_outputs(tie_last_hidden_states=True)``)
    the last entry is replaced by ``last_hidden_state``, which is after the final norm.
    """
    _, _, norm, lm_head = decoder_parts(model)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[0, 1]]), output_hidden_states=True)
        state = out.hidden_states[model.config.num_hidden_layers]
        direct = (lm_head(state) - out.logits).abs().max()
        renormed = (lm_head(norm(state)) - out.logits).abs().max()
    return bool(direct <= renormed)


def float_head_weight(model: nn.Module) -> torch.Tensor | None:
    """The LM head's float weight; the tied input embedding's where a backend repacked the head; else None."""
    weight = getattr(model.get_output_embeddings(), "weight", None)
    if not isinstance(weight, torch.Tensor) and getattr(model.config, "tie_word_embeddings", False):
        weight = getattr(model.get_input_embeddings(), "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.is_floating_point() else None


def lm_head_identity(model: nn.Module) -> str:
    """sha256 of the LM head's weights rounded to bfloat16 (float32 and bfloat16 loads of one checkpoint agree).

    A head whose weight a backend repacked (``torch-onednn``) is identified by the input
    embedding it is tied to, which holds the same weights.
    """
    weight = float_head_weight(model)
    if weight is None:
        raise HeadsError(
            f"the LM head of {type(model).__name__} has no floating-point weight; draft heads need the target's "
            f"float LM head (quantize it after loading the heads, or keep the LM head in float)"
        )
    data = weight.detach().to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
    return hashlib.sha256(data).hexdigest()


def refuse_sliding_windows(model: nn.Module, kind: str) -> None:
    """Kinds that run the target's own layers on extra positions build full causal masks only."""
    types = getattr(model.config, "layer_types", None) or ()
    if any("sliding" in str(t) for t in types) or getattr(model.config, "sliding_window", None):
        raise HeadsError(
            f"{kind} heads run the target's layers with full causal masks, and {model.config.model_type} has "
            f"sliding-window layers: use medusa or clover heads for it"
        )


def anchored_chains(length: int, start: int, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training layout of kinds that add ``depth`` positions after every anchor of a ``length``-token sequence.

    The added positions follow the real ones, anchor by anchor (``start .. length-2``), each
    anchor's ``depth`` in order. Returns (position ids (1, Q), allowed (Q, Q) bool, anchor of
    each added position): real positions see real ones causally; added position ``(t, j)``
    sits at ``t + j`` and sees real positions ``<= t`` and ``(t, i <= j)``, as a drafting
    forward after the anchor ``t`` would.
    """
    anchors = length - 1 - start
    t = torch.arange(start, length - 1).repeat_interleave(depth)
    j = torch.arange(1, depth + 1).repeat(anchors)
    queries = length + anchors * depth
    allowed = torch.zeros(queries, queries, dtype=torch.bool)
    allowed[:length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
    allowed[length:, :length] = torch.arange(length).unsqueeze(0) <= t.unsqueeze(1)
    allowed[length:, length:] = (t.unsqueeze(1) == t.unsqueeze(0)) & (j.unsqueeze(0) <= j.unsqueeze(1))
    positions = torch.cat([torch.arange(length), t + j]).unsqueeze(0)
    return positions, allowed, t


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive float mask attention layers take (0 where allowed, the dtype's minimum else)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


class DraftHeads(nn.Module):
    """Trained modules that guess ``depth`` tokens past the known next one, from the target's own computation.

    Subclasses set ``kind``, build their parameters in ``__init__`` (untrained heads should
    reproduce the LM head's guess from the anchor's state) and implement the methods below.
    The target is shared, never a submodule: its weights are neither trained nor saved.
    """

    kind: ClassVar[str] = ""
    #: True when a node's children depend on the node's token (the tree grows depth by depth).
    regressive: ClassVar[bool] = False

    #: False for kinds whose guesses come out of the target's own forward (PPD), which no subset can make cheaper.
    reduced_vocab: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        depth: int,
        *,
        rank_accuracy: list[list[float]] | None = None,
        vocab: int | None = None,
    ):
        super().__init__()
        if depth < 1:
            raise HeadsError(f"{self.kind} heads need a draft depth of at least 1, got {depth}")
        decoder_parts(model)  # refuses a model that is not a Llama-family decoder
        self.depth = depth
        #: rank_accuracy[d][r]: how often the rank-r guess at depth d + 1 was right on held-out data.
        self.rank_accuracy = rank_accuracy or prior_rank_accuracy(depth, MEASURED_RANKS)
        self._shared = {"model": model}
        self.vocab = None if vocab is None else int(vocab)
        if vocab is not None:
            size = model.config.vocab_size
            if not self.reduced_vocab:
                raise HeadsError(
                    f"{self.kind} heads guess through the target's own forward and LM head: leave out vocab"
                )
            if not 1 <= self.vocab <= size:
                raise HeadsError(f"{self.kind} heads' vocab must be between 1 and {size} tokens, got {vocab}")
            # The token ids the heads may guess, filled by training (choose_vocab) or by loading.
            self.register_buffer("vocab_ids", torch.arange(self.vocab))

    @property
    def model(self) -> nn.Module:
        """The target whose layers and LM head the heads use."""
        return self._shared["model"]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the heads' parameters (the target's)."""
        return next(self.parameters()).dtype

    def options(self) -> dict[str, Any]:
        """Constructor keywords besides ``depth`` that rebuild these heads (saved with the weights)."""
        return {} if self.vocab is None else {"vocab": self.vocab}

    # -- the vocabulary the heads guess from -----------------------------------

    def set_vocab(self, ids: torch.Tensor) -> None:
        """Restrict the heads' guesses to the token ``ids`` (``vocab`` distinct ids of the target's vocabulary).

        The only way to change ``vocab_ids``: the LM head rows built from them are kept until the next call.
        """
        size = self.model.config.vocab_size
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if self.vocab is None or ids.numel() != self.vocab or ids.unique().numel() != ids.numel():
            raise HeadsError(f"{self.kind} heads need {self.vocab} distinct token ids, got {ids.numel()}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
            raise HeadsError(f"{self.kind} heads' token ids must lie in 0..{size - 1}")
        with torch.no_grad():
            self.vocab_ids.copy_(ids)
        self._shared.pop("subset", None)  # rebuilt from the new ids at the next use

    def _subset(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, Any]:
        """(LM head rows, their bias, full-vocabulary index of each id or -1, the rows prepacked for oneDNN or
        ``None``) for ``vocab_ids``, built once."""
        cached = self._shared.get("subset")
        if cached is not None:
            return cached
        weight = float_head_weight(self.model)
        if weight is None:
            raise HeadsError(
                f"{self.kind} heads with a reduced vocab read the target's float LM head, and this model has none: "
                f"keep the LM head in float"
            )
        ids = self.vocab_ids
        bias = getattr(self.model.get_output_embeddings(), "bias", None)
        # Normal tensors even when first built under inference mode, so training can use them later.
        with torch.inference_mode(False), torch.no_grad():
            index = torch.full((self.model.config.vocab_size,), -1, dtype=torch.long)
            index[ids] = torch.arange(ids.numel())
            rows = weight.detach()[ids].to(self.dtype).contiguous()
            # Drafting multiplies a few rows at a time, where oneDNN on a prepacked weight is several times
            # faster than the plain product (see crossedge.ondevice's PackedLinear); training takes the plain one.
            packed = None
            if torch.backends.mkldnn.is_available() and rows.dtype in (torch.float32, torch.bfloat16):
                packed = torch.ops.mkldnn._reorder_linear_weight(rows, None)
            row_bias = None if not isinstance(bias, torch.Tensor) else bias.detach()[ids].to(self.dtype)
        parts = (rows, row_bias, index, packed)
        self._shared["subset"] = parts
        return parts

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of LM-head inputs ``hidden``: over the whole vocabulary, or over ``vocab_ids`` in their order."""
        if self.vocab is None:
            return self.model.get_output_embeddings()(hidden)
        weight, bias, _, packed = self._subset()
        if packed is not None and not torch.is_grad_enabled():
            x = hidden.to(weight.dtype).contiguous()
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return nn.functional.linear(hidden.to(weight.dtype), weight, bias)

    def token_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids of positions in :meth:`project`'s last dimension."""
        return indices if self.vocab is None else self.vocab_ids[indices]

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`project`'s logits spread over the whole vocabulary, ``-inf`` outside the heads' tokens."""
        if self.vocab is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.model.config.vocab_size), float("-inf"))
        return full.index_copy_(-1, self.vocab_ids, logits)

    def targets(self, ids: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher (ids, probs) as positions of :meth:`project`'s output: tokens outside the heads' vocabulary are
        dropped and the rest renormalised (an anchor whose whole top-k lies outside teaches nothing)."""
        if self.vocab is None:
            return ids, probs
        index = self._subset()[2]
        where = index[ids]
        inside = where >= 0
        kept = probs * inside
        kept = kept / kept.sum(-1, keepdim=True).clamp(min=1e-12)
        return where.clamp(min=0), kept

    def layers_read(self) -> tuple[int, ...]:
        """Layers whose hidden states training collects and drafting reads through the cache view."""
        return (self.model.config.num_hidden_layers,)

    def training_logits(self, data: ExitData, rows: Any, start: int) -> torch.Tensor:
        """Teacher-forced logits (rows, T - start - 1, depth, vocab) for anchors ``start .. T-2``."""
        raise NotImplementedError

    def root(self, view: Any, context_ids: list[int]) -> Any:
        """What drafting needs at the anchor ``n - 2`` (``None`` when the view lacks it)."""
        raise NotImplementedError

    def grow(self, states: list[Any], tokens: list[int], depth: int) -> tuple[torch.Tensor, list[Any]]:
        """(logits (m, vocab), states) for the children, at ``depth``, of ``m`` nodes with these states and tokens.

        The root's token is the known ``c[n-1]``; its state is what :meth:`root` returned.
        """
        raise NotImplementedError


class ParallelHeads(DraftHeads):
    """Heads that guess every depth at once from the anchor (the guess does not depend on the parent's token)."""

    def draft_logits(self, view: Any, context_ids: list[int]) -> torch.Tensor | None:
        """(depth, vocab) logits at the anchor, or ``None`` when the view lacks what they read."""
        raise NotImplementedError

    def root(self, view: Any, context_ids: list[int]) -> Any:
        return self.draft_logits(view, context_ids)

    def grow(self, states: list[Any], tokens: list[int], depth: int) -> tuple[torch.Tensor, list[Any]]:
        logits = states[0][depth - 1]
        return logits.expand(len(states), -1), states


# -- data, loss, accuracy ------------------------------------------------------


@torch.inference_mode()
def collect_head_data(
    model: nn.Module,
    sequences: torch.Tensor,
    layers: tuple[int, ...],
    *,
    top_k: int = 32,
    batch_size: int = 8,
    progress: bool = True,
) -> ExitData:
    """One frozen pass over ``sequences``: states at ``layers`` (as the cache view records them), top-k targets."""
    states: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    top_ids, top_probs = [], []
    for start in progress_bar(range(0, sequences.shape[0], batch_size), desc="teacher pass", enabled=progress):
        out = model(input_ids=sequences[start : start + batch_size], output_hidden_states=bool(layers))
        for layer in layers:
            states[layer].append(out.hidden_states[layer].float())
        ids, probs = teacher_targets(out.logits, top_k)
        top_ids.append(ids)
        top_probs.append(probs)
    return ExitData(sequences, {k: torch.cat(v) for k, v in states.items()}, torch.cat(top_ids), torch.cat(top_probs))


def head_targets(data: ExitData, rows: Any, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Teacher (ids, probs) for depth ``k + 1`` at anchors ``start ..`` and how many anchors have one.

    Depth ``k + 1`` at anchor ``t`` learns token ``t + k + 2``, whose teacher distribution sits
    at position ``t + k + 1``.
    """
    first = start + k + 1
    return data.top_ids[rows, first:], data.top_probs[rows, first:], data.input_ids.shape[1] - first


def heads_loss(heads: DraftHeads, data: ExitData, rows: Any, start: int) -> torch.Tensor:
    """Mean over depths of the distillation loss against the target's distribution of each depth's token."""
    logits = heads.training_logits(data, rows, start)
    losses = []
    for k in range(heads.depth):
        ids, probs, count = head_targets(data, rows, start, k)
        ids, probs = heads.targets(ids, probs)
        losses.append(distillation_loss(logits[:, :count, k], ids, probs))
    return torch.stack(losses).mean()


@torch.inference_mode()
def rank_accuracy(
    heads: DraftHeads, data: ExitData, start: int, *, ranks: int = MEASURED_RANKS, batch_size: int = 8
) -> list[list[float]]:
    """``[d][r]``: share of anchors where the rank-``r`` guess at depth ``d + 1`` is the target's greedy token.

    Regressive kinds are measured teacher-forced (each depth given the target's own tokens before it).
    """
    ranks = min(ranks, heads.vocab or heads.model.config.vocab_size)
    hits = torch.zeros(heads.depth, ranks)
    counts = torch.zeros(heads.depth)
    n = data.input_ids.shape[0]
    for b in range(0, n, batch_size):
        rows = slice(b, b + batch_size)
        guesses = heads.token_ids(heads.training_logits(data, rows, start).topk(ranks, dim=-1).indices)
        for k in range(heads.depth):
            ids, _, count = head_targets(data, rows, start, k)
            hits[k] += (guesses[:, :count, k] == ids[..., :1]).flatten(0, 1).sum(0).float()
            counts[k] += ids.shape[0] * count
    return (hits / counts.clamp(min=1).unsqueeze(1)).tolist()


@dataclass
class HeadsTrainResult:
    """What training did and how often each depth's guesses were right on held-out sequences."""

    kind: str
    heads: int
    steps: int
    #: Seconds of the optimisation loop (the self-generation and teacher pass are in data_seconds).
    seconds: float
    data_seconds: float
    final_loss: float
    #: Per depth d (offset d + 1): top-1 and top-``top_k`` accuracy against the target's greedy token.
    top1: list[float]
    topk: list[float]
    top_k: int
    #: The same top-1 for untrained heads (the LM head's own guess from the anchor, one place too early).
    untrained_top1: list[float]
    trainable_parameters: int = 0
    history: list[float] = field(default_factory=list)
    folder: str | None = None
    #: The instructions the training prompts asked (a key of :data:`PROMPT_MIXES`).
    prompt_mix: str = ""


def fit_heads(
    heads: DraftHeads,
    data: ExitData,
    start: int,
    config: TrainConfig | None = None,
    *,
    heldout: ExitData | None = None,
    top_k: int = 5,
    progress: bool = True,
) -> HeadsTrainResult:
    """Train ``heads`` on collected data from anchor ``start`` on; only the heads' own weights change."""
    config = config or TrainConfig()
    length = data.input_ids.shape[1]
    if length - start - 1 <= heads.depth:
        raise HeadsError(
            f"sequences of {length} tokens with the generated part from position {start + 1} leave no target for "
            f"depth {heads.depth}: generate more than {heads.depth} new tokens"
        )
    evaluation = heldout if heldout is not None else data
    untrained = rank_accuracy(heads, evaluation, start, ranks=1)
    began = time.perf_counter()
    history = optimize(
        heads.model,
        heads,
        lambda idx: heads_loss(heads, data, idx, start),
        data.input_ids.shape[0],
        config,
        desc=f"{heads.kind} heads (depth {heads.depth})",
        progress=progress,
    )
    seconds = time.perf_counter() - began
    heads.rank_accuracy = rank_accuracy(heads, evaluation, start)
    return HeadsTrainResult(
        kind=heads.kind,
        heads=heads.depth,
        steps=len(history),
        seconds=seconds,
        data_seconds=0.0,
        final_loss=history[-1] if history else float("nan"),
        top1=[row[0] for row in heads.rank_accuracy],
        # Ranks are disjoint events; min() only removes the rounding of summed fractions above 1.
        topk=[min(1.0, sum(row[:top_k])) for row in heads.rank_accuracy],
        top_k=top_k,
        untrained_top1=[row[0] for row in untrained],
        trainable_parameters=sum(p.numel() for p in heads.parameters()),
        history=history,
    )


def default_heads_folder(kind: str, model_name: str) -> Path:
    """Where ``train-heads --kind KIND`` puts heads when no ``--out`` is given: beside the model cache."""
    return model_folder("draft-heads", model_name) / kind


# -- saving and loading --------------------------------------------------------


def weights_name(kind: str) -> str:
    """The safetensors file one kind of heads is saved in."""
    return f"{kind.replace('-', '_')}_heads.safetensors"


def marker(kind: str) -> str:
    """The ``crossedge`` metadata entry that says crossedge wrote heads of ``kind``."""
    return f"{kind}-heads"


def _ours(kind: str) -> Callable[[Path], bool]:
    def written(path: Path) -> bool:
        return path.name == weights_name(kind) and safetensors_marker(path) == marker(kind)

    return written


def _command(kind: str) -> str:
    return f"crossedge specdec train-heads --model NAME --kind {kind}"


def save_heads(
    heads: DraftHeads, folder: Path | str, *, model_name: str, result: HeadsTrainResult | None = None
) -> Path:
    """Write the heads' own weights and, as safetensors metadata, the model they belong to and their accuracies."""
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    kind = heads.kind
    folder = claim_folder(folder, _ours(kind), what=f"{kind} heads", error=HeadsError)
    state = {name: value.detach().contiguous() for name, value in heads.state_dict().items()}
    config = heads.model.config
    training = None if result is None else {k: v for k, v in asdict(result).items() if k != "history"}
    meta = {
        "format": "pt",
        "crossedge": marker(kind),
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": model_name,
        "model_type": str(config.model_type),
        "vocab_size": str(config.vocab_size),
        "hidden_size": str(config.hidden_size),
        "num_hidden_layers": str(config.num_hidden_layers),
        "heads": str(heads.depth),
        "options": json.dumps(heads.options()),
        "lm_head_sha256": lm_head_identity(heads.model),
        "weights_sha256": weights_digest(state),
        "rank_accuracy": json.dumps(heads.rank_accuracy),
        "training": json.dumps(training),
    }
    with atomic_file(folder / weights_name(kind)) as out:
        out.write(save(state, metadata=meta))
    return folder


def read_heads_file(kind: str, folder: Path | str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of saved heads of ``kind``; a missing, damaged or foreign file is refused in one line."""
    return read_marked_safetensors(
        Path(folder) / weights_name(kind),
        marker=marker(kind),
        version=FORMAT_VERSION,
        what=f"{kind} heads",
        command=_command(kind),
        error=HeadsError,
    )


def load_heads(cls: type[DraftHeads], model: nn.Module, folder: Path | str) -> DraftHeads:
    """Heads of ``cls.kind`` saved by :func:`save_heads`, refusing heads trained for another model."""
    kind = cls.kind
    meta, state = read_heads_file(kind, folder)
    path = Path(folder) / weights_name(kind)
    trained_for = meta.get("model", "?")
    again = f"train heads for it with '{_command(kind)}'"
    refuse_other_config(meta, model, what=f"{kind} heads", folder=folder, again=again, error=HeadsError)
    if meta.get("lm_head_sha256") != lm_head_identity(model):
        raise HeadsError(
            f"the {kind} heads in {folder} were trained for {trained_for!r}, whose LM head differs from this "
            f"model's: {again}"
        )
    try:
        accuracy = json.loads(meta["rank_accuracy"])
        depth = int(meta["heads"])
        options = json.loads(meta["options"])
        heads = cls(model, depth, rank_accuracy=accuracy, **options)
    except (KeyError, ValueError, TypeError) as exc:
        raise HeadsError(f"the metadata of {path} is damaged ({exc}); train the heads again") from exc
    expected = {name: tuple(value.shape) for name, value in heads.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    if expected != found:
        raise HeadsError(f"{path} does not hold {kind} heads of this shape (found {sorted(found)}): train them again")
    with torch.no_grad():
        heads.load_state_dict(state)
    if heads.vocab is not None:
        try:
            heads.set_vocab(state["vocab_ids"])
        except HeadsError as exc:
            raise HeadsError(f"the token ids in {path} are damaged ({exc}); train the heads again") from exc
    return heads.eval()


def choose_vocab(
    size: int, data: ExitData, generated_from: int, tokenizer: Any, texts: list[str], model: nn.Module
) -> torch.Tensor:
    """The ``size`` token ids reduced-vocabulary heads guess from, most useful first.

    First the tokens the target generated itself in the training rows (columns from
    ``generated_from`` on) and the teacher's top-1 at every training position, by count; then
    the most frequent tokens of the prompts and of ``texts``; the end-of-sequence ids are
    always in. Held-out rows are not looked at, so
    their measured accuracy counts the misses a reduced vocabulary causes.
    """
    vocab_size = model.config.vocab_size
    own = torch.bincount(data.input_ids[:, generated_from:].flatten(), minlength=vocab_size).double()
    own += torch.bincount(data.top_ids[..., 0].flatten(), minlength=vocab_size).double()
    seen = torch.bincount(data.input_ids[:, :generated_from].flatten(), minlength=vocab_size).double()
    for text in texts:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
        ids = ids[ids < vocab_size]  # a tokenizer's added tokens beyond the LM head have no logit
        if ids.numel():
            seen += torch.bincount(ids, minlength=vocab_size).double()
    # Own counts rank above any corpus count; the corpus orders the rest and breaks ties.
    score = own * (seen.sum() + 1) + seen
    eos = model.generation_config.eos_token_id
    for token in [eos] if isinstance(eos, int) else list(eos or []):
        if 0 <= int(token) < vocab_size:
            score[int(token)] = float("inf")
    return score.argsort(descending=True, stable=True)[:size]


def train_kind(
    cls: type[DraftHeads],
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    *,
    depth: int = 3,
    out: Path | str | None = None,
    options: dict[str, Any] | None = None,
    prompts: int = 96,
    prompt_tokens: int = 64,
    new_tokens: int = 64,
    holdout: int = 16,
    config: TrainConfig | None = None,
    top_k: int = 5,
    teacher_top_k: int = 32,
    texts: list[str] | None = None,
    prompt_mix: str = DEFAULT_PROMPT_MIX,
    progress: bool = True,
) -> HeadsTrainResult:
    """Self-distil heads of ``cls`` from the model's own greedy continuations of prompts cut from ``texts``; save them.

    ``texts`` defaults to the bundled corpora; ``out`` defaults to the folder beside the
    model cache where the kind's drafter looks. Each depth learns the target's top
    ``teacher_top_k`` distribution of its token, renormalised; ``teacher_top_k=1`` is
    plain cross-entropy on the target's own token. ``prompt_mix`` names the instructions the
    prompts are framed with (:data:`PROMPT_MIXES`); ``tasks`` leaves the default suite's documents
    out of the default texts.
    """
    from ..exit_head import cached_self_generated, corpus_texts, training_prompts
    from ..suite import source_documents

    if prompt_mix not in PROMPT_MIXES:
        raise HeadsError(f"unknown prompt mix {prompt_mix!r}; the mixes are: {', '.join(PROMPT_MIXES)}")

    kind = cls.kind
    folder = Path(out) if out is not None else default_heads_folder(kind, model_name)
    claim_folder(folder, _ours(kind), what=f"{kind} heads", error=HeadsError)  # refuse before hours of work
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    heads = cls(model, depth, **(options or {}))
    began = time.perf_counter()
    if texts is None:
        texts = corpus_texts(exclude=source_documents() if prompt_mix == "tasks" else ())
    prompt_ids = training_prompts(tokenizer, texts, prompts, prompt_tokens, instruction=PROMPT_MIXES[prompt_mix])
    sequences = cached_self_generated(model, prompt_ids, new_tokens, progress=progress)
    data = collect_head_data(model, sequences, heads.layers_read(), top_k=teacher_top_k, progress=progress)
    train, held = data.split(holdout)
    if heads.vocab is not None:
        heads.set_vocab(choose_vocab(heads.vocab, train, prompt_ids.shape[1], tokenizer, texts, model))
    data_seconds = time.perf_counter() - began
    # Position prompt_len - 1 is the first whose next token the target generated itself.
    result = fit_heads(heads, train, prompt_ids.shape[1] - 1, config, heldout=held, top_k=top_k, progress=progress)
    result.data_seconds = data_seconds
    result.prompt_mix = prompt_mix
    result.folder = str(save_heads(heads, folder, model_name=model_name, result=result))
    return result
