"""The frozen teacher's side of distillation: its greedy answers to the prompts (sequence-level KD) and its top-k
log-probabilities at every answer position (token-level KD), generated once and cached on disk.

The cache file is keyed by the recipe: a fingerprint of the teacher's config and weights, the exact prompt token
ids, the answer length, k and the stop token. Any change gives a new key, so a stale file is never read back.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossedge.core import CrossedgeError

FORMAT = "crossedge.ondevice.return-encoder.teacher/1"
CACHE_FOLDER = ("ondevice", "return-encoder")


@dataclass
class TeacherData:
    """Prompts (N, L), the teacher's answers (N, T, padded) with their lengths, and its top-k log-probabilities
    (log-softmax over the whole vocabulary) at each answer position: ids and values (N, T, k)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor
    topk_ids: torch.Tensor
    topk_logp: torch.Tensor
    key: str
    path: Path | None = None
    computed: bool = False  # True when the teacher ran for this call (False: read from the cache)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def mask(self) -> torch.Tensor:
        """(N, T) True at real answer tokens, False at padding."""
        return torch.arange(self.targets.shape[1])[None, :] < self.lengths[:, None]

    def answer(self, index: int) -> list[int]:
        """The teacher's answer to prompt ``index`` without padding."""
        return self.targets[index, : int(self.lengths[index])].tolist()

    def to_dict(self) -> dict[str, Any]:
        """What the data is, for records and reports."""
        return {
            "items": len(self),
            "input_tokens": int(self.inputs.shape[1]),
            "max_answer_tokens": int(self.targets.shape[1]),
            "mean_answer_tokens": float(self.lengths.float().mean()),
            "top_k": int(self.topk_ids.shape[2]),
            "key": self.key,
            "cache_file": str(self.path) if self.path else None,
            "teacher_ran": self.computed,
            "teacher_seconds": self.seconds,
        }


def teacher_fingerprint(model: Any) -> str:
    """A short hash of the teacher's config and of every weight tensor's name, shape and sum (cheap, and any
    retrained or different checkpoint changes it)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{float(tensor.double().sum()):.9e}".encode())
    return digest.hexdigest()[:16]


def recipe_key(fingerprint: str, inputs: torch.Tensor, *, new_tokens: int, top_k: int, eos_id: int) -> str:
    """The cache key of a teacher-data recipe."""
    recipe = {"format": FORMAT, "teacher": fingerprint, "new_tokens": new_tokens, "top_k": top_k, "eos": eos_id}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(str(tuple(inputs.shape)).encode())
    digest.update(inputs.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:24]


def default_folder() -> Path:
    """Where teacher data is cached: ``<crossedge cache>/ondevice/return-encoder``."""
    from crossedge.core.cache import cache_dir

    return cache_dir().joinpath(*CACHE_FOLDER)


@torch.no_grad()
def generate_answers(
    model: Any,
    inputs: torch.Tensor,
    *,
    new_tokens: int,
    top_k: int,
    eos_id: int,
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Greedy answers of ``model`` to every prompt (equal lengths, so batches need no padding), cut after the
    first ``eos_id``, with the top-k of the log-softmax at each answer position."""
    from crossedge.core.bench import progress_bar

    if new_tokens < 1 or top_k < 1:
        raise CrossedgeError(f"need at least one new token and top_k >= 1, got {new_tokens} and {top_k}")
    n = len(inputs)
    targets = torch.full((n, new_tokens), pad_id, dtype=torch.long)
    lengths = torch.zeros(n, dtype=torch.long)
    k = min(top_k, model.config.vocab_size)
    topk_ids = torch.zeros(n, new_tokens, k, dtype=torch.long)
    topk_logp = torch.full((n, new_tokens, k), float("-inf"))
    model.eval()
    for begin in progress_bar(range(0, n, batch_size), desc="teacher answers", enabled=progress):
        batch = inputs[begin : begin + batch_size]
        out = model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        answers = out.sequences[:, batch.shape[1] :]
        logp = torch.stack(out.logits, 1).float().log_softmax(-1)  # (b, t, vocab): raw logits of each step
        top = logp.topk(k, dim=-1)
        for row in range(len(batch)):
            ids = answers[row]
            stops = (ids == eos_id).nonzero()
            length = int(stops[0]) + 1 if len(stops) else len(ids)  # the stop token is a target: students learn to stop
            i = begin + row
            targets[i, :length], lengths[i] = ids[:length], length
            topk_ids[i, :length], topk_logp[i, :length] = top.indices[row, :length], top.values[row, :length]
    width = int(lengths.max())
    return {
        "inputs": inputs.to(torch.long).contiguous(),
        "targets": targets[:, :width].contiguous(),
        "lengths": lengths,
        "topk_ids": topk_ids[:, :width].contiguous(),
        "topk_logp": topk_logp[:, :width].contiguous(),
    }


