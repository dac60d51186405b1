"""Neural scorers over one BERT-like encoder: bi-encoder, cross-encoder and uni-encoder.

All three wrap a transformers encoder (``BertModel`` for ``minilm-l6``) and its
tokenizer. They share one save format: the encoder as safetensors through
``save_pretrained``, the tokenizer, any head weights in ``head.safetensors`` and a
``scorer.json`` that names the kind and its settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError

SCORER_FILE = "scorer.json"
HEAD_FILE = "head.safetensors"
DEFAULT_MODEL = "minilm-l6"


class ScorerError(CrossedgeError):
    """A scorer could not be built, loaded or applied."""


def pooling_mode(folder: Path | str | None) -> str:
    """The pooling a sentence-transformers folder declares (``mean``, ``cls``, ``max``); ``mean`` if none."""
    if folder is None:
        return "mean"
    folder = Path(folder)
    modules_path = folder / "modules.json"
    if not modules_path.exists():
        return "mean"
    modules = json.loads(modules_path.read_text())
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text())
            for key, mode in (
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_max_tokens", "max"),
            ):
                if config.get(key):
                    return mode
            raise ScorerError(f"{folder} asks for a pooling crossedge does not implement: {config}")
    return "mean"


def declares_normalize(folder: Path | str | None) -> bool:
    """True when a sentence-transformers folder ends with a Normalize module."""
    if folder is None or not (Path(folder) / "modules.json").exists():
        return True
    modules = json.loads((Path(folder) / "modules.json").read_text())
    return any(m.get("type", "").endswith("Normalize") for m in modules)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool token states ``[B, T, H]`` over the positions where ``mask`` ``[B, T]`` is true."""
    mask_f = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(mask_f == 0, torch.finfo(hidden.dtype).min).max(1).values
    raise ScorerError(f"unknown pooling {mode!r}: use mean, cls or max")


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise ScorerError("the tokenizer needs cls (or bos), sep (or eos) and pad tokens for pair scoring")
    return cls_id, sep_id, pad_id


def _token_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)
    return [list(ids) for ids in encoded["input_ids"]]


class Scorer(nn.Module):
    """Base of the neural scorers: an encoder, its tokenizer, and ``score(query, documents)``."""

    name: str = ""
    category: str = "scorer"
    description: str = ""

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, max_query_tokens: int = 32, max_doc_tokens: int = 128):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_query_tokens = max_query_tokens
        self.max_doc_tokens = max_doc_tokens

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights live."""
        return next(self.encoder.parameters()).device

    def settings(self) -> dict[str, Any]:
        """Settings written to ``scorer.json`` and passed back to ``__init__`` on load."""
        return {"max_query_tokens": self.max_query_tokens, "max_doc_tokens": self.max_doc_tokens}

    def head_state(self) -> dict[str, torch.Tensor]:
        """Weights outside the encoder (empty for the bi-encoder)."""
        return {}

    def score(self, query: str, documents: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Relevance of each document to the query, higher is better (no gradients)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- building

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, seed: int = 0, **settings: Any) -> Scorer:
        """Build from a crossedge model name (``minilm-l6``) or a folder; heads start from ``seed``."""
        from crossedge.core import load_model

        loaded = load_model(model) if not Path(model).is_dir() else _load_folder(Path(model))
        return cls.from_encoder(loaded.model, loaded.tokenizer, folder=loaded.path, seed=seed, **settings)

    @classmethod
    def from_encoder(cls, encoder: nn.Module, tokenizer: Any, *, folder: Path | None = None, seed: int = 0, **kw):
        """Wrap an already loaded encoder; ``folder`` supplies its sentence-transformers config."""
        raise NotImplementedError

    def save(self, folder: Path | str) -> Path:
        """Write encoder, tokenizer, head and ``scorer.json`` as safetensors and JSON."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head_state().items()}
        if head:
            save_file(head, str(folder / HEAD_FILE))
        (folder / SCORER_FILE).write_text(json.dumps({"kind": self.name, **self.settings()}, indent=2) + "\n")
        return folder


def _load_folder(folder: Path) -> Any:
    from crossedge.core.sources import ModelSource, load_folder

    source = ModelSource()
    source.name = folder.name
    source.task = "encoder"
    try:
        return load_folder(folder.name, folder, source, task="encoder")
    except CrossedgeError:
        raise
    except Exception as exc:
        raise ScorerError(f"could not load an encoder from {folder}: {exc}") from exc


