"""Trained early-exit heads for self-speculative drafting (LayerSkip / Mirror-SD style).

An untrained exit (final norm + LM head applied to an intermediate layer) agrees
poorly with the full model on small models, so the drafter uses a small head
trained by self-distillation: one decoder layer initialised from the model's last
layer, fed the exit layer's hidden state fused with the current token's
embedding, followed by a copy of the final norm and the model's own (frozen,
shared) LM head. Training data is the model's own greedy continuations of
prompts cut from the bundled corpora; the target at every position is the full
model's next-token distribution (top-k, renormalised).

Supported targets: Llama-family decoders (``model.model.layers``,
``model.model.rotary_emb``, ``model.model.norm``, ``model.lm_head``), which covers
SmolLM2, Llama, Qwen2 and Mistral checkpoints.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

FORMAT_VERSION = 1
WEIGHTS_NAME = "exit_head.safetensors"
META_NAME = "exit_head.json"


class ExitHeadError(CrossedgeError):
    """An exit head cannot be built, trained, saved or loaded for this model."""


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
    """(inner model, layers, final norm, LM head) of a Llama-family causal LM."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        raise ExitHeadError(
            f"{type(model).__name__} is not a Llama-family decoder (needs model.layers, rotary_emb, norm and "
            f"lm_head); early-exit drafting supports Llama, SmolLM2, Qwen2 and Mistral checkpoints"
        )
    return inner, layers, inner.norm, model.lm_head


def check_exit_layer(model: nn.Module, exit_layer: int) -> None:
    """Raise unless 1 <= exit_layer < number of layers."""
    _, layers, _, _ = decoder_parts(model)
    if not 1 <= exit_layer < len(layers):
        raise ExitHeadError(f"exit layer must be between 1 and {len(layers) - 1} for this model, got {exit_layer}")