def teacher_data(
    model: Any,
    inputs: torch.Tensor,
    *,
    new_tokens: int = 32,
    top_k: int = 32,
    eos_id: int,
    pad_id: int,
    batch_size: int = 8,
    folder: Path | str | None = None,
    progress: bool = False,
) -> TeacherData:
    """The teacher's answers and top-k log-probs for ``inputs`` (N, L): read from ``folder`` (default
    :func:`default_folder`) when this recipe was generated before, else generated and written atomically."""
    from safetensors.torch import load_file, save

    from crossedge.core.cache import atomic_file, locked

    folder = Path(folder) if folder is not None else default_folder()
    fingerprint = teacher_fingerprint(model)
    key = recipe_key(fingerprint, inputs, new_tokens=new_tokens, top_k=top_k, eos_id=eos_id)
    path = folder / f"teacher-{key}.safetensors"
    with locked(path):  # two processes asking for one recipe: one generates, the other reads its file
        tensors = _read(path, key, load_file)
        computed, seconds = False, 0.0
        if tensors is None:
            start = time.perf_counter()
            tensors = generate_answers(
                model,
                inputs,
                new_tokens=new_tokens,
                top_k=top_k,
                eos_id=eos_id,
                pad_id=pad_id,
                batch_size=batch_size,
                progress=progress,
            )
            seconds, computed = time.perf_counter() - start, True
            metadata = {"format": FORMAT, "key": key, "teacher": fingerprint, "seconds": f"{seconds:.3f}"}
            with atomic_file(path) as handle:
                handle.write(save(tensors, metadata=metadata))
    return TeacherData(**tensors, key=key, path=path, computed=computed, seconds=seconds)


def _read(path: Path, key: str, load_file: Any) -> dict[str, torch.Tensor] | None:
    from ..model_files import file_metadata

    if not path.is_file() or (file_metadata(path) or {}).get("key") != key:
        return None  # absent, or not what this recipe wrote: generate it again
    tensors = load_file(str(path))
    expected = {"inputs", "targets", "lengths", "topk_ids", "topk_logp"}
    return tensors if set(tensors) == expected else None


class TeacherState:
    """The teacher's KV cache between decode steps, with the bytes it holds."""

    def __init__(self, cache: Any):
        self.cache = cache

    def nbytes(self) -> dict[str, int]:
        """Bytes of the keys and values held by every layer."""
        total = 0
        for layer in getattr(self.cache, "layers", ()):
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return {"self_kv": total, "cross_kv": 0, "total": total}


class TeacherRunner:
    """The teacher behind the students' ``prefill``/``step`` verbs, for timing it beside them."""

    def __init__(self, model: Any):
        self.model = model.eval()

    @torch.no_grad()
    def prefill(self, inputs: torch.Tensor, capacity: int = 64) -> tuple[TeacherState, torch.Tensor]:
        """Run the prompt into a fresh KV cache; logits (B, vocab) of the first answer token."""
        from transformers import DynamicCache

        state = TeacherState(DynamicCache(config=self.model.config))
        out = self.model(input_ids=inputs, cache=state.cache, use_cache=True, logits_to_keep=1)
        return state, out.logits[:, -1]

    @torch.no_grad()
    def step(self, state: TeacherState, tokens: torch.Tensor) -> torch.Tensor:
        """One cached decode step."""
        return self.model(input_ids=tokens, cache=state.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