def load_scorer(folder: Path | str) -> Scorer:
    """Load a scorer written by :meth:`Scorer.save`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / SCORER_FILE
    if not meta_path.exists():
        raise ScorerError(f"{folder} has no {SCORER_FILE}: it was not written by crossedge retrieval's Scorer.save")
    meta = json.loads(meta_path.read_text())
    kind = meta.pop("kind")
    classes = {c.name: c for c in (BiEncoder, CrossEncoder, UniEncoder)}
    if kind not in classes:
        raise ScorerError(f"{meta_path} names scorer kind {kind!r}; known: {', '.join(classes)}")
    loaded = _load_folder(folder)
    scorer = classes[kind].from_encoder(loaded.model, loaded.tokenizer, folder=None, **meta)
    if (folder / HEAD_FILE).exists():
        scorer.load_head(load_file(str(folder / HEAD_FILE)))
    scorer.eval()
    return scorer


# ------------------------------------------------------------------ bi-encoder


class BiEncoder(Scorer):
    """Query and document embedded separately, pooled and normalized; relevance is their dot product."""

    name = "bi-encoder"
    description = "sentence embeddings (minilm-l6, mean pooling, normalized) searched by brute force"

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, pooling: str = "mean", normalize: bool = True, **kw):
        super().__init__(encoder, tokenizer, **kw)
        self.pooling = pooling
        self.normalize = normalize

    @classmethod
    def from_encoder(cls, encoder, tokenizer, *, folder=None, seed=0, **kw) -> BiEncoder:
        if folder is not None:
            kw.setdefault("pooling", pooling_mode(folder))
            kw.setdefault("normalize", declares_normalize(folder))
        return cls(encoder, tokenizer, **kw)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "pooling": self.pooling, "normalize": self.normalize}

    def load_head(self, state: dict[str, torch.Tensor]) -> None:
        """The bi-encoder has no head; present for a uniform load path."""

    def embed(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Embeddings ``[N, H]`` with gradients (training)."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=(max_tokens or self.max_doc_tokens) + 2,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.encoder(**batch).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"].bool(), self.pooling)
        return nn.functional.normalize(vectors, dim=-1) if self.normalize else vectors

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, queries: bool = False, progress: bool = False
    ) -> torch.Tensor:
        """Embeddings ``[N, H]`` without gradients, in batches sorted by length for speed."""
        from crossedge.core.bench import progress_bar

        texts = list(texts)
        limit = self.max_query_tokens if queries else self.max_doc_tokens
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), _hidden_size(self.encoder))
        was_training = self.training
        self.eval()
        starts = range(0, len(texts), batch_size)
        with torch.inference_mode():
            for start in progress_bar(starts, desc="embedding", total=len(starts), enabled=progress):
                idx = order[start : start + batch_size]
                out[idx] = self.embed([texts[i] for i in idx], max_tokens=limit).float().cpu()
        self.train(was_training)
        return out

    def score(self, query: str, documents: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        q = self.encode([query], queries=True)
        d = self.encode(documents, batch_size=batch_size)
        return (d @ q[0]).float()


def _hidden_size(encoder: nn.Module) -> int:
    return int(encoder.config.hidden_size)


# ---------------------------------------------------------------- cross-encoder


class _Head(nn.Module):
    def __init__(self, hidden: int, seed: int):
        super().__init__()
        # torch's default Linear init (not BERT's 0.02) gives scores of order one, so a head trained for a few
        # dozen steps moves; the seed makes it reproducible without touching the global RNG stream.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.dense = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(pooled))).squeeze(-1)


class _HeadScorer(Scorer):
    """A scorer with a small regression head over a pooled representation."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, seed: int = 0, **kw):
        super().__init__(encoder, tokenizer, **kw)
        self.head = _Head(_hidden_size(encoder), seed)

    @classmethod
    def from_encoder(cls, encoder, tokenizer, *, folder=None, seed=0, **kw):
        return cls(encoder, tokenizer, seed=seed, **kw)

    def head_state(self) -> dict[str, torch.Tensor]:
        return self.head.state_dict()

    def load_head(self, state: dict[str, torch.Tensor]) -> None:
        """Load head weights saved by :meth:`head_state`."""
        self.head.load_state_dict(state)


