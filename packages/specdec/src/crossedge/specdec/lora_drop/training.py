"""Training LoRA-Drop adapters by self-distillation, measuring them against the full model, saving and loading.

The data are the full model's greedy continuations of prompts cut from the bundled corpora
(:func:`~crossedge.specdec.exit_head.self_generated_sequences`); the prompt is the prefill
(full), the continuation follows the refresh schedule, and the loss is the cross-entropy of
:meth:`.model.LoraDrop.forward` (which computes exactly what step-by-step dropped decoding
computes) against the full model's top-k distribution at every continuation position.
Held-out quality is the perplexity of held-out corpus text and the top-1 agreement with the
full model's greedy tokens on held-out continuations, for the full model, the dropped model
without adapters and with them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..exit_head import (
    ExitData,
    TrainConfig,
    claim_folder,
    collect_exit_data,
    corpus_texts,
    distillation_loss,
    model_folder,
    optimize,
    read_marked_safetensors,
    refuse_other_config,
    safetensors_marker,
    self_generated_sequences,
    training_prompts,
    weights_digest,
)
from ..heads.base import float_head_weight
from . import LoraDropError, full_positions
from .model import LoraDrop, decoder_parts_of

FORMAT_VERSION = "1"
WEIGHTS_NAME = "lora_drop.safetensors"
MARKER = "lora-drop"
COMMAND = "crossedge specdec train-lora-drop --model NAME"


def lora_drop_loss(drop: LoraDrop, data: ExitData, rows: Any, prefill: int, refresh: int) -> torch.Tensor:
    """Distillation loss of the dropped model at every position from ``prefill - 1`` on (the generated part)."""
    ids = data.input_ids[rows]
    logits = drop(ids, full_positions(prefill, ids.shape[1], refresh))
    start = prefill - 1
    return distillation_loss(logits[:, start:], data.top_ids[rows, start:], data.top_probs[rows, start:])


@torch.inference_mode()
def greedy_agreement(
    drop: LoraDrop, data: ExitData, prefill: int, refresh: int, *, lora: bool = True, batch_size: int = 8
) -> float:
    """Share of generated positions where the dropped model's top-1 is the full model's (teacher-forced)."""
    hits = total = 0
    for b in range(0, data.input_ids.shape[0], batch_size):
        ids = data.input_ids[b : b + batch_size]
        logits = drop(ids, full_positions(prefill, ids.shape[1], refresh), lora=lora)[:, prefill - 1 :]
        hits += int((logits.argmax(-1) == data.top_ids[b : b + batch_size, prefill - 1 :, 0]).sum())
        total += logits.shape[0] * logits.shape[1]
    return hits / max(1, total)


@torch.inference_mode()
def perplexity(
    drop: LoraDrop | None,
    model: nn.Module,
    chunks: torch.Tensor,
    prefill: int,
    refresh: int,
    *,
    lora: bool = True,
    batch_size: int = 8,
) -> float:
    """Perplexity of the tokens after the first ``prefill`` of each chunk (batch, tokens).

    ``drop=None`` scores the full model; otherwise the first ``prefill`` tokens are the prefill
    and the rest follow the refresh schedule, as lossy decoding would feed them.
    """
    nll, count = 0.0, 0
    for b in range(0, chunks.shape[0], batch_size):
        ids = chunks[b : b + batch_size]
        if drop is None:
            logits = model(input_ids=ids).logits
        else:
            logits = drop(ids, full_positions(prefill, ids.shape[1], refresh), lora=lora)
        log_q = torch.log_softmax(logits[:, prefill - 1 : -1].float(), dim=-1)
        nll -= float(log_q.gather(-1, ids[:, prefill:, None]).sum())
        count += ids[:, prefill:].numel()
    return math.exp(nll / max(1, count))


def text_chunks(tokenizer: Any, texts: list[str], count: int, length: int) -> torch.Tensor:
    """Up to ``count`` consecutive cuts of ``length`` tokens from ``texts`` (batch, length)."""
    pieces: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        pieces.extend(ids[i : i + length] for i in range(0, len(ids) - length + 1, length))
        if len(pieces) >= count:
            break
    if not pieces:
        raise LoraDropError(f"the held-out texts hold no cut of {length} tokens; give longer texts")
    return torch.tensor(pieces[:count])


@dataclass
class LoraDropTrainResult:
    """What training did, and the held-out quality of the full, dropped and dropped+LoRA models."""

    dropped: list[int]
    rank: int
    refresh: int
    steps: int
    #: Seconds of the optimisation loop (self-generation and the teacher pass are in data_seconds).
    seconds: float
    data_seconds: float
    initial_loss: float
    final_loss: float
    perplexity_full: float
    perplexity_dropped: float
    perplexity_lora: float
    agreement_dropped: float
    agreement_lora: float
    history: list[float] = field(default_factory=list)
    folder: str | None = None


def train_adapters(
    model: nn.Module,
    data: ExitData,
    dropped: Any,
    prefill: int,
    *,
    rank: int = 8,
    refresh: int = 4,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> tuple[LoraDrop, list[float]]:
    """Fresh adapters for the ``dropped`` pattern trained on ``data``; only the adapters change."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    drop = LoraDrop(model, dropped, rank)
    history = optimize(
        model,
        drop,
        lambda idx: lora_drop_loss(drop, data, idx, prefill, refresh),
        data.input_ids.shape[0],
        config,
        desc=f"LoRA-Drop r={rank}, {len(drop.dropped)} layers dropped",
        progress=progress,
    )
    return drop, history