class ExitHead(nn.Module):
    """Predicts the full model's next token from the hidden state after ``exit_layer`` layers."""

    def __init__(self, model: nn.Module, exit_layer: int):
        super().__init__()
        check_exit_layer(model, exit_layer)
        inner, layers, norm, _ = decoder_parts(model)
        self.exit_layer = exit_layer
        hidden = model.config.hidden_size
        self.fuse = nn.Linear(2 * hidden, hidden, bias=False)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, :hidden].copy_(torch.eye(hidden))
        self.layer = copy.deepcopy(layers[-1])
        # The head keeps its own one-layer KV cache, indexed 0.
        self.layer.self_attn.layer_idx = 0
        self.norm = copy.deepcopy(norm)
        self._shared = {"model": model}  # not a submodule: the LM head and embeddings stay the model's

    @property
    def model(self) -> nn.Module:
        """The target model whose embeddings and LM head the head shares."""
        return self._shared["model"]

    def hidden(
        self, exit_hidden: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """Head hidden states (before the LM head) for exit-layer states of the given tokens."""
        inner, _, _, _ = decoder_parts(self.model)
        x = self.fuse(torch.cat([exit_hidden, inner.embed_tokens(input_ids)], dim=-1))
        position_embeddings = inner.rotary_emb(x, position_ids=position_ids)
        mask = None
        if cache is not None and x.shape[1] > 1 and cache.get_seq_length() > 0:
            mask = causal_mask_with_past(x.shape[1], cache.get_seq_length(), x.dtype, x.device)
        out = self.layer(
            x,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            cache=cache,
            use_cache=cache is not None,
        )
        return self.norm(out)

    def forward(
        self, exit_hidden: torch.Tensor, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """Next-token logits."""
        return self.model.lm_head(self.hidden(exit_hidden, input_ids, position_ids, cache))


def causal_mask_with_past(q_len: int, past: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, q_len, past + q_len) mask: each query sees the past and the queries up to itself."""
    mask = torch.full((q_len, past + q_len), torch.finfo(dtype).min, dtype=dtype, device=device)
    mask = torch.triu(mask, diagonal=past + 1)
    return mask[None, None]


@dataclass
class ExitData:
    """Token sequences with exit-layer hidden states and the full model's top-k targets."""

    input_ids: torch.Tensor  # (n, T)
    hidden: dict[int, torch.Tensor]  # exit layer -> (n, T, d)
    top_ids: torch.Tensor  # (n, T, k)
    top_probs: torch.Tensor  # (n, T, k)

    def split(self, holdout: int) -> tuple[ExitData, ExitData]:
        """(train, held-out) split by sequence."""
        if not 0 < holdout < self.input_ids.shape[0]:
            raise ExitHeadError(f"cannot hold out {holdout} of {self.input_ids.shape[0]} sequences")
        cut = self.input_ids.shape[0] - holdout

        def part(sl: slice) -> ExitData:
            return ExitData(
                self.input_ids[sl], {k: v[sl] for k, v in self.hidden.items()}, self.top_ids[sl], self.top_probs[sl]
            )

        return part(slice(0, cut)), part(slice(cut, None))


@torch.inference_mode()
def collect_exit_data(
    model: nn.Module,
    sequences: torch.Tensor,
    exit_layers: Sequence[int],
    *,
    top_k: int = 32,
    batch_size: int = 8,
    progress: bool = True,
) -> ExitData:
    """Run the frozen model once over ``sequences`` and record what training needs."""
    _, layers, _, _ = decoder_parts(model)
    for layer in exit_layers:
        check_exit_layer(model, layer)
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in exit_layers}
    handles = []
    for layer in exit_layers:

        def hook(_module, _args, output, layer=layer):
            captured[layer].append((output[0] if isinstance(output, tuple) else output).float())

        handles.append(layers[layer - 1].register_forward_hook(hook))
    top_ids, top_probs = [], []
    try:
        for start in progress_bar(range(0, sequences.shape[0], batch_size), desc="teacher pass", enabled=progress):
            ids, probs = teacher_targets(model(input_ids=sequences[start : start + batch_size]).logits, top_k)
            top_ids.append(ids)
            top_probs.append(probs)
    finally:
        for handle in handles:
            handle.remove()
    return ExitData(sequences, {k: torch.cat(v) for k, v in captured.items()}, torch.cat(top_ids), torch.cat(top_probs))


#: Marker and format of the self-generated sequences kept in the cache (see :func:`cached_self_generated`).
SEQUENCES_MARKER = "self-generated-sequences"
SEQUENCES_FORMAT = "1"


@torch.inference_mode()
def self_generated_sequences(
    model: nn.Module, prompts: torch.Tensor, new_tokens: int, *, batch_size: int = 32, progress: bool = True
) -> torch.Tensor:
    """Greedy continuations of equal-length prompts (EOS suppressed so all rows stay aligned).

    Rows are generated 32 at a time by default: on smollm2-135m (2 threads, float32) that made
    87 tokens/s against 63 at 8 rows.
    """
    outputs = []
    eos = model.generation_config.eos_token_id
    for start in progress_bar(range(0, prompts.shape[0], batch_size), desc="self-generation", enabled=progress):
        batch = prompts[start : start + batch_size]
        out = model.generate(
            batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=eos if isinstance(eos, int) else (eos or [0])[0],
        )
        outputs.append(out)
    return torch.cat(outputs)


def sequences_folder() -> Path:
    """Where :func:`cached_self_generated` keeps sequences: ``<cache>/self-generated``."""
    from crossedge.core.cache import cache_dir

    return cache_dir() / "self-generated"


def cached_self_generated(
    model: nn.Module, prompts: torch.Tensor, new_tokens: int, *, progress: bool = True
) -> torch.Tensor:
    """:func:`self_generated_sequences`, kept in ``<cache>/self-generated`` keyed by the model's weights, the
    prompts and ``new_tokens``, so that training several kinds of heads on one recipe generates once.

    A cached file that is damaged or was not written here is ignored and generated again
    (the file is ours: only crossedge writes under that folder, through an atomic rename).
    """
    import hashlib

    from safetensors.torch import save

    from crossedge.core.cache import atomic_file
    from crossedge.core.measurements import module_fingerprint

    # The structure (config, module classes, dtypes) and every weight's value: two loads of one checkpoint agree.
    model_key = f"{module_fingerprint(model)}:{weights_digest(dict(model.state_dict()))}"
    key = hashlib.sha256(
        f"{model_key}:{new_tokens}:{tuple(prompts.shape)}:".encode()
        + prompts.to(torch.int64).contiguous().numpy().tobytes()
    ).hexdigest()[:32]
    path = sequences_folder() / f"{key}.safetensors"
    if path.is_file():
        try:
            _, state = read_marked_safetensors(
                path,
                marker=SEQUENCES_MARKER,
                version=SEQUENCES_FORMAT,
                what="self-generated sequences",
                command="crossedge specdec train-heads",
                error=ExitHeadError,
            )
            sequences = state.get("sequences")
            shape = (prompts.shape[0], prompts.shape[1] + new_tokens)
            if (
                sequences is not None
                and tuple(sequences.shape) == shape
                and torch.equal(sequences[:, : prompts.shape[1]], prompts.to(sequences.dtype))
            ):
                return sequences
        except ExitHeadError:
            pass  # damaged or foreign: generate again and replace it
    sequences = self_generated_sequences(model, prompts, new_tokens, progress=progress)
    state = {"sequences": sequences.contiguous()}
    meta = {
        "format": "pt",
        "crossedge": SEQUENCES_MARKER,
        "format_version": SEQUENCES_FORMAT,
        "new_tokens": str(new_tokens),
        "weights_sha256": weights_digest(state),
    }
    with atomic_file(path) as out:
        out.write(save(state, metadata=meta))
    return sequences


def _framing(tokenizer: Any, instruction: str) -> tuple[list[int], list[int]]:
    """The token ids before and after the passage of a chat-framed ``instruction``."""
    marker = "\u2063"  # an invisible separator splits the template around the passage
    if getattr(tokenizer, "chat_template", None):
        framed = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{instruction}\n\n{marker}"}], add_generation_prompt=True, tokenize=False
        )
    else:
        framed = f"{instruction}\n\n{marker}\n\nAnswer:"
    before, after = framed.split(marker)
    return tokenizer(before, add_special_tokens=False).input_ids, tokenizer(after, add_special_tokens=False).input_ids