class CrossEncoder(_HeadScorer):
    """``[CLS] query [SEP] document [SEP]`` in one sequence; a head on the [CLS] state gives the score."""

    name = "cross-encoder"
    description = "query and document in one sequence with a regression head (initialised from minilm-l6)"

    def pair_batch(self, queries: Sequence[str], documents: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids, token types and mask for query/document pairs."""
        cls_id, sep_id, pad_id = _special_ids(self.tokenizer)
        q_ids = _token_ids(self.tokenizer, queries, self.max_query_tokens)
        d_ids = _token_ids(self.tokenizer, documents, self.max_doc_tokens)
        rows = [([cls_id, *q, sep_id], [*d, sep_id]) for q, d in zip(q_ids, d_ids, strict=True)]
        length = max(len(a) + len(b) for a, b in rows)
        ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for i, (a, b) in enumerate(rows):
            ids[i, : len(a) + len(b)] = torch.tensor(a + b)
            types[i, len(a) : len(a) + len(b)] = 1
            mask[i, : len(a) + len(b)] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}

    def forward(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        """Scores ``[N]`` for N (query, document) pairs, with gradients."""
        batch = {k: v.to(self.device) for k, v in self.pair_batch(queries, documents).items()}
        hidden = self.encoder(**batch).last_hidden_state
        return self.head(hidden[:, 0])

    def score(self, query: str, documents: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        documents = list(documents)
        was_training = self.training
        self.eval()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(documents), batch_size):
                chunk = documents[start : start + batch_size]
                parts.append(self([query] * len(chunk), chunk).float().cpu())
        self.train(was_training)
        return torch.cat(parts) if parts else torch.empty(0)


# ----------------------------------------------------------------- uni-encoder


class UniEncoder(_HeadScorer):
    """Uni-Encoder (arXiv 2106.01263): the query once, then every candidate, in one sequence.

    Candidates share position ids (each starts right after the query) and an
    attention mask lets the query see only itself and each candidate see the query
    and itself, never another candidate; so one forward pass scores the whole list
    and each score equals that of scoring the candidate alone. The score comes from
    a head on the mean of each candidate's token states.
    """

    name = "uni-encoder"
    description = "query and all candidates in one pass, shared positions, candidates masked from each other"

    def list_batch(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """Ids, position ids, token types, a 4D additive mask and candidate membership for query lists."""
        cls_id, sep_id, pad_id = _special_ids(self.tokenizer)
        q_ids = _token_ids(self.tokenizer, queries, self.max_query_tokens)
        flat = [d for docs in lists for d in docs]
        d_flat = _token_ids(self.tokenizer, flat, self.max_doc_tokens) if flat else []
        rows, cursor = [], 0
        for q, docs in zip(q_ids, lists, strict=True):
            query = [cls_id, *q, sep_id]
            ids, pos, seg = list(query), list(range(len(query))), [-1] * len(query)
            for j in range(len(docs)):
                cand = [*d_flat[cursor + j], sep_id]
                ids += cand
                pos += range(len(query), len(query) + len(cand))
                seg += [j] * len(cand)
            cursor += len(docs)
            rows.append((ids, pos, seg))
        length = max(len(r[0]) for r in rows)
        width = max(len(docs) for docs in lists)
        b = len(rows)
        ids = torch.full((b, length), pad_id, dtype=torch.long)
        pos = torch.zeros((b, length), dtype=torch.long)
        seg = torch.full((b, length), -2, dtype=torch.long)  # -2 marks padding
        for i, (r_ids, r_pos, r_seg) in enumerate(rows):
            ids[i, : len(r_ids)] = torch.tensor(r_ids)
            pos[i, : len(r_pos)] = torch.tensor(r_pos)
            seg[i, : len(r_seg)] = torch.tensor(r_seg)
        rows_seg, cols_seg = seg.unsqueeze(2), seg.unsqueeze(1)
        # Everyone real sees the query; candidates also see their own tokens; padding sees only itself
        # so no row of the softmax is empty.
        allowed = (cols_seg == -1) & (rows_seg != -2)
        allowed |= (rows_seg == cols_seg) & (rows_seg >= 0)
        allowed |= torch.eye(length, dtype=torch.bool).unsqueeze(0) & (rows_seg == -2)
        types = (seg >= 0).long()
        member = torch.zeros((b, width, length), dtype=torch.bool)
        for j in range(width):
            member[:, j] = seg == j
        return {
            "input_ids": ids,
            "position_ids": pos,
            "token_type_ids": types,
            "allowed": allowed,
            "member": member,
            "list_mask": member.any(-1),
        }

    def forward(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, K]`` for B queries with up to K candidates each, and the mask of real candidates."""
        batch = self.list_batch(queries, lists)
        dtype = next(self.encoder.parameters()).dtype
        additive = torch.zeros(batch["allowed"].shape, dtype=dtype)
        additive.masked_fill_(~batch["allowed"], torch.finfo(dtype).min)
        hidden = self.encoder(
            input_ids=batch["input_ids"].to(self.device),
            position_ids=batch["position_ids"].to(self.device),
            token_type_ids=batch["token_type_ids"].to(self.device),
            attention_mask=additive.unsqueeze(1).to(self.device),
        ).last_hidden_state
        member = batch["member"].to(self.device, hidden.dtype)
        pooled = (member @ hidden) / member.sum(-1, keepdim=True).clamp(min=1.0)
        return self.head(pooled), batch["list_mask"].to(self.device)

    def score(self, query: str, documents: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        documents = list(documents)
        if not documents:
            return torch.empty(0)
        was_training = self.training
        self.eval()
        parts = []
        fast = self.supports_blockwise()
        with torch.inference_mode():
            for start in range(0, len(documents), batch_size):
                chunk = documents[start : start + batch_size]
                if fast:
                    parts.append(self.score_blockwise(query, chunk).float().cpu())
                else:
                    scores, _ = self([query], [chunk])
                    parts.append(scores[0].float().cpu())
        self.train(was_training)
        return torch.cat(parts)

    def supports_blockwise(self) -> bool:
        """True for BERT-style encoders whose layers :meth:`score_blockwise` can drive directly."""
        enc = self.encoder
        return (
            getattr(enc.config, "model_type", None) == "bert"
            and getattr(enc.config, "position_embedding_type", "absolute") == "absolute"
            and hasattr(enc, "embeddings")
            and hasattr(enc, "encoder")
        )

    def score_blockwise(self, query: str, documents: Sequence[str]) -> torch.Tensor:
        """The same scores as the masked one-pass forward, computed block by block (inference only).

        Under the Uni-Encoder mask the query never sees the candidates, so its states at every
        layer are those of the query alone: they are computed once, and each candidate attends to
        the query's keys and values plus its own. This does exactly the masked computation
        without the attention between candidates that the mask would throw away.
        """
        cls_id, sep_id, pad_id = _special_ids(self.tokenizer)
        q_ids = [cls_id, *_token_ids(self.tokenizer, [query], self.max_query_tokens)[0], sep_id]
        d_ids = [[*d, sep_id] for d in _token_ids(self.tokenizer, documents, self.max_doc_tokens)]
        lq, lc, k = len(q_ids), max(len(d) for d in d_ids), len(d_ids)
        device = self.device
        q = torch.tensor([q_ids], device=device)
        c = torch.full((k, lc), pad_id, dtype=torch.long, device=device)
        valid = torch.zeros((k, lc), dtype=torch.bool, device=device)
        for i, d in enumerate(d_ids):
            c[i, : len(d)] = torch.tensor(d)
            valid[i, : len(d)] = True
        emb = self.encoder.embeddings
        hq = emb(input_ids=q, position_ids=torch.arange(lq, device=device).unsqueeze(0),
                 token_type_ids=torch.zeros_like(q))  # fmt: skip
        pos = torch.arange(lq, lq + lc, device=device).unsqueeze(0).expand(k, lc)
        hc = emb(input_ids=c, position_ids=pos, token_type_ids=torch.ones_like(c))
        # Keys: the whole query, then the candidate's own real tokens.
        key_ok = torch.cat([torch.ones((k, lq), dtype=torch.bool, device=device), valid], dim=1)
        bias = torch.zeros((k, 1, 1, lq + lc), dtype=hc.dtype, device=device)
        bias.masked_fill_(~key_ok[:, None, None, :], torch.finfo(hc.dtype).min)
        for layer in self.encoder.encoder.layer:
            att = layer.attention.self
            heads, size = att.num_attention_heads, att.attention_head_size

            def split(x: torch.Tensor, heads: int = heads, size: int = size) -> torch.Tensor:
                return x.view(x.shape[0], x.shape[1], heads, size).transpose(1, 2)

            kq, vq = split(att.key(hq)), split(att.value(hq))
            # The query attends to itself only: exactly the query run alone.
            ctx_q = nn.functional.scaled_dot_product_attention(split(att.query(hq)), kq, vq)
            keys = torch.cat([kq.expand(k, -1, -1, -1), split(att.key(hc))], dim=2)
            values = torch.cat([vq.expand(k, -1, -1, -1), split(att.value(hc))], dim=2)
            ctx_c = nn.functional.scaled_dot_product_attention(split(att.query(hc)), keys, values, attn_mask=bias)
            new = []
            for h, ctx in ((hq, ctx_q), (hc, ctx_c)):
                ctx = ctx.transpose(1, 2).reshape(h.shape[0], h.shape[1], heads * size)
                a = layer.attention.output(ctx, h)
                new.append(layer.output(layer.intermediate(a), a))
            hq, hc = new
        member = valid.to(hc.dtype).unsqueeze(-1)
        pooled = (hc * member).sum(1) / member.sum(1).clamp(min=1.0)
        return self.head(pooled)

    def max_positions(self) -> int:
        """Longest position id the encoder accepts."""
        return int(getattr(self.encoder.config, "max_position_embeddings", 512))


SCORER_CLASSES: tuple[type[Scorer], ...] = (BiEncoder, CrossEncoder, UniEncoder)
