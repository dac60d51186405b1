"""Neural scorers over one BERT-like encoder: bi-encoder, cross-encoder and uni-encoder.

All three wrap a transformers encoder (``BertModel`` for ``minilm-l6``) and its
tokenizer. They share one save format: the encoder as safetensors through
``save_pretrained``, the tokenizer, any head weights in ``head.safetensors`` and a
``scorer.json`` that names the kind and its settings.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.contracts.scorer import Scorer as ScorerContract

from .options import HEADS

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


class Scorer(nn.Module, ScorerContract):
    """Base of the neural scorers: an encoder, its tokenizer, and ``score(query, documents)`` (core's contract)."""

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
        from crossedge.core.sources import resolve_model

        if Path(model).is_dir():
            _refuse_causal_lm(model, _architectures(Path(model)))
            loaded = _load_folder(Path(model))
        else:
            source = resolve_model(model)
            if source.task == "causal-lm":
                _refuse_causal_lm(model, [f"task {source.task}"])
            loaded = source.load()
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


def _architectures(folder: Path) -> list[str]:
    """The ``architectures`` a transformers folder's config names (empty when it names none or is unreadable)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    names = config.get("architectures") if isinstance(config, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _refuse_causal_lm(model: str, evidence: list[str]) -> None:
    """Raise when ``evidence`` (a task or architectures) says ``model`` is a causal language model."""
    causal = [e for e in evidence if e == "task causal-lm" or e.endswith(("ForCausalLM", "LMHeadModel"))]
    if causal:
        raise ScorerError(
            f"{model} is a causal language model ({causal[0]}), not a text encoder: retrieval scorers need an encoder "
            "such as minilm-l6, a sentence-transformers folder, or a folder saved by `crossedge retrieval train`"
        )


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
    if kind in ("cross-encoder", "uni-encoder"):
        meta.setdefault("head", "cls")  # written before the similarity head existed
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
        # Counted in documents, so the bar's rate is documents per second.
        bar = progress_bar(None, desc="embedding", total=len(texts), enabled=progress, unit="doc")
        with torch.inference_mode(), bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = self.embed([texts[i] for i in idx], max_tokens=limit).float().cpu()
                bar.update(len(idx))
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


class _SimilarityHead(nn.Module):
    """``scale * cos(query, document)`` over the two segments' pooled states, plus a learned attention gate.

    The gate is an additive bias, per layer and attention head, on every attention logit from one
    segment to the other. It starts at ``GATE_START`` logits: the segments barely see each other,
    so the reranker starts out ranking like the bi-encoder it was made from (with the gate shut it
    would be exactly the bi-encoder, and the gate could never learn to open), and training opens
    it as far as attending across segments helps.
    """

    GATE_START = -4.0
    # AdamW moves a parameter by about lr per step; the gate is read as GAIN * parameter so a few hundred
    # steps at a head's learning rate can move it by several logits.
    GATE_GAIN = 50.0

    def __init__(self, layers: int, heads: int, scale: float = 20.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.gate = nn.Parameter(torch.zeros(layers, heads))

    def cross_bias(self, layer: int) -> torch.Tensor:
        """Bias ``[1, heads, 1, 1]`` added to attention logits across segments in ``layer``."""
        return (self.GATE_START + self.GATE_GAIN * self.gate[layer]).view(1, -1, 1, 1)

    def forward(self, query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
        return nn.functional.cosine_similarity(query, document, dim=-1) * self.log_scale.exp()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean key mask ``[B, T]`` as the additive ``[B, 1, 1, T]`` bias BERT layers take."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, torch.finfo(dtype).min)[:, None, None, :]


class _HeadScorer(Scorer):
    """A scorer with a head over pooled states: ``similarity`` (the default) or ``cls``.

    ``similarity`` gives the query and the document each their own ``[CLS] ... [SEP]`` segment with
    positions from 0, as the bi-encoder sees them, and scores the cosine of the segments' pooled
    states times a learned scale. ``cls`` is the classic layout (one ``[CLS]``, the document as
    segment B) with a freshly initialised regression head on the ``[CLS]`` state: it knows nothing
    at the start and needs far more training.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        *,
        seed: int = 0,
        head: str = "similarity",
        pooling: str = "mean",
        **kw,
    ):
        super().__init__(encoder, tokenizer, **kw)
        if head not in HEADS:
            raise ScorerError(f"unknown head {head!r}: use {' or '.join(HEADS)}")
        self.head_kind = head
        self.pooling = pooling
        if head == "similarity":
            config = encoder.config
            self.head = _SimilarityHead(config.num_hidden_layers, config.num_attention_heads)
        else:
            self.head = _Head(_hidden_size(encoder), seed)

    @classmethod
    def from_encoder(cls, encoder, tokenizer, *, folder=None, seed=0, **kw):
        if folder is not None and kw.get("head", "similarity") == "similarity":
            kw.setdefault("pooling", pooling_mode(folder))
        return cls(encoder, tokenizer, seed=seed, **kw)

    @classmethod
    def from_scorer(cls, other: Scorer) -> _HeadScorer:
        """A scorer of this kind that starts from a copy of ``other``'s encoder and similarity head.

        The similarity head reads the same things in every layout (each segment's pooled states, a
        scale, a bias on attention across segments), so a trained cross-encoder's weights are a
        starting point for a uni-encoder: candidates keep attending to the query as the cross-encoder
        taught them; only the query's attention to the candidate is lost. The copy shares nothing
        with ``other``.
        """
        if not isinstance(other, _HeadScorer):
            raise ScorerError(
                f"a {cls.name} can start from a cross- or uni-encoder's weights, not a {other.name}'s: "
                f"a {other.name} has no head or attention gate to carry over"
            )
        if other.head_kind != "similarity":
            raise ScorerError(
                f"a {cls.name} can start from another scorer's weights only with the similarity head; "
                f"{other.name} has the {other.head_kind!r} head, whose weights read a different layout"
            )
        if getattr(other, "interaction_layers", None) is not None:
            raise ScorerError(
                f"{other.name} lets the segments interact only in its top {other.interaction_layers} layers, "
                f"which a {cls.name} cannot reproduce: start it from a cross-encoder without interaction_layers"
            )
        made = cls(
            copy.deepcopy(other.encoder),
            other.tokenizer,
            head="similarity",
            pooling=other.pooling,
            max_query_tokens=other.max_query_tokens,
            max_doc_tokens=other.max_doc_tokens,
        )
        made.load_head(other.head_state())
        made.train(other.training)
        return made

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "head": self.head_kind, "pooling": self.pooling}

    def head_state(self) -> dict[str, torch.Tensor]:
        return self.head.state_dict()

    def load_head(self, state: dict[str, torch.Tensor]) -> None:
        """Load head weights saved by :meth:`head_state`."""
        try:
            self.head.load_state_dict(state)
        except RuntimeError as exc:
            raise ScorerError(f"head weights do not fit a {self.head_kind!r} head: {exc}") from exc

    def segments(self, texts: Sequence[str], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] text [SEP]`` rows, padded: ids ``[N, T]`` and mask ``[N, T]``."""
        cls_id, sep_id, pad_id = _special_ids(self.tokenizer)
        rows = [[cls_id, *ids, sep_id] for ids in _token_ids(self.tokenizer, texts, limit)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids.to(self.device), mask.to(self.device)

    def embed_segments(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of segment rows: positions from 0, token type 0 (as the bi-encoder sees them)."""
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
        return self.encoder.embeddings(input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids))