def train_lora_drop(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    dropped: Any = "block",
    *,
    rank: int = 8,
    refresh: int = 4,
    out: Path | str | None = None,
    prompts: int = 64,
    prompt_tokens: int = 48,
    new_tokens: int = 48,
    holdout: int = 8,
    eval_chunks: int = 16,
    eval_tokens: int = 96,
    config: TrainConfig | None = None,
    teacher_top_k: int = 32,
    texts: list[str] | None = None,
    progress: bool = True,
) -> LoraDropTrainResult:
    """Self-distil LoRA-Drop adapters from the model's greedy continuations; measure and save them.

    Every fifth text is held out of the training prompts and scored for perplexity (its
    first quarter as the prefill); agreement is measured on ``holdout`` held-out continuations.
    """
    folder = Path(out) if out is not None else default_adapters_folder(model_name)
    LoraDrop(model, dropped, rank)  # refuses a bad pattern or model before the work
    claim_folder(folder, _written_lora_drop, what="LoRA-Drop adapters", error=LoraDropError)
    began = time.perf_counter()
    texts = texts if texts is not None else corpus_texts()
    train_texts = [t for i, t in enumerate(texts) if i % 5 != 4] or texts
    heldout_texts = [t for i, t in enumerate(texts) if i % 5 == 4] or texts
    prompt_ids = training_prompts(tokenizer, train_texts, prompts, prompt_tokens)
    sequences = self_generated_sequences(model, prompt_ids, new_tokens, progress=progress)
    data = collect_exit_data(model, sequences, [], top_k=teacher_top_k, progress=progress)
    train, held = data.split(holdout)
    prefill = prompt_ids.shape[1]
    data_seconds = time.perf_counter() - began
    began = time.perf_counter()
    drop, history = train_adapters(
        model, train, dropped, prefill, rank=rank, refresh=refresh, config=config, progress=progress
    )
    seconds = time.perf_counter() - began
    chunks = text_chunks(tokenizer, heldout_texts, eval_chunks, eval_tokens)
    context = max(1, eval_tokens // 4)
    result = LoraDropTrainResult(
        dropped=list(drop.dropped),
        rank=rank,
        refresh=refresh,
        steps=len(history),
        seconds=seconds,
        data_seconds=data_seconds,
        initial_loss=history[0] if history else float("nan"),
        final_loss=history[-1] if history else float("nan"),
        perplexity_full=perplexity(None, model, chunks, context, refresh),
        perplexity_dropped=perplexity(drop, model, chunks, context, refresh, lora=False),
        perplexity_lora=perplexity(drop, model, chunks, context, refresh),
        agreement_dropped=greedy_agreement(drop, held, prefill, refresh, lora=False),
        agreement_lora=greedy_agreement(drop, held, prefill, refresh),
        history=history,
    )
    result.folder = str(save_adapters(drop, folder, model_name=model_name, refresh=refresh, result=result))
    return result


# -- saving and loading --------------------------------------------------------


def default_adapters_folder(model_name: str) -> Path:
    """Where ``train-lora-drop`` puts adapters when no ``--out`` is given, and where the drafter looks."""
    return model_folder("lora-drop", model_name)


def decoder_identity(model: nn.Module) -> str:
    """sha256 of the LM head and every layer's norm weights, rounded to bfloat16 (a cheap fingerprint of a model)."""
    _, layers, norm, _ = decoder_parts_of(model)
    digest = hashlib.sha256()
    head = float_head_weight(model)
    if head is None:
        raise LoraDropError(
            f"the LM head of {type(model).__name__} has no floating-point weight; LoRA-Drop adapters check the "
            f"target's float LM head (load the adapters before quantizing, or keep the LM head in float)"
        )
    tensors = [head, norm.weight]
    for layer in layers:
        tensors.extend(p for name, p in layer.named_parameters() if "norm" in name)
    for tensor in tensors:
        digest.update(tensor.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def _written_lora_drop(path: Path) -> bool:
    return path.name == WEIGHTS_NAME and safetensors_marker(path) == MARKER


def save_adapters(
    drop: LoraDrop,
    folder: Path | str,
    *,
    model_name: str,
    refresh: int,
    result: LoraDropTrainResult | None = None,
) -> Path:
    """Write the adapters and, as safetensors metadata, the pattern, the model they belong to and how they did."""
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    folder = claim_folder(folder, _written_lora_drop, what="LoRA-Drop adapters", error=LoraDropError)
    state = {k: v.detach().contiguous() for k, v in drop.state_dict().items()}
    config = drop.model.config
    training = None if result is None else {k: v for k, v in asdict(result).items() if k != "history"}
    meta = {
        "format": "pt",
        "crossedge": MARKER,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "model_type": str(config.model_type),
        "vocab_size": str(config.vocab_size),
        "hidden_size": str(config.hidden_size),
        "num_hidden_layers": str(config.num_hidden_layers),
        "model_sha256": decoder_identity(drop.model),
        "dropped": json.dumps(list(drop.dropped)),
        "rank": str(drop.rank),
        "alpha": str(drop.alpha),
        "refresh": str(refresh),
        "weights_sha256": weights_digest(state),
        "training": json.dumps(training),
    }
    with atomic_file(folder / WEIGHTS_NAME) as out:
        out.write(save(state, metadata=meta))
    return folder


def load_adapters(model: nn.Module, folder: Path | str) -> tuple[LoraDrop, int]:
    """(adapters, the refresh they were trained for) saved by :func:`save_adapters`, refusing another model's."""
    path = Path(folder) / WEIGHTS_NAME
    meta, state = read_marked_safetensors(
        path, marker=MARKER, version=FORMAT_VERSION, what="LoRA-Drop adapters", command=COMMAND, error=LoraDropError
    )
    trained_for = meta.get("model", "?")
    again = f"train adapters for it with '{COMMAND}'"
    refuse_other_config(meta, model, what="LoRA-Drop adapters", folder=folder, again=again, error=LoraDropError)
    if meta.get("model_sha256") != decoder_identity(model):
        raise LoraDropError(
            f"the LoRA-Drop adapters in {folder} were trained for {trained_for!r}, whose weights differ from this "
            f"model's: {again}"
        )
    try:
        drop = LoraDrop(model, json.loads(meta["dropped"]), int(meta["rank"]), float(meta["alpha"]))
        refresh = int(meta["refresh"])
    except (KeyError, ValueError) as exc:
        raise LoraDropError(f"the metadata of {path} is damaged ({exc}); train the adapters again") from exc
    expected = drop.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise LoraDropError(f"{path} does not hold rank-{drop.rank} adapters for this pattern; train them again")
    drop.load_state_dict(state)
    return drop.eval(), refresh
