"""CPU training with a fixed seed, a checkpoint per epoch and resume; teacher caches; Trans-Encoder.

Checkpoints never use pickle: model weights, optimizer tensors and the torch RNG
state go into safetensors, every scalar (step, epoch, learning rates, optimizer
hyperparameters) into JSON. A checkpoint counts only once its ``state.json`` is
written, so a run killed while saving resumes from the previous epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.contracts.loss import Loss

from .scorers import BiEncoder, CrossEncoder, UniEncoder

STATE_FILE = "state.json"
CHECKPOINT_FORMAT = "crossedge.retrieval.checkpoint/1"


class TrainingError(CrossedgeError):
    """Training could not start or resume."""


@dataclass
class TrainConfig:
    """Hyperparameters of one training run; saved beside each checkpoint."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 0
    max_steps_per_epoch: int | None = None
    grad_clip: float = 1.0
    head_lr_scale: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return asdict(self)


# ------------------------------------------------------------- optimizer I/O


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able scalars."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"state": {}, "param_groups": []}
    for idx, entry in state["state"].items():
        kept = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                kept[key] = value
        scalars["state"][str(idx)] = kept
    for group in state["param_groups"]:
        scalars["param_groups"].append({k: list(v) if isinstance(v, tuple) else v for k, v in group.items()})
    return tensors, scalars