def training_prompts(
    tokenizer: Any,
    texts: Sequence[str],
    count: int,
    prompt_tokens: int,
    *,
    instruction: str | Sequence[str] = "Explain the following passage in plain words.",
    seed: int = 0,
) -> torch.Tensor:
    """``count`` prompts of identical length: a chat-framed instruction around a cut of one of ``texts``.

    The cut is exactly ``prompt_tokens`` tokens, so prompts batch without padding. With several
    instructions the prompts take them in turn; a framing shorter than the longest keeps that
    many more passage tokens, so every prompt has the length of the longest framing plus
    ``prompt_tokens``.
    """
    instructions = [instruction] if isinstance(instruction, str) else list(instruction)
    if not instructions:
        raise ExitHeadError("training prompts need at least one instruction")
    frames = [_framing(tokenizer, text) for text in instructions]
    sizes = [len(before) + len(after) for before, after in frames]
    length = prompt_tokens + max(sizes)
    width = length - min(sizes)
    pieces: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        pieces.extend(ids[i : i + width] for i in range(0, len(ids) - width + 1, width))
    if len(pieces) < count:
        raise ExitHeadError(f"the texts give {len(pieces)} cuts of {width} tokens, {count} were asked for")
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(seed))[:count]
    rows = []
    for j, i in enumerate(order.tolist()):
        before, after = frames[j % len(frames)]
        rows.append(before + pieces[i][: length - len(before) - len(after)] + after)
    return torch.tensor(rows)


def teacher_targets(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, probabilities) of the teacher's ``top_k`` tokens at every position, renormalised to sum to one."""
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
    return ids, probs / probs.sum(-1, keepdim=True)


