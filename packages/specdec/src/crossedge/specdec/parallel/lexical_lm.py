"""Lexical-unit decoding for a pretrained causal LM (``smollm2-135m``): mask embeddings plus its top layers fine-tuned.

A pretrained model has no mask token, so ``span`` learned mask embeddings are appended to the
context's embeddings; the i-th one is trained to predict the token i+1 places after the next. The
last ``tuned_layers`` decoder layers and the final norm are fine-tuned with them (the embeddings
and the LM head stay frozen), on the model's own greedy continuations of prompts cut from the
bundled corpora, with the next-token loss kept so the model's own greedy output moves little.

Decoding keeps a KV cache: each forward feeds the tokens accepted last time plus the masks, takes
the next token and the guesses after it while each passes ``tau``, then crops the masks' entries
from the cache. Nothing verifies a run; ``lexical-bench`` reports how often the output still equals
the base model's greedy output, beside tokens per forward and tokens per second.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core.errors import CrossedgeError

from ..exit_head import claim_folder, decoder_parts, read_marked_safetensors, weights_digest
from .budget import run_budget
from .lexical import confident_run

MARKER = "lexical-units"
FORMAT_VERSION = "1"
WEIGHTS_NAME = "lexical_units.safetensors"


class LexicalUnitError(CrossedgeError):
    """Lexical units could not be trained, saved, loaded or run."""


class LexicalUnits(nn.Module):
    """A causal LM with ``span`` learned mask embeddings and its last ``tuned_layers`` layers trainable."""

    def __init__(self, model: nn.Module, span: int = 3, tuned_layers: int = 2):
        super().__init__()
        if span < 1:
            raise LexicalUnitError(f"span must be at least 1, got {span}")
        _, layers, _, _ = decoder_parts(model)
        if not 0 <= tuned_layers <= len(layers):
            raise LexicalUnitError(f"tuned_layers must be between 0 and {len(layers)}, got {tuned_layers}")
        self.model = model
        self.span = span
        self.tuned_layers = tuned_layers
        embedding = model.get_input_embeddings().weight.detach()
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(span, embedding.shape[1], generator=generator) * embedding.float().std() * 0.1
        self.masks = nn.Parameter((embedding.float().mean(0) + noise).to(embedding.dtype))

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters fine-tuning changes, by stable names: masks, the tuned layers and the final norm."""
        _, layers, norm, _ = decoder_parts(self.model)
        out = {"masks": self.masks}
        first = len(layers) - self.tuned_layers
        for i in range(first, len(layers)):
            out.update({f"layers.{i}.{n}": p for n, p in layers[i].named_parameters()})
        if self.tuned_layers:
            out.update({f"norm.{n}": p for n, p in norm.named_parameters()})
        return out

    def freeze_base(self) -> None:
        """Freeze everything but :meth:`trainable`."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.trainable().values():
            p.requires_grad_(True)

    def logits(self, ids: torch.Tensor, *, masks: int | None = None, cache: Any = None) -> torch.Tensor:
        """Logits (B, L + masks, V) of ``ids`` (B, L) followed by the first ``masks`` mask embeddings."""
        masks = self.span if masks is None else masks
        embeds = self.model.get_input_embeddings()(ids)
        if masks:
            extra = self.masks[:masks].to(embeds.dtype).expand(ids.shape[0], -1, -1)
            embeds = torch.cat([embeds, extra], dim=1)
        return self.model(inputs_embeds=embeds, cache=cache, use_cache=cache is not None).logits


def unit_loss(units: LexicalUnits, rows: torch.Tensor, start: int, cut: int) -> torch.Tensor:
    """Next-token loss on the generated part before ``cut`` plus the guesses' loss after it."""
    span = units.span
    logits = units.logits(rows[:, :cut])
    vocab = logits.shape[-1]
    nxt = torch.nn.functional.cross_entropy(
        logits[:, start - 1 : cut].reshape(-1, vocab), rows[:, start : cut + 1].reshape(-1)
    )
    guesses = torch.nn.functional.cross_entropy(
        logits[:, cut:].reshape(-1, vocab), rows[:, cut + 1 : cut + 1 + span].reshape(-1)
    )
    return nxt + guesses


@dataclass
class UnitsResult:
    """What fine-tuning did: steps, time, last loss, held-out top-1 accuracy of each guess depth."""

    steps: int
    seconds: float
    final_loss: float
    depth_accuracy: list[float]
    rows: int