def optimizer_from_safetensors(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer state dict from :func:`optimizer_to_safetensors` output."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in scalars["state"].items()}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    groups = []
    for group in scalars["param_groups"]:
        groups.append({k: tuple(v) if k == "betas" else v for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def _fingerprint(config: TrainConfig, n_examples: int, tag: str) -> str:
    text = json.dumps({"config": config.to_dict(), "examples": n_examples, "tag": tag}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Trainer:
    """Minibatch AdamW over a list of examples; ``loss_fn(model, examples) -> scalar``.

    The shuffle of epoch e comes from a generator seeded with ``seed + e``, and the
    global torch RNG (dropout) is saved in each checkpoint, so a resumed run
    reproduces an uninterrupted one exactly.
    """

    model: nn.Module
    examples: Sequence[Any]
    loss_fn: Callable[[nn.Module, list[Any]], torch.Tensor]
    config: TrainConfig = field(default_factory=TrainConfig)
    checkpoint_dir: Path | None = None
    tag: str = ""
    progress: bool = True
    on_step: Callable[[int, int, float], None] | None = None

    def __post_init__(self) -> None:
        if not self.examples:
            raise TrainingError("no training examples: check the training collection has judged queries")
        # A freshly initialised head needs far larger steps than pretrained encoder weights, or short
        # budgets leave it where it started.
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.startswith("head.")], "lr_scale": 1.0},
            {"params": [p for n, p in named if n.startswith("head.")], "lr_scale": self.config.head_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.examples) / self.config.batch_size)
        if self.config.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, self.config.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * self.config.epochs
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    def _lr(self, step: int) -> float:
        warmup = max(1, int(self.config.warmup_fraction * self.total_steps))
        if step < warmup:
            return self.config.lr * (step + 1) / warmup
        remaining = max(1, self.total_steps - warmup)
        return self.config.lr * max(0.0, 1.0 - (step - warmup) / remaining)

    # ------------------------------------------------------------ checkpoints

    def _dir(self, epoch: int) -> Path:
        assert self.checkpoint_dir is not None
        return self.checkpoint_dir / f"epoch-{epoch:03d}"

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, RNG and scalars for the epoch just finished."""
        from safetensors.torch import save_file

        folder = self._dir(self.epoch)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(weights, str(folder / "model.safetensors"))
        opt_tensors, opt_scalars = optimizer_to_safetensors(self.optimizer)
        opt_tensors["rng.torch"] = torch.get_rng_state()
        save_file(opt_tensors, str(folder / "optimizer.safetensors"))
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": _fingerprint(self.config, len(self.examples), self.tag),
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config.to_dict(),
            "optimizer": opt_scalars,
            "history": self.history,
        }
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        return folder

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.exists():
            return None
        done = sorted(p.parent for p in self.checkpoint_dir.glob(f"epoch-*/{STATE_FILE}"))
        return done[-1] if done else None

    def resume(self) -> bool:
        """Load the newest checkpoint if there is one; True when something was loaded."""
        from safetensors.torch import load_file

        folder = self.latest_checkpoint()
        if folder is None:
            return False
        state = json.loads((folder / STATE_FILE).read_text())
        expected = _fingerprint(self.config, len(self.examples), self.tag)
        if state.get("fingerprint") != expected:
            raise TrainingError(
                f"checkpoint {folder} was written by a run with different settings or data; "
                f"delete {self.checkpoint_dir} to start over or use the original settings"
            )
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")))
        tensors = load_file(str(folder / "optimizer.safetensors"))
        torch.set_rng_state(tensors.pop("rng.torch"))
        self.optimizer.load_state_dict(optimizer_from_safetensors(tensors, state["optimizer"]))
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        return True

    # ------------------------------------------------------------------ loop

    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs (all of them unless a checkpoint is resumed); returns per-epoch losses."""
        from tqdm.auto import tqdm

        resumed = self.step == 0 and self.checkpoint_dir is not None and self.resume()
        if not resumed and self.step == 0:
            torch.manual_seed(self.config.seed)
        self.model.train()
        while self.epoch < self.config.epochs:
            generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
            order = torch.randperm(len(self.examples), generator=generator).tolist()
            losses = []
            bar = tqdm(
                range(self.steps_per_epoch),
                desc=f"{self.tag or 'train'} epoch {self.epoch + 1}/{self.config.epochs}",
                disable=not self.progress,
                leave=False,
            )
            for i in bar:
                batch = [self.examples[j] for j in order[i * self.config.batch_size : (i + 1) * self.config.batch_size]]
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr(self.step) * group.get("lr_scale", 1.0)
                loss = self.loss_fn(self.model, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.step += 1
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if self.on_step is not None:
                    self.on_step(self.epoch, i, losses[-1])
            self.epoch += 1
            self.history.append({"epoch": self.epoch, "loss": sum(losses) / len(losses)})
            if self.checkpoint_dir is not None:
                self.save_checkpoint()
        self.model.eval()
        return self.history


# ------------------------------------------------------------ example types


@dataclass(frozen=True)
class ListExample:
    """A query with a candidate list; ``labels`` and ``teacher`` align with ``documents``."""

    query: str
    documents: tuple[str, ...]
    labels: tuple[float, ...] = ()
    teacher: tuple[float, ...] = ()


def _pad(rows: Sequence[Sequence[float]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
        mask[i, : len(row)] = True
    return values, mask


def list_scores(model: nn.Module, batch: Sequence[ListExample], temperature: float = 0.05) -> tuple[Any, Any]:
    """Student scores ``[B, K]`` and mask for a batch of lists, for any scorer kind.

    Bi-encoder cosine similarities are divided by ``temperature`` so they live on
    a logit scale comparable to the rerankers'.
    """
    width = max(len(ex.documents) for ex in batch)
    if isinstance(model, UniEncoder):
        return model([ex.query for ex in batch], [ex.documents for ex in batch])
    if isinstance(model, CrossEncoder):
        queries = [ex.query for ex in batch for _ in ex.documents]
        docs = [d for ex in batch for d in ex.documents]
        flat = model(queries, docs)
        rows, cursor = [], 0
        for ex in batch:
            rows.append(flat[cursor : cursor + len(ex.documents)])
            cursor += len(ex.documents)
        scores = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
        _, mask = _pad([[0.0] * len(ex.documents) for ex in batch], width)
        return scores, mask
    if isinstance(model, BiEncoder):
        q = model.embed([ex.query for ex in batch], max_tokens=model.max_query_tokens)
        d = model.embed([d for ex in batch for d in ex.documents])
        rows, cursor = [], 0
        for i, ex in enumerate(batch):
            rows.append(d[cursor : cursor + len(ex.documents)] @ q[i] / temperature)
            cursor += len(ex.documents)
        scores = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
        _, mask = _pad([[0.0] * len(ex.documents) for ex in batch], width)
        return scores, mask
    raise TrainingError(f"cannot compute list scores for {type(model).__name__}")


def list_loss(loss: Loss, temperature: float = 0.05) -> Callable[[nn.Module, list[ListExample]], torch.Tensor]:
    """A ``loss_fn`` for :class:`Trainer` that applies a ranking loss to candidate lists."""

    def compute(model: nn.Module, batch: list[ListExample]) -> torch.Tensor:
        scores, mask = list_scores(model, batch, temperature)
        width = scores.shape[1]
        labels = _pad([ex.labels for ex in batch], width)[0] if batch[0].labels else None
        teacher = _pad([ex.teacher for ex in batch], width)[0] if batch[0].teacher else None
        return loss(scores, teacher=teacher, labels=labels, mask=mask)

    return compute


def in_batch_contrastive(temperature: float = 0.05) -> Callable[[nn.Module, list[tuple[str, str]]], torch.Tensor]:
    """A ``loss_fn`` for bi-encoders on (query, positive) pairs: every other positive is a negative."""

    def compute(model: nn.Module, batch: list[tuple[str, str]]) -> torch.Tensor:
        q = model.embed([b[0] for b in batch], max_tokens=model.max_query_tokens)
        d = model.embed([b[1] for b in batch])
        logits = q @ d.T / temperature
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(batch), device=logits.device))

    return compute


# ------------------------------------------------------------ teacher cache


class TeacherCache:
    """Teacher scores for candidate lists, computed once and stored as safetensors plus JSON.

    The key hashes the teacher's id and the exact (query, documents) lists, so any
    student trained on the same lists reads the same scores back.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def key(self, teacher_id: str, lists: Sequence[tuple[str, Sequence[str]]]) -> str:
        """Stable id of (teacher, lists)."""
        digest = hashlib.sha256(teacher_id.encode())
        for query, docs in lists:
            digest.update(b"\x00q" + query.encode())
            for doc in docs:
                digest.update(b"\x00d" + doc.encode())
        return digest.hexdigest()[:24]

    def get_or_compute(
        self,
        teacher_id: str,
        lists: Sequence[tuple[str, Sequence[str]]],
        compute: Callable[[str, Sequence[str]], torch.Tensor],
        progress: bool = False,
    ) -> list[list[float]]:
        """Teacher scores per list: read from the cache, or computed with ``compute(query, docs)`` and stored."""
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        key = self.key(teacher_id, lists)
        tensors_path, meta_path = self.folder / f"{key}.safetensors", self.folder / f"{key}.json"
        if tensors_path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            loaded = load_file(str(tensors_path))
            scores, mask = loaded["scores"], loaded["mask"].bool()
            if meta.get("teacher") == teacher_id and scores.shape[0] == len(lists):
                return [scores[i][mask[i]].tolist() for i in range(len(lists))]
        rows = [
            compute(q, list(docs)).float().tolist()
            for q, docs in tqdm(lists, desc=f"teacher {teacher_id}", disable=not progress, leave=False)
        ]
        scores, mask = _pad(rows, max(len(r) for r in rows))
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file({"scores": scores, "mask": mask.to(torch.uint8)}, str(tensors_path))
        meta_path.write_text(json.dumps({"teacher": teacher_id, "lists": len(lists), "key": key}) + "\n")
        return rows


# ------------------------------------------------------------- Trans-Encoder


@dataclass
class TransEncoderResult:
    """What each Trans-Encoder cycle did."""

    history: list[dict[str, Any]] = field(default_factory=list)


def trans_encoder(
    bi: BiEncoder,
    lists: Sequence[tuple[str, Sequence[str]]],
    *,
    cycles: int = 1,
    loss: Loss,
    config: TrainConfig,
    temperature: float = 0.05,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> TransEncoderResult:
    """Trans-Encoder (Liu et al. 2022) without labels: the bi- and cross-encoder forms of ONE model teach each other.

    Each cycle: the bi-encoder form scores every (query, candidates) list; those
    scores are pseudo-labels distilled into the cross-encoder form (same encoder
    weights plus a head); the cross-encoder form then re-scores the lists and is
    distilled back into the bi-encoder form. ``loss`` is a listwise distillation
    loss (ListNet KL by default in the CLI). Returns per-cycle losses.
    """
    cross = CrossEncoder(
        bi.encoder,
        bi.tokenizer,
        pooling=bi.pooling,
        max_query_tokens=bi.max_query_tokens,
        max_doc_tokens=bi.max_doc_tokens,
    )
    result = TransEncoderResult()
    for cycle in range(cycles):
        bi_scores = [(bi.score(q, docs) / temperature).tolist() for q, docs in lists]
        examples = [ListExample(q, tuple(d), teacher=tuple(s)) for (q, d), s in zip(lists, bi_scores, strict=True)]
        sub = None if checkpoint_dir is None else checkpoint_dir / f"cycle-{cycle}-cross"
        tag = f"trans-cross-{cycle}"
        h1 = Trainer(cross, examples, list_loss(loss, temperature), config, sub, tag, progress).fit()
        cross_scores = [cross.score(q, docs).tolist() for q, docs in lists]
        examples = [ListExample(q, tuple(d), teacher=tuple(s)) for (q, d), s in zip(lists, cross_scores, strict=True)]
        sub = None if checkpoint_dir is None else checkpoint_dir / f"cycle-{cycle}-bi"
        h2 = Trainer(bi, examples, list_loss(loss, temperature), config, sub, f"trans-bi-{cycle}", progress).fit()
        result.history.append({"cycle": cycle + 1, "cross_loss": h1[-1]["loss"], "bi_loss": h2[-1]["loss"]})
    return result
