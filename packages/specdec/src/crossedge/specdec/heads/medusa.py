"""Medusa heads: residual blocks on the target's last hidden state, each guessing a token further ahead.

Head ``k`` (0-based) is ``h + SiLU(W_k h + b_k)`` followed by the target's own LM head
(shared, frozen, never copied). ``W_k`` and ``b_k`` start at zero, so an untrained head
predicts exactly what the LM head predicts from ``h``.

Which hidden state. The heads read the state the engine records for the drafter through
:class:`~crossedge.core.contracts.drafter.TargetCacheView` at layer
``num_hidden_layers``, i.e. ``output_hidden_states[num_hidden_layers]``. In transformers 5
(checked in 5.24: ``utils/output_capturing.py``, ``capture_outputs(tie_last_hidden_states=True)``)
that last entry is replaced by ``last_hidden_state``, so it is *after* the final norm and
``lm_head(h)`` equals the model's logits. :func:`final_state_is_normed` checks this on the
target once; the heads apply the final norm themselves only when the state is not normed
(a config with ``tie_last_hidden_states=False``), so the norm is never applied twice.
Training reads the same entry, so training and drafting always see the same state.

Offsets. Let ``c[0..n-1]`` be the context the engine hands ``propose`` (prompt plus
accepted output). The target's cache holds ``c[0..n-2]`` (``view.length == n - 1``);
the engine's verification forward feeds ``[c[n-1], *draft nodes]``, and its logits at
``c[n-1]`` check the depth-1 nodes. The newest recorded state is therefore ``h[n-2]``,
whose own next token (offset +1) is ``c[n-1]``: already known, as the base model's token
is in Medusa. Head ``k`` predicts offset ``+(k + 2)`` from ``h[n-2]``, which is
``c[n + k]``, the node at depth ``k + 1``. ``K`` heads give a tree of depth at most ``K``.
In training, head ``k`` at position ``t`` is taught the target's own token at ``t + k + 2``
(distilled to the target's top-k distribution of that token), on positions whose next
token the target generated itself, as ``c[n-1]`` always is in a greedy run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core.bench import progress_bar

from ..exit_head import (
    ExitData,
    TrainConfig,
    claim_folder,
    corpus_texts,
    decoder_parts,
    distillation_loss,
    model_folder,
    optimize,
    read_marked_safetensors,
    safetensors_marker,
    self_generated_sequences,
    teacher_targets,
    training_prompts,
    weights_digest,
)
from . import HeadsError
from .tree import prior_rank_accuracy

FORMAT_VERSION = "1"
WEIGHTS_NAME = "medusa_heads.safetensors"
MARKER = "medusa-heads"
#: Ranks per head whose accuracy is measured and saved (the sparse tree is built from them).
MEASURED_RANKS = 10


def final_state_is_normed(model: nn.Module) -> bool:
    """Whether ``output_hidden_states[num_hidden_layers]`` already went through the final norm (one probe forward)."""
    _, _, norm, lm_head = decoder_parts(model)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[0, 1]]), output_hidden_states=True)
        state = out.hidden_states[model.config.num_hidden_layers]
        direct = (lm_head(state) - out.logits).abs().max()
        renormed = (lm_head(norm(state)) - out.logits).abs().max()
    return bool(direct <= renormed)


def lm_head_identity(model: nn.Module) -> str:
    """sha256 of the LM head's weights rounded to bfloat16 (float32 and bfloat16 loads of one checkpoint agree).

    A head whose weight a backend repacked (``torch-onednn``) is identified by the input
    embedding it is tied to, which holds the same weights.
    """
    weight = getattr(model.get_output_embeddings(), "weight", None)
    if not isinstance(weight, torch.Tensor) and getattr(model.config, "tie_word_embeddings", False):
        weight = getattr(model.get_input_embeddings(), "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise HeadsError(
            f"the LM head of {type(model).__name__} has no floating-point weight; Medusa heads need the target's "
            f"float LM head (quantize it after loading the heads, or keep the LM head in float)"
        )
    data = weight.detach().to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
    return hashlib.sha256(data).hexdigest()


class MedusaHeads(nn.Module):
    """``heads`` residual blocks sharing the target's LM head; head ``k`` guesses offset ``+(k + 2)``."""

    def __init__(self, model: nn.Module, heads: int = 3, *, rank_accuracy: list[list[float]] | None = None):
        super().__init__()
        if heads < 1:
            raise HeadsError(f"Medusa needs at least one head, got {heads}")
        decoder_parts(model)  # refuses a model that is not a Llama-family decoder
        hidden = model.config.hidden_size
        dtype = model.dtype  # the LM head may be repacked by a backend, with no .weight
        self.weight = nn.Parameter(torch.zeros(heads, hidden, hidden, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(heads, hidden, dtype=dtype))
        self.heads = heads
        self.apply_norm = not final_state_is_normed(model)
        #: rank_accuracy[k][r]: how often head k's rank-r guess was right on held-out data.
        self.rank_accuracy = rank_accuracy or prior_rank_accuracy(heads, MEASURED_RANKS)
        self._shared = {"model": model}  # not a submodule: the LM head (and norm) stay the model's

    @property
    def model(self) -> nn.Module:
        """The target whose LM head the heads share."""
        return self._shared["model"]

    def hidden(self, state: torch.Tensor) -> torch.Tensor:
        """(..., heads, hidden) inputs of the LM head for last-layer states (..., hidden)."""
        update = torch.einsum("...i,koi->...ko", state, self.weight) + self.bias
        out = state.unsqueeze(-2) + nn.functional.silu(update)
        if self.apply_norm:
            _, _, norm, _ = decoder_parts(self.model)
            out = norm(out)
        return out

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """(..., heads, vocab) logits: head ``k``'s guess of the token ``k + 2`` places after ``state``'s."""
        return self.model.get_output_embeddings()(self.hidden(state))


# -- data and training ---------------------------------------------------------


@torch.inference_mode()
def collect_head_data(
    model: nn.Module, sequences: torch.Tensor, *, top_k: int = 32, batch_size: int = 8, progress: bool = True
) -> ExitData:
    """One frozen pass over ``sequences``: last-layer states (as the cache view records them) and top-k targets."""
    layer = model.config.num_hidden_layers
    states, top_ids, top_probs = [], [], []
    for start in progress_bar(range(0, sequences.shape[0], batch_size), desc="teacher pass", enabled=progress):
        out = model(input_ids=sequences[start : start + batch_size], output_hidden_states=True)
        states.append(out.hidden_states[layer].float())
        ids, probs = teacher_targets(out.logits, top_k)
        top_ids.append(ids)
        top_probs.append(probs)
    return ExitData(sequences, {layer: torch.cat(states)}, torch.cat(top_ids), torch.cat(top_probs))


def head_logits(heads: MedusaHeads, data: ExitData, rows: Any, start: int) -> torch.Tensor:
    """Logits (rows, T - start - 1, heads, vocab) at positions ``start .. T-2`` of the chosen rows."""
    states = data.hidden[heads.model.config.num_hidden_layers][rows, start:-1]
    return heads(states.to(heads.weight.dtype))


def head_targets(data: ExitData, rows: Any, start: int, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Teacher (ids, probs) for head ``k`` at positions ``start ..`` and how many positions have one.

    Head ``k`` at position ``t`` learns token ``t + k + 2``, whose teacher distribution sits
    at position ``t + k + 1``.
    """
    first = start + k + 1
    return data.top_ids[rows, first:], data.top_probs[rows, first:], data.input_ids.shape[1] - first


def medusa_loss(heads: MedusaHeads, data: ExitData, rows: Any, start: int) -> torch.Tensor:
    """Mean over heads of the distillation loss against the target's distribution of each head's token."""
    logits = head_logits(heads, data, rows, start)
    losses = []
    for k in range(heads.heads):
        ids, probs, count = head_targets(data, rows, start, k)
        losses.append(distillation_loss(logits[:, :count, k], ids, probs))
    return torch.stack(losses).mean()


@torch.inference_mode()
def rank_accuracy(
    heads: MedusaHeads, data: ExitData, start: int, *, ranks: int = MEASURED_RANKS, batch_size: int = 8
) -> list[list[float]]:
    """``[k][r]``: share of positions where head ``k``'s rank-``r`` guess is the target's greedy token."""
    ranks = min(ranks, heads.model.config.vocab_size)
    hits = torch.zeros(heads.heads, ranks)
    counts = torch.zeros(heads.heads)
    n = data.input_ids.shape[0]
    for b in range(0, n, batch_size):
        rows = slice(b, b + batch_size)
        guesses = head_logits(heads, data, rows, start).topk(ranks, dim=-1).indices
        for k in range(heads.heads):
            ids, _, count = head_targets(data, rows, start, k)
            hits[k] += (guesses[:, :count, k] == ids[..., :1]).flatten(0, 1).sum(0).float()
            counts[k] += ids.shape[0] * count
    return (hits / counts.clamp(min=1).unsqueeze(1)).tolist()


@dataclass
class HeadsTrainResult:
    """What training did and how often each head's guesses were right on held-out sequences."""

    kind: str
    heads: int
    steps: int
    #: Seconds of the optimisation loop (the self-generation and teacher pass are in data_seconds).
    seconds: float
    data_seconds: float
    final_loss: float
    #: Per head k (offset k + 2): top-1 and top-``top_k`` accuracy against the target's greedy token.
    top1: list[float]
    topk: list[float]
    top_k: int
    #: The same top-1 for untrained heads (the LM head's own guess, one place too early).
    untrained_top1: list[float]
    history: list[float] = field(default_factory=list)
    folder: str | None = None


def train_medusa_heads(
    model: nn.Module,
    data: ExitData,
    start: int,
    heads: int = 3,
    config: TrainConfig | None = None,
    *,
    heldout: ExitData | None = None,
    top_k: int = 5,
    progress: bool = True,
) -> tuple[MedusaHeads, HeadsTrainResult]:
    """Train :class:`MedusaHeads` on collected data from position ``start`` on; only the heads' weights change."""
    config = config or TrainConfig()
    length = data.input_ids.shape[1]
    if length - start - 1 <= heads:
        raise HeadsError(
            f"sequences of {length} tokens with the generated part from position {start + 1} leave no target for "
            f"head {heads}: generate more than {heads} new tokens"
        )
    torch.manual_seed(config.seed)
    medusa = MedusaHeads(model, heads)
    evaluation = heldout if heldout is not None else data
    untrained = rank_accuracy(medusa, evaluation, start, ranks=1)
    began = time.perf_counter()
    history = optimize(
        model,
        medusa,
        lambda idx: medusa_loss(medusa, data, idx, start),
        data.input_ids.shape[0],
        config,
        desc=f"{heads} Medusa heads",
        progress=progress,
    )
    seconds = time.perf_counter() - began
    medusa.rank_accuracy = rank_accuracy(medusa, evaluation, start)
    result = HeadsTrainResult(
        kind="medusa",
        heads=heads,
        steps=len(history),
        seconds=seconds,
        data_seconds=0.0,
        final_loss=history[-1] if history else float("nan"),
        top1=[row[0] for row in medusa.rank_accuracy],
        topk=[sum(row[:top_k]) for row in medusa.rank_accuracy],
        top_k=top_k,
        untrained_top1=[row[0] for row in untrained],
        history=history,
    )
    return medusa, result


def default_medusa_folder(model_name: str) -> Path:
    """Where ``train-heads --kind medusa`` puts heads when no ``--out`` is given: beside the model cache."""
    return model_folder("draft-heads", model_name) / "medusa"


def train_medusa(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    *,
    heads: int = 3,
    out: Path | str | None = None,
    prompts: int = 96,
    prompt_tokens: int = 64,
    new_tokens: int = 64,
    holdout: int = 16,
    config: TrainConfig | None = None,
    top_k: int = 5,
    teacher_top_k: int = 32,
    texts: list[str] | None = None,
    progress: bool = True,
) -> HeadsTrainResult:
    """Self-distil Medusa heads from the model's own greedy continuations of prompts cut from ``texts``; save them.

    ``texts`` defaults to the bundled corpora; ``out`` defaults to the folder beside the
    model cache where the ``medusa`` drafter looks. Each head learns the target's top
    ``teacher_top_k`` distribution of its token, renormalised; ``teacher_top_k=1`` is
    plain cross-entropy on the target's own token.
    """
    folder = Path(out) if out is not None else default_medusa_folder(model_name)
    claim_folder(folder, _written_medusa, what="Medusa heads", error=HeadsError)  # refuse before hours of work
    began = time.perf_counter()
    prompt_ids = training_prompts(tokenizer, texts if texts is not None else corpus_texts(), prompts, prompt_tokens)
    sequences = self_generated_sequences(model, prompt_ids, new_tokens, progress=progress)
    data = collect_head_data(model, sequences, top_k=teacher_top_k, progress=progress)
    train, held = data.split(holdout)
    data_seconds = time.perf_counter() - began
    # Position prompt_len - 1 is the first whose next token the target generated itself.
    medusa, result = train_medusa_heads(
        model, train, prompt_ids.shape[1] - 1, heads, config, heldout=held, top_k=top_k, progress=progress
    )
    result.data_seconds = data_seconds
    result.folder = str(save_medusa_heads(medusa, folder, model_name=model_name, result=result))
    return result


# -- saving and loading --------------------------------------------------------


def _written_medusa(path: Path) -> bool:
    return path.name == WEIGHTS_NAME and safetensors_marker(path) == MARKER


def save_medusa_heads(
    heads: MedusaHeads, folder: Path | str, *, model_name: str, result: HeadsTrainResult | None = None
) -> Path:
    """Write the heads' own weights and, as safetensors metadata, the model they belong to and their accuracies."""
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    folder = claim_folder(folder, _written_medusa, what="Medusa heads", error=HeadsError)
    state = {"weight": heads.weight.detach().contiguous(), "bias": heads.bias.detach().contiguous()}
    config = heads.model.config
    training = None if result is None else {k: v for k, v in asdict(result).items() if k != "history"}
    meta = {
        "format": "pt",
        "crossedge": MARKER,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "model_type": str(config.model_type),
        "vocab_size": str(config.vocab_size),
        "hidden_size": str(config.hidden_size),
        "heads": str(heads.heads),
        "lm_head_sha256": lm_head_identity(heads.model),
        "weights_sha256": weights_digest(state),
        "rank_accuracy": json.dumps(heads.rank_accuracy),
        "training": json.dumps(training),
    }
    with atomic_file(folder / WEIGHTS_NAME) as out:
        out.write(save(state, metadata=meta))
    return folder


def read_medusa_file(folder: Path | str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of saved heads; a missing, damaged or foreign file is refused in one line."""
    path = Path(folder) / WEIGHTS_NAME
    meta, state = read_marked_safetensors(
        path,
        marker=MARKER,
        version=FORMAT_VERSION,
        what="Medusa heads",
        command="crossedge specdec train-heads --model NAME --kind medusa",
        error=HeadsError,
    )
    if set(state) != {"weight", "bias"}:
        raise HeadsError(f"{path} holds {sorted(state)}, not Medusa heads' weight and bias: train the heads again")
    return meta, state


def load_medusa_heads(model: nn.Module, folder: Path | str) -> MedusaHeads:
    """Heads saved by :func:`save_medusa_heads`, refusing heads trained for another model."""
    meta, state = read_medusa_file(folder)
    trained_for = meta.get("model", "?")
    config = model.config
    for key in ("vocab_size", "hidden_size"):
        if meta.get(key) != str(getattr(config, key)):
            raise HeadsError(
                f"the Medusa heads in {folder} were trained for {trained_for!r} with {key}={meta.get(key)}, this model "
                f"has {getattr(config, key)}: train heads for it with 'crossedge specdec train-heads --kind medusa'"
            )
    if meta.get("lm_head_sha256") != lm_head_identity(model):
        raise HeadsError(
            f"the Medusa heads in {folder} were trained for {trained_for!r}, whose LM head differs from this model's: "
            f"train heads for it with 'crossedge specdec train-heads --kind medusa'"
        )
    try:
        accuracy = json.loads(meta["rank_accuracy"])
        count = int(meta["heads"])
    except (KeyError, ValueError) as exc:
        raise HeadsError(
            f"the metadata of {Path(folder) / WEIGHTS_NAME} is damaged ({exc}); train the heads again"
        ) from exc
    heads = MedusaHeads(model, count, rank_accuracy=accuracy)
    if state["weight"].shape != heads.weight.shape or state["bias"].shape != heads.bias.shape:
        raise HeadsError(f"{Path(folder) / WEIGHTS_NAME} does not hold {count} heads of size {config.hidden_size}")
    with torch.no_grad():
        heads.weight.copy_(state["weight"])
        heads.bias.copy_(state["bias"])
    return heads.eval()