class CrossEncoder(_HeadScorer):
    """Query and document in one sequence, attending to each other; a head on top gives the score.

    With the default ``similarity`` head the sequence is ``[CLS] query [SEP] [CLS] document [SEP]``
    and the score is the cosine of the two segments' pooled states. ``interaction_layers=m`` lets
    the two segments attend to each other only in the top ``m`` layers (the lower ones encode each
    alone, as in PreTTR, MacAvaney et al. 2020): the query's lower layers then run once per query,
    not once per pair, and with ``m = 0`` the score is exactly the bi-encoder's.
    """

    name = "cross-encoder"
    description = "query and document in one sequence with a similarity or regression head (from minilm-l6)"

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, interaction_layers: int | None = None, **kw):
        super().__init__(encoder, tokenizer, **kw)
        layers = len(self._layers()) if hasattr(encoder, "encoder") else None
        if interaction_layers is not None:
            if self.head_kind != "similarity":
                raise ScorerError("interaction_layers needs the similarity head (head='similarity')")
            if layers is None or not 0 <= interaction_layers <= layers:
                raise ScorerError(f"interaction_layers={interaction_layers} is outside 0..{layers} for this encoder")
        self.interaction_layers = interaction_layers

    def _layers(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "interaction_layers": self.interaction_layers}

    def pair_batch(self, queries: Sequence[str], documents: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids, token types and mask for query/document pairs in the classic ``cls`` layout."""
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
        if self.head_kind == "cls":
            batch = {k: v.to(self.device) for k, v in self.pair_batch(queries, documents).items()}
            hidden = self.encoder(**batch).last_hidden_state
            return self.head(hidden[:, 0])
        # Each distinct query is encoded once through the separate layers, then copied to its pairs.
        row = {q: i for i, q in enumerate(dict.fromkeys(queries))}
        unique = list(row)
        row_of = torch.tensor([row[q] for q in queries], device=self.device)
        q_ids, q_mask = self.segments(unique, self.max_query_tokens)
        d_ids, d_mask = self.segments(documents, self.max_doc_tokens)
        layers = self._layers()
        split = len(layers) - (len(layers) if self.interaction_layers is None else self.interaction_layers)
        hq, hd = self.embed_segments(q_ids), self.embed_segments(d_ids)
        q_bias, d_bias = _additive(q_mask, hq.dtype), _additive(d_mask, hd.dtype)
        for layer in layers[:split]:
            hq, hd = layer(hq, q_bias), layer(hd, d_bias)
        lq = hq.shape[1]
        hidden = torch.cat([hq[row_of], hd], dim=1)
        mask = torch.cat([q_mask[row_of], d_mask], dim=1)
        bias = _additive(mask, hidden.dtype)
        in_doc = torch.arange(hidden.shape[1], device=self.device) >= lq
        across = (in_doc[:, None] != in_doc[None, :]).to(hidden.dtype)
        for i in range(split, len(layers)):
            hidden = layers[i](hidden, bias + across * self.head.cross_bias(i))
        pooled_q = pool(hidden[:, :lq], mask[:, :lq], self.pooling)
        pooled_d = pool(hidden[:, lq:], mask[:, lq:], self.pooling)
        return self.head(pooled_q, pooled_d)

    def score(self, query: str, documents: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        documents = list(documents)
        if not documents:
            return torch.empty(0)
        # Batches of similar length pad less (candidates run from a line to the piece limit), and
        # equal batches (25 + 25, not 32 + 18) keep the last one from being a small, slow call.
        d_ids = _token_ids(self.tokenizer, documents, self.max_doc_tokens)
        order = sorted(range(len(documents)), key=lambda i: len(d_ids[i]))
        batches = -(-len(documents) // batch_size)
        size = -(-len(documents) // batches)
        out = torch.empty(len(documents))
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for start in range(0, len(documents), size):
                idx = order[start : start + size]
                out[idx] = self([query] * len(idx), [documents[i] for i in idx]).float().cpu()
        self.train(was_training)
        return out


# ----------------------------------------------------------------- uni-encoder


class UniEncoder(_HeadScorer):
    """Uni-Encoder (arXiv 2106.01263): the query once, then every candidate, in one sequence.

    Candidates share position ids and an attention mask lets the query see only
    itself and each candidate see the query and itself, never another candidate; so
    one forward pass scores the whole list and each score equals that of scoring the
    candidate alone. With the default ``similarity`` head each candidate is its own
    ``[CLS] document [SEP]`` segment with positions from 0 and the score is the cosine
    of its pooled states with the query's; with the ``cls`` head candidates start
    right after the query, as segment B, and a regression head reads their mean state.
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
            similarity = self.head_kind == "similarity"
            for j in range(len(docs)):
                cand = [cls_id, *d_flat[cursor + j], sep_id] if similarity else [*d_flat[cursor + j], sep_id]
                ids += cand
                first = 0 if similarity else len(query)
                pos += range(first, first + len(cand))
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
        types = (seg >= 0).long() if self.head_kind == "cls" else torch.zeros_like(seg)
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
            "query_member": seg == -1,
        }

    def forward(self, queries: Sequence[str], lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, K]`` for B queries with up to K candidates each, and the mask of real candidates."""
        batch = self.list_batch(queries, lists)
        dtype = next(self.encoder.parameters()).dtype
        additive = torch.zeros(batch["allowed"].shape, dtype=dtype)
        additive.masked_fill_(~batch["allowed"], torch.finfo(dtype).min)
        additive = additive.unsqueeze(1).to(self.device)
        inputs = {k: batch[k].to(self.device) for k in ("input_ids", "position_ids", "token_type_ids")}
        if self.head_kind == "cls":
            hidden = self.encoder(**inputs, attention_mask=additive).last_hidden_state
        else:
            # Candidates attend to the query through the learned cross-segment gate.
            seg = batch["query_member"].to(self.device)
            to_query = ((~seg).unsqueeze(2) & seg.unsqueeze(1)).unsqueeze(1).to(dtype)
            hidden = self.encoder.embeddings(**inputs)
            for i, layer in enumerate(self.encoder.encoder.layer):
                hidden = layer(hidden, additive + to_query * self.head.cross_bias(i))
        member = batch["member"].to(self.device)
        if self.head_kind == "cls":
            member = member.to(hidden.dtype)
            pooled = (member @ hidden) / member.sum(-1, keepdim=True).clamp(min=1.0)
            return self.head(pooled), batch["list_mask"].to(self.device)
        b, width, length = member.shape
        flat = hidden.unsqueeze(1).expand(b, width, length, -1).reshape(b * width, length, -1)
        cands = pool(flat, member.reshape(b * width, length), self.pooling).view(b, width, -1)
        query = pool(hidden, batch["query_member"].to(self.device), self.pooling)
        return self.head(query.unsqueeze(1).expand_as(cands), cands), batch["list_mask"].to(self.device)

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
        similarity = self.head_kind == "similarity"
        d_ids = [
            [cls_id, *d, sep_id] if similarity else [*d, sep_id]
            for d in _token_ids(self.tokenizer, documents, self.max_doc_tokens)
        ]
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
        first = 0 if similarity else lq
        pos = torch.arange(first, first + lc, device=device).unsqueeze(0).expand(k, lc)
        hc = emb(input_ids=c, position_ids=pos, token_type_ids=torch.full_like(c, 0 if similarity else 1))
        # Keys: the whole query, then the candidate's own real tokens.
        key_ok = torch.cat([torch.ones((k, lq), dtype=torch.bool, device=device), valid], dim=1)
        bias = torch.zeros((k, 1, 1, lq + lc), dtype=hc.dtype, device=device)
        bias.masked_fill_(~key_ok[:, None, None, :], torch.finfo(hc.dtype).min)
        for index, layer in enumerate(self.encoder.encoder.layer):
            att = layer.attention.self
            heads, size = att.num_attention_heads, att.attention_head_size

            def split(x: torch.Tensor, heads: int = heads, size: int = size) -> torch.Tensor:
                return x.view(x.shape[0], x.shape[1], heads, size).transpose(1, 2)

            kq, vq = split(att.key(hq)), split(att.value(hq))
            # The query attends to itself only: exactly the query run alone.
            ctx_q = nn.functional.scaled_dot_product_attention(split(att.query(hq)), kq, vq)
            keys = torch.cat([kq.expand(k, -1, -1, -1), split(att.key(hc))], dim=2)
            values = torch.cat([vq.expand(k, -1, -1, -1), split(att.value(hc))], dim=2)
            layer_bias = bias
            if similarity:
                gate = self.head.cross_bias(index).expand(k, -1, 1, lq)
                layer_bias = bias + torch.cat([gate, gate.new_zeros(k, gate.shape[1], 1, lc)], dim=-1)
            ctx_c = nn.functional.scaled_dot_product_attention(split(att.query(hc)), keys, values, attn_mask=layer_bias)
            new = []
            for h, ctx in ((hq, ctx_q), (hc, ctx_c)):
                ctx = ctx.transpose(1, 2).reshape(h.shape[0], h.shape[1], heads * size)
                a = layer.attention.output(ctx, h)
                new.append(layer.output(layer.intermediate(a), a))
            hq, hc = new
        if similarity:
            query = pool(hq, torch.ones(hq.shape[:2], dtype=torch.bool, device=device), self.pooling)
            return self.head(query.expand(k, -1), pool(hc, valid, self.pooling))
        member = valid.to(hc.dtype).unsqueeze(-1)
        pooled = (hc * member).sum(1) / member.sum(1).clamp(min=1.0)
        return self.head(pooled)

    def max_positions(self) -> int:
        """Longest position id the encoder accepts."""
        return int(getattr(self.encoder.config, "max_position_embeddings", 512))


SCORER_CLASSES: tuple[type[Scorer], ...] = (BiEncoder, CrossEncoder, UniEncoder)