def fine_tune_units(
    units: LexicalUnits,
    rows: torch.Tensor,
    prompt_length: int,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 8,
    lr: float = 1e-4,
    held_out: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> UnitsResult:
    """Fine-tune on equal-length ``rows`` (prompt of ``prompt_length`` + the model's own continuation)."""
    span = units.span
    if rows.shape[1] - prompt_length < span + 2:
        raise LexicalUnitError(f"continuations of {rows.shape[1] - prompt_length} tokens are too short for span {span}")
    n_held = max(1, int(rows.shape[0] * held_out))
    train_rows, test_rows = rows[n_held:], rows[:n_held]
    units.freeze_base()
    rng = random.Random(seed)

    def loss_at(step: int, done: float) -> torch.Tensor:
        pick = torch.tensor([rng.randrange(train_rows.shape[0]) for _ in range(batch_size)])
        cut = rng.randint(prompt_length, rows.shape[1] - span - 1)
        return unit_loss(units, train_rows[pick], prompt_length, cut)

    units.train()
    run = run_budget(
        units.trainable().values(),
        loss_at,
        lr=lr,
        steps=steps,
        seconds=seconds,
        progress=progress,
        what="fine-tuning",
        error=LexicalUnitError,
    )
    units.eval()
    hits = torch.zeros(span)
    count = 0
    with torch.no_grad():
        for cut in range(prompt_length, rows.shape[1] - span - 1, max(1, (rows.shape[1] - prompt_length) // 8)):
            guess = units.logits(test_rows[:, :cut])[:, cut:].argmax(-1)
            hits += (guess == test_rows[:, cut + 1 : cut + 1 + span]).float().sum(0)
            count += test_rows.shape[0]
    accuracy = [round(float(h) / count, 4) for h in hits]
    return UnitsResult(run.steps, round(run.seconds, 1), round(run.last_loss, 4), accuracy, int(rows.shape[0]))


def save_units(units: LexicalUnits, folder: Path | str, *, model_name: str, result: UnitsResult | None) -> Path:
    """Write the masks and tuned weights as safetensors marked with the model they belong to."""
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    from ..heads.base import lm_head_identity

    folder = claim_folder(folder, lambda p: p.name == WEIGHTS_NAME, what="lexical units", error=LexicalUnitError)
    state = {name: p.detach().contiguous() for name, p in units.trainable().items()}
    meta = {
        "format": "pt",
        "crossedge": MARKER,
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "lm_head_sha256": lm_head_identity(units.model),
        "span": str(units.span),
        "tuned_layers": str(units.tuned_layers),
        "weights_sha256": weights_digest(state),
        "training": json.dumps(None if result is None else vars(result)),
    }
    with atomic_file(folder / WEIGHTS_NAME) as out:
        out.write(save(state, metadata=meta))
    return folder


def load_units(model: nn.Module, folder: Path | str) -> LexicalUnits:
    """Lexical units saved by :func:`save_units`, applied to ``model`` (refused for another model)."""
    from ..heads.base import lm_head_identity

    meta, state = read_marked_safetensors(
        Path(folder) / WEIGHTS_NAME,
        marker=MARKER,
        version=FORMAT_VERSION,
        what="lexical units",
        command="crossedge specdec train-lexical",
        error=LexicalUnitError,
    )
    if meta.get("lm_head_sha256") != lm_head_identity(model):
        raise LexicalUnitError(
            f"the lexical units in {folder} were trained for model {meta.get('model')!r}, not this one; "
            "train them for this model with 'crossedge specdec train-lexical'"
        )
    units = LexicalUnits(model, span=int(meta["span"]), tuned_layers=int(meta["tuned_layers"]))
    params = units.trainable()
    if set(params) != set(state):
        raise LexicalUnitError(
            f"{folder} holds tensors {sorted(set(state) ^ set(params))[:5]} that do not fit this model"
        )
    with torch.no_grad():
        for name, p in params.items():
            if tuple(p.shape) != tuple(state[name].shape):
                raise LexicalUnitError(
                    f"{folder}: {name} has shape {tuple(state[name].shape)}, the model {tuple(p.shape)}"
                )
            p.copy_(state[name].to(p.dtype))
    units.eval()
    return units


@dataclass
class UnitsOutput:
    """Generated ids, forwards spent and seconds taken."""

    tokens: list[int]
    forwards: int
    seconds: float


@torch.inference_mode()
def generate_units(
    units: LexicalUnits, prompt: torch.Tensor, max_new_tokens: int, tau: float, eos: Sequence[int] = ()
) -> UnitsOutput:
    """Lexical-unit decoding of ``prompt`` (1, P): the next token plus the guesses passing ``tau``, per forward."""
    from transformers import DynamicCache

    if not 0.0 < tau <= 1.0:
        raise LexicalUnitError(f"tau must be in (0, 1], got {tau}")
    start = time.perf_counter()
    cache = DynamicCache()
    logits = units.logits(prompt, masks=0, cache=cache)[0]
    out = [int(logits[-1].argmax())]
    pending = out[:]
    forwards = 1
    stop = set(eos)
    while len(out) < max_new_tokens and out[-1] not in stop:
        logits = units.logits(torch.tensor([pending]), cache=cache)[0].float()
        cache.crop(-units.span)
        forwards += 1
        run = confident_run(logits, len(pending) - 1, units.span, tau, stop, max_new_tokens - len(out))
        out += run
        pending = run
    for i, token in enumerate(out):
        if token in stop:
            out = out[: i + 1]
            break
    return UnitsOutput(out[:max_new_tokens], forwards, time.perf_counter() - start)


@torch.inference_mode()
def generate_plain(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, eos: Sequence[int] = ()) -> UnitsOutput:
    """Plain greedy decoding with a KV cache, one token per forward (the reference and the speed baseline)."""
    from transformers import DynamicCache

    start = time.perf_counter()
    cache = DynamicCache()
    ids, out, stop = prompt, [], set(eos)
    while len(out) < max_new_tokens and (not out or out[-1] not in stop):
        logits = model(input_ids=ids, cache=cache, use_cache=True).logits[0, -1]
        out.append(int(logits.argmax()))
        ids = torch.tensor([[out[-1]]])
    return UnitsOutput(out, len(out), time.perf_counter() - start)


def matching_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two outputs share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