def distillation_loss(logits: torch.Tensor, top_ids: torch.Tensor, top_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's distribution against the teacher's renormalised top-k."""
    log_q = torch.log_softmax(logits.float(), dim=-1)
    return -(top_probs * log_q.gather(-1, top_ids)).sum(-1).mean()


@dataclass
class TrainConfig:
    """Hyperparameters of exit-head self-distillation."""

    epochs: int = 4
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.0
    seed: int = 0
    max_minutes: float = 20.0


@dataclass
class TrainResult:
    """What training did and how well the head agrees with the full model."""

    exit_layer: int
    steps: int
    seconds: float
    final_loss: float
    agreement_untrained_exit: float
    agreement_head: float
    history: list[float] = field(default_factory=list)


def _positions(length: int, rows: int) -> torch.Tensor:
    return torch.arange(length).unsqueeze(0).expand(rows, -1)


def optimize(
    model: nn.Module,
    trainable: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    rows: int,
    config: TrainConfig,
    *,
    desc: str,
    progress: bool = True,
) -> list[float]:
    """AdamW over ``trainable``'s weights with the target ``model`` frozen; returns the loss of every step.

    ``loss_of(idx)`` computes the loss of the training rows ``idx``; each epoch visits the
    ``rows`` in a seeded random order, in batches of ``config.batch_size``, with a linearly
    decaying learning rate, until the epochs or ``config.max_minutes`` run out. ``trainable``
    is left in eval mode.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_total = config.epochs * math.ceil(rows / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(1, steps_total))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[float] = []
    deadline = time.perf_counter() + config.max_minutes * 60
    trainable.train()
    bar = progress_bar(None, desc=desc, total=steps_total, enabled=progress)
    for _epoch in range(config.epochs):
        if time.perf_counter() > deadline:
            break
        order = torch.randperm(rows, generator=generator)
        for b in range(0, rows, config.batch_size):
            loss = loss_of(order[b : b + config.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            history.append(loss.item())
            bar.update(1)
            if time.perf_counter() > deadline:
                break
    bar.close()
    trainable.eval()
    return history


def train_exit_head(
    model: nn.Module,
    data: ExitData,
    exit_layer: int,
    config: TrainConfig | None = None,
    *,
    heldout: ExitData | None = None,
    progress: bool = True,
) -> tuple[ExitHead, TrainResult]:
    """Train an :class:`ExitHead` on collected data; only the head's own weights change."""
    config = config or TrainConfig()
    if exit_layer not in data.hidden:
        raise ExitHeadError(f"no hidden states were collected for exit layer {exit_layer}")
    torch.manual_seed(config.seed)
    head = ExitHead(model, exit_layer)
    n, length = data.input_ids.shape

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        # Position t's target is the full model's distribution of token t+1, defined at every position.
        logits = head(data.hidden[exit_layer][idx], data.input_ids[idx], _positions(length, len(idx)))
        return distillation_loss(logits, data.top_ids[idx], data.top_probs[idx])

    start = time.perf_counter()
    history = optimize(model, head, loss_of, n, config, desc=f"exit head @ layer {exit_layer}", progress=progress)
    evaluation = heldout if heldout is not None else data
    result = TrainResult(
        exit_layer=exit_layer,
        steps=len(history),
        seconds=time.perf_counter() - start,
        final_loss=history[-1] if history else float("nan"),
        agreement_untrained_exit=untrained_exit_agreement(model, evaluation, exit_layer),
        agreement_head=head_agreement(head, evaluation),
        history=history,
    )
    return head, result


@torch.inference_mode()
def head_agreement(head: ExitHead, data: ExitData) -> float:
    """Fraction of positions where the head's top-1 equals the full model's top-1."""
    n, length = data.input_ids.shape
    hits = 0
    for b in range(0, n, 8):
        logits = head(
            data.hidden[head.exit_layer][b : b + 8], data.input_ids[b : b + 8], _positions(length, min(8, n - b))
        )
        hits += int((logits.argmax(-1) == data.top_ids[b : b + 8, :, 0]).sum())
    return hits / (n * length)


@torch.inference_mode()
def untrained_exit_agreement(model: nn.Module, data: ExitData, exit_layer: int) -> float:
    """Agreement of the plain exit (final norm + LM head on the exit layer's state) with the full model."""
    _, _, norm, lm_head = decoder_parts(model)
    hidden = data.hidden[exit_layer]
    predicted = lm_head(norm(hidden)).argmax(-1)
    return float((predicted == data.top_ids[..., 0]).float().mean())


def expected_accepted_length(agreement: float, k: int) -> float:
    """Mean accepted length (bonus token included) if each draft position agreed independently."""
    return 1.0 + sum(agreement**i for i in range(1, k + 1))


def safetensors_marker(path: Path) -> str | None:
    """The ``crossedge`` entry of a safetensors file's metadata (what wrote it), or ``None`` when unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("crossedge")
    except (OSError, SafetensorError):
        return None


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and float32 bytes of a state dict (what saved weights are checked against)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_marked_safetensors(
    path: Path,
    *,
    marker: str,
    version: str,
    what: str,
    command: str,
    error: type[CrossedgeError],
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a file crossedge wrote with ``marker``; refused in one line when missing, damaged,
    foreign, of another format version, or not matching its ``weights_sha256``.

    ``what`` names the contents in messages ("Medusa heads"); ``command`` is the one that writes them.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise error(f"{path.parent} has no {path.name}: train {what} with '{command} --out {path.parent}'")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"cannot read {path} ({reason}); it is damaged: train the {what} again") from exc
    if meta.get("crossedge") != marker:
        raise error(f"{path} was not written by '{command}'; train {what} there")
    if meta.get("format_version") != version:
        raise error(
            f"{path} holds {what} format {meta.get('format_version')!r}; this crossedge reads {version}: "
            f"train the {what} again"
        )
    if meta.get("weights_sha256") != weights_digest(state):
        raise error(f"the weights in {path} do not match their checksum; it is damaged: train the {what} again")
    return meta, state


def refuse_other_config(
    meta: dict[str, str], model: Any, *, what: str, folder: Path | str, again: str, error: type[CrossedgeError]
) -> None:
    """Refuse a saved file whose ``vocab_size``, ``hidden_size`` or ``num_hidden_layers`` differ from ``model``'s.

    ``what`` names the contents ("medusa heads"); ``again`` says what to do ("train heads for it with ...").
    """
    trained_for = meta.get("model", "?")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
        value = getattr(model.config, key, None)
        if meta.get(key) != str(value):
            raise error(
                f"the {what} in {folder} were trained for {trained_for!r} with {key}={meta.get(key)}, this model "
                f"has {value}: {again}"
            )


def claim_folder(
    folder: Path | str, ours: Callable[[Path], bool], *, what: str, error: type[CrossedgeError] = ExitHeadError
) -> Path:
    """``folder``, created if needed, once it is clear that writing there replaces only files crossedge wrote.

    ``ours(path)`` says whether an existing entry is one this writer created; a folder
    holding anything else is refused, so files crossedge did not create are never replaced.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise error(f"{folder} is a file, not a folder; choose a folder for the {what}")
    foreign = sorted(p.name for p in folder.iterdir() if not ours(p)) if folder.is_dir() else []
    if foreign:
        raise error(
            f"{folder} holds {', '.join(foreign)} that crossedge did not write; it never writes over files it did "
            f"not create: choose a new or empty folder for the {what}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _written_exit_head(path: Path) -> bool:
    if path.name == WEIGHTS_NAME:
        return safetensors_marker(path) == "exit-head"
    if path.name == META_NAME:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and "exit_layer" in meta and "format_version" in meta
    return False


def save_exit_head(head: ExitHead, folder: Path | str, *, model_name: str, result: TrainResult | None = None) -> Path:
    """Write the head's weights (safetensors) and a versioned JSON description, into a folder holding nothing else."""
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    folder = claim_folder(folder, _written_exit_head, what="exit head")
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_file(folder / WEIGHTS_NAME) as out:
        out.write(save(state, metadata={"format": "pt", "crossedge": "exit-head"}))
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "model_type": head.model.config.model_type,
        "hidden_size": head.model.config.hidden_size,
        "num_hidden_layers": head.model.config.num_hidden_layers,
        "exit_layer": head.exit_layer,
        "training": None if result is None else {k: v for k, v in asdict(result).items() if k != "history"},
    }
    with atomic_file(folder / META_NAME) as out:
        out.write(json.dumps(meta, indent=2).encode())
    return folder


def load_exit_head(model: nn.Module, folder: Path | str) -> ExitHead:
    """Load a head saved by :func:`save_exit_head`, refusing one trained for another model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_NAME).read_text())
    except FileNotFoundError as exc:
        raise ExitHeadError(
            f"{folder} has no {META_NAME}: train a head with 'crossedge specdec train-exit --model NAME "
            f"--exit-layer L --out {folder}'"
        ) from exc
    except ValueError as exc:
        raise ExitHeadError(f"{folder / META_NAME} is not valid JSON ({exc}); train the head again") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExitHeadError(
            f"{folder} holds exit-head format {meta.get('format_version')!r}; this crossedge reads {FORMAT_VERSION}"
        )
    config = model.config
    for key in ("hidden_size", "num_hidden_layers"):
        if meta.get(key) != getattr(config, key):
            raise ExitHeadError(
                f"the exit head in {folder} was trained for a model with {key}={meta.get(key)}, this model has "
                f"{getattr(config, key)}; train one for this model"
            )
    head = ExitHead(model, int(meta["exit_layer"]))
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, SafetensorError) as exc:
        raise ExitHeadError(
            f"cannot read {folder / WEIGHTS_NAME} ({exc}); it is damaged: train the head again"
        ) from exc
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExitHeadError(
            f"{folder / WEIGHTS_NAME} does not match the head's shape (missing {missing}, unexpected {unexpected})"
        )
    head.eval()
    return head


def model_folder(kind: str, model_name: str) -> Path:
    """``<cache>/<kind>/<model>``: where trained heads of one kind live for one model, beside the model cache."""
    from crossedge.core.cache import cache_dir

    return cache_dir() / kind / model_name.replace("/", "--")


def target_name(target: Any) -> str:
    """The name a loaded target is cached under (the last part of its ``name_or_path``)."""
    return Path(str(getattr(target, "name_or_path", "") or "model")).name


def default_head_folder(model_name: str, exit_layer: int) -> Path:
    """Where ``train-exit`` puts a head when no ``--out`` is given: beside the model cache."""
    return model_folder("exit-heads", model_name) / f"layer-{exit_layer}"


def corpus_texts(
    names: Sequence[str] = ("pydoc-topics", "common-licenses"), *, exclude: Collection[str] = ()
) -> list[str]:
    """Texts of the bundled corpora (built at run time from files on this machine), but for the
    documents whose ids are in ``exclude``."""
    from crossedge.core.datasets import get_dataset

    texts = []
    for name in names:
        try:
            texts.extend(d.text for d in get_dataset(name).documents() if d.id not in exclude)
        except CrossedgeError:
            continue  # a corpus whose files are absent on this machine
    if not texts:
        raise ExitHeadError(f"none of the corpora {list(names)} has text on this machine")
    return texts


def train_exit_heads(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    exit_layers: Sequence[int],
    *,
    out: Path | str | None = None,
    prompts: int = 96,
    prompt_tokens: int = 64,
    new_tokens: int = 64,
    holdout: int = 16,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> list[tuple[Path, TrainResult]]:
    """Self-distil one head per exit layer from the model's own generations; save each.

    With several exit layers the generations and the teacher pass are shared. ``out``
    names the folder for a single layer; with several, one sub-folder per layer.
    """
    for layer in exit_layers:
        check_exit_layer(model, layer)
    prompt_ids = training_prompts(tokenizer, corpus_texts(), prompts, prompt_tokens)
    sequences = self_generated_sequences(model, prompt_ids, new_tokens, progress=progress)
    data = collect_exit_data(model, sequences, exit_layers, progress=progress)
    train, held = data.split(holdout)
    results = []
    for layer in exit_layers:
        head, result = train_exit_head(model, train, layer, config, heldout=held, progress=progress)
        if out is None:
            folder = default_head_folder(model_name, layer)
        else:
            folder = Path(out) if len(exit_layers) == 1 else Path(out) / f"layer-{layer}"
        save_exit_head(head, folder, model_name=model_name, result=result)
        results.append((folder, result))
    return results
