"""``jlcm``: jointly learnable codebooks and mappings, weights stored as indices into codebooks shared by layers.

Each weight row is cut into sub-vectors of ``dim`` consecutive weights; a sub-vector is stored as
one uint8 index into a codebook of ``codebook_size`` centroids, times a per-(row, group) scale.
One codebook serves a whole group of layers (by default every layer of one kind, such as all
thirty ``self_attn.q_proj``); each layer maps the shared codebook through its own small affine
mapping (``C @ A_l + b_l``, ``dim x dim`` plus ``dim`` numbers) and has its own scales, so the
codebook is stored once and the per-layer parts cost next to nothing. At ``dim=2`` and 256
centroids the indices are 4 bits per weight; bf16 scales per 128 weights add 0.125 bits.

Learning, per codebook group, on the Hessians ``H = X^T X / n`` of one float calibration pass:

1. scales start at the RMS of each (row, group); the codebook starts as a k-means of the scaled
   sub-vectors of every layer of the group, each weighted by its columns' Hessian diagonal;
2. indices are assigned column pair by column pair with GPTQ-style error feedback (the remaining
   columns absorb each choice's error through the inverse Hessian's Cholesky factor, and the
   nearest centroid is measured in that factor's metric, as in GPTVQ, van Baalen et al. 2024);
3. with the indices fixed, the codebook, every layer's mapping and scales are refined jointly by
   Adam on the sum over layers of the relative output error ``tr(E H E^T) / tr(W H W^T)``;
4. with ``rounds > 1`` steps 2-3 repeat with the learned codebook (index re-assignment).

The module's forward is a lookup kernel: it gathers the mapped codebook rows by index into the
float weight and runs an fp32 linear; nothing is cached, so the bytes stay those of the indices.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from crossedge.core.bench import progress_bar

from ..api import Quantizer, Replacements
from ..calibration import collect_stats
from ..config import QuantConfig, check
from ..modules import QuantizedLinear
from ..primitives import EPS
from .gptq import inverse_hessian_factor

SHARE_RULES = ("kind", "all", "none")


@dataclass(kw_only=True)
class JLCMConfig(QuantConfig):
    """JLCM: vector-quantized weights on codebooks shared across layers, with learned per-layer mappings."""

    method: ClassVar[str] = "jlcm"

    #: Weights per sub-vector (one index each).
    dim: int = 2
    #: Centroids per codebook (at most 256: indices are uint8).
    codebook_size: int = 256
    #: Input columns per scale (a multiple of ``dim``); 0 means one scale per output row.
    group_size: int = 128
    #: Which layers share a codebook: ``kind`` (same name once the layer number is removed), ``all``, ``none``.
    share: str = "kind"
    #: Lloyd iterations of the k-means initialisation, and how many sub-vectors it samples per group.
    kmeans_iters: int = 15
    kmeans_samples: int = 65536
    #: Adam steps of the joint refinement per round (0: k-means codebook and assignment only).
    steps: int = 40
    lr: float = 0.01
    #: Assignment + refinement rounds (indices re-assigned with the learned codebook each round).
    rounds: int = 2
    #: GPTQ-style error feedback during assignment (false: nearest centroid per sub-vector).
    compensate: bool = True
    damp: float = 0.01
    block_size: int = 128
    seed: int = 0

    def validate(self) -> None:
        check(1 <= self.dim <= 8, f"jlcm dim must be 1..8, got {self.dim}")
        check(
            2 <= self.codebook_size <= 256,
            f"jlcm codebook_size must be 2..256 (uint8 indices), got {self.codebook_size}",
        )
        check(
            self.group_size >= 0 and self.group_size % self.dim == 0,
            f"jlcm group_size must be 0 (per row) or a positive multiple of dim={self.dim}, got {self.group_size}",
        )
        check(self.share in SHARE_RULES, f"jlcm share must be one of {', '.join(SHARE_RULES)}, got {self.share!r}")
        check(1 <= self.kmeans_iters <= 1000, f"jlcm kmeans_iters must be 1..1000, got {self.kmeans_iters}")
        check(self.kmeans_samples >= self.codebook_size, "jlcm kmeans_samples must be at least codebook_size")
        check(0 <= self.steps <= 100_000, f"jlcm steps must be 0..100000, got {self.steps}")
        check(0.0 < self.lr < 1.0, f"jlcm lr must be in (0, 1), got {self.lr}")
        check(1 <= self.rounds <= 10, f"jlcm rounds must be 1..10, got {self.rounds}")
        check(0.0 < self.damp < 1.0, f"jlcm damp must be in (0, 1), got {self.damp}")
        check(self.block_size >= 1, f"jlcm block_size must be positive, got {self.block_size}")
        check(not self.fake, "jlcm has no fake-quant path: its lookup kernel already runs on the reconstructed weight")

    def nominal_bits(self) -> int:
        """Index bits per weight, rounded (4 at dim=2 and 256 centroids)."""
        return round(math.log2(self.codebook_size) / self.dim)


class JLCMLinear(QuantizedLinear):
    """A linear layer whose weight is uint8 indices into a (shared) codebook, a per-layer mapping and scales.

    ``W[o, j*dim:(j+1)*dim] = scale[o, group(j)] * (codebook @ mapping[:dim] + mapping[dim])[indices[o, j]]``.
    The ``codebook`` buffer is the same tensor in every layer of ``codebook_group``: a saved folder
    stores it once (serialization records the other layers' names as tied aliases) and loading
    puts the one loaded tensor back into every layer, so :func:`crossedge.quant.weight_bytes`
    counts it once. :meth:`weight_bytes` of one module counts its view of the codebook as well.
    """

    kind = "jlcm"

    @property
    def kernel(self) -> str:
        return f"codebook lookup (gather of {self.codebook_size}x{self.dim} centroids by uint8 index) + fp32 linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        dim: int = 2,
        codebook_size: int = 256,
        group_size: int = 128,
        codebook_group: str = "",
    ):
        super().__init__(in_features, out_features, bias)
        if dim < 1 or in_features % dim:
            raise ValueError(f"in_features {in_features} is not a multiple of dim {dim}")
        if not 2 <= codebook_size <= 256:
            raise ValueError(f"codebook_size must be 2..256 for uint8 indices, got {codebook_size}")
        if group_size < 0 or group_size % dim:
            raise ValueError(f"group_size must be 0 or a multiple of dim {dim}, got {group_size}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.group_size = group_size
        self.codebook_group = codebook_group
        groups = 1 if group_size == 0 else -(-in_features // group_size)
        identity = torch.cat([torch.eye(dim), torch.zeros(1, dim)])
        self.register_buffer("codebook", torch.zeros(codebook_size, dim))
        self.register_buffer("mapping", identity)
        self.register_buffer("indices", torch.zeros(out_features, in_features // dim, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.bfloat16))

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "dim": self.dim,
            "codebook_size": self.codebook_size,
            "group_size": self.group_size,
            "codebook_group": self.codebook_group,
        }

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Take the loaded codebook tensor itself rather than a copy: serialization hands every layer
        # of a group the same tensor (one stored copy plus tied aliases), so the layers share it again.
        loaded = state_dict.get(prefix + "codebook")
        if (
            isinstance(loaded, torch.Tensor)
            and loaded.shape == self.codebook.shape
            and loaded.dtype == self.codebook.dtype
        ):
            self.codebook = loaded

    def mapped_codebook(self) -> torch.Tensor:
        """This layer's centroids ``[codebook_size, dim]``: the shared codebook through its affine mapping."""
        return self.codebook @ self.mapping[: self.dim] + self.mapping[self.dim]

    def dequantized_weight(self) -> torch.Tensor:
        rows = self.mapped_codebook()[self.indices.long()].reshape(self.out_features, self.in_features)
        return rows * expand_scales(self.scales.float(), self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()
        return self._finish(nn.functional.linear(x2, self.dequantized_weight()), x)


def expand_scales(scales: torch.Tensor, group_size: int, in_features: int) -> torch.Tensor:
    """Scales ``[out, groups]`` repeated to one per weight ``[out, in]``."""
    if group_size == 0:
        return scales.expand(-1, in_features)
    return scales.repeat_interleave(group_size, dim=1)[:, :in_features]


def codebook_group_name(name: str, share: str) -> str:
    """The codebook a layer uses under a share rule: its name without layer numbers, ``all``, or itself."""
    if share == "all":
        return "all"
    if share == "none":
        return name
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)


@dataclass
class _Layer:
    """One layer's working state while its group learns."""

    name: str
    weight: torch.Tensor
    hessian: torch.Tensor
    scales: torch.Tensor  # [out, groups] fp32
    indices: torch.Tensor | None = None
    norm: float = 1.0  # tr(W H W^T), the relative error's denominator


def _initial_scales(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    out, cols = weight.shape
    if group_size == 0:
        rms = weight.pow(2).mean(1, keepdim=True).sqrt()
    else:
        pad = -cols % group_size
        padded = nn.functional.pad(weight, (0, pad)).reshape(out, -1, group_size)
        counts = torch.full((padded.shape[1],), float(group_size))
        counts[-1] = group_size - pad
        rms = (padded.pow(2).sum(-1) / counts).sqrt()
    return rms.clamp(min=EPS).to(torch.bfloat16).float()  # on the grid the saved scales use


def _subvectors(layer: _Layer, dim: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled sub-vectors ``[n, dim]`` of a layer and their k-means weights (Hessian diagonal times scale^2)."""
    out, cols = layer.weight.shape
    scale = expand_scales(layer.scales, group_size, cols)
    vectors = (layer.weight / scale).reshape(-1, dim)
    importance = (layer.hessian.diagonal().clamp(min=0)[None, :] * scale.pow(2)).reshape(-1, dim).mean(-1)
    return vectors, importance


def weighted_kmeans(
    vectors: torch.Tensor, weights: torch.Tensor, k: int, iters: int, generator: torch.Generator
) -> torch.Tensor:
    """Centroids ``[k, dim]`` by Lloyd's iterations on weighted points, started from distinct sampled points."""
    n = vectors.shape[0]
    start = torch.randperm(n, generator=generator)[:k]
    centroids = vectors[start].clone()
    if centroids.shape[0] < k:  # fewer points than centroids: repeat with jitter
        extra = centroids[torch.randint(0, centroids.shape[0], (k - centroids.shape[0],), generator=generator)]
        centroids = torch.cat([centroids, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
    w = weights.clamp(min=EPS)
    for _ in range(iters):
        nearest = _nearest(vectors, centroids)
        mass = torch.zeros(k).index_add_(0, nearest, w)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, vectors * w[:, None])
        empty = mass <= EPS
        centroids = torch.where(empty[:, None], centroids, sums / mass.clamp(min=EPS)[:, None])
        if empty.any():  # re-seed empty clusters at the points farthest from their centroid
            far = (vectors - centroids[nearest]).pow(2).sum(-1).argsort(descending=True)[: int(empty.sum())]
            centroids[empty] = vectors[far]
    return centroids


def _nearest(vectors: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    found = []
    sq = centroids.pow(2).sum(-1)
    for start in range(0, vectors.shape[0], chunk):
        part = vectors[start : start + chunk]
        found.append((sq[None, :] - 2 * part @ centroids.t()).argmin(-1))
    return torch.cat(found)


def reconstruct(
    indices: torch.Tensor, codebook: torch.Tensor, mapping: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The float weight a layer stores (differentiable in codebook, mapping and scales)."""
    dim = codebook.shape[1]
    centroids = codebook @ mapping[:dim] + mapping[dim]
    out, pairs = indices.shape
    rows = centroids[indices.long()].reshape(out, pairs * dim)
    return rows * expand_scales(scales, group_size, pairs * dim)


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """``tr(E H E^T)`` for ``E = W - W_hat``: the squared layer output error per calibration token."""
    error = weight - approx
    return ((error @ hessian) * error).sum()


@torch.no_grad()
def assign_indices(
    layer: _Layer, centroids: torch.Tensor, *, group_size: int, compensate: bool, damp: float, block_size: int
) -> torch.Tensor:
    """uint8 indices ``[out, in/dim]`` for one layer, sub-vector by sub-vector, left to right.

    With ``compensate`` each choice's error is spread over the columns not yet chosen, as GPTQ
    does for scalar rounding, and the nearest centroid is measured in the metric of the inverse
    Hessian's Cholesky block of the sub-vector's columns (the error that remains after that
    compensation); without it, the nearest centroid in the scaled Euclidean metric.
    """
    dim = centroids.shape[1]
    w = layer.weight.clone()
    out, cols = w.shape
    scale = expand_scales(layer.scales, group_size, cols)
    indices = torch.zeros(out, cols // dim, dtype=torch.uint8)
    if not compensate:
        return _nearest((w / scale).reshape(-1, dim), centroids).reshape(out, -1).to(torch.uint8)
    h = layer.hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    hinv = inverse_hessian_factor(h, damp)
    block_size = max(dim, block_size // dim * dim)  # blocks hold whole sub-vectors
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1 = w[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        for i in range(0, end - start, dim):
            col = start + i
            s = scale[:, col : col + 1]  # sub-vectors never straddle a scale group (group_size % dim == 0)
            metric = torch.linalg.inv(hinv1[i : i + dim, i : i + dim])
            target = w1[:, i : i + dim] @ metric
            moved = centroids @ metric
            distance = s * s * moved.pow(2).sum(-1)[None, :] - 2 * s * (target @ moved.t())
            chosen = distance.argmin(-1)
            indices[:, col // dim] = chosen.to(torch.uint8)
            q = s * centroids[chosen]
            for t in range(dim):
                e = (w1[:, i + t] - q[:, t]) / hinv1[i + t, i + t]
                w1[:, i + t :] -= e[:, None] * hinv1[i + t, i + t :][None, :]
                err1[:, i + t] = e
        w[:, end:] -= err1 @ hinv[start:end, end:]
    return indices


@dataclass
class GroupResult:
    """A learned codebook group: the shared codebook and each layer's mapping, scales and indices."""

    codebook: torch.Tensor
    mappings: dict[str, torch.Tensor]
    scales: dict[str, torch.Tensor]
    indices: dict[str, torch.Tensor]
    details: dict[str, Any]


def _relative_error(layers: list[_Layer], codebook, mappings, scales, group_size: int) -> torch.Tensor:
    total = torch.zeros(())
    for layer in layers:
        approx = reconstruct(layer.indices, codebook, mappings[layer.name], scales[layer.name], group_size)
        total = total + output_error(layer.weight, approx, layer.hessian) / layer.norm
    return total / len(layers)


def learn_group(layers: list[_Layer], config: JLCMConfig, generator: torch.Generator) -> GroupResult:
    """k-means initialisation, then rounds of assignment and joint refinement, for one codebook group."""
    dim, k, gs = config.dim, config.codebook_size, config.group_size
    for layer in layers:
        layer.scales = _initial_scales(layer.weight, gs)
        layer.norm = float(output_error(layer.weight, torch.zeros_like(layer.weight), layer.hessian).clamp(min=EPS))
    pooled = [_subvectors(layer, dim, gs) for layer in layers]
    vectors = torch.cat([v for v, _ in pooled])
    # Each layer's importances sum to one, so deep layers' larger activations do not claim the codebook.
    weights = torch.cat([w / w.sum().clamp(min=EPS) * len(w) for _, w in pooled])
    if vectors.shape[0] > config.kmeans_samples:
        pick = torch.randperm(vectors.shape[0], generator=generator)[: config.kmeans_samples]
        vectors, weights = vectors[pick], weights[pick]
    codebook = weighted_kmeans(vectors, weights, k, config.kmeans_iters, generator)
    identity = torch.cat([torch.eye(dim), torch.zeros(1, dim)])
    mappings = {layer.name: identity.clone() for layer in layers}
    scales = {layer.name: layer.scales.clone() for layer in layers}
    with torch.no_grad():
        for layer in layers:
            layer.indices = assign_indices(layer, codebook, group_size=gs, compensate=False, damp=config.damp,
                                           block_size=config.block_size)  # fmt: skip
        error_kmeans = float(_relative_error(layers, codebook, mappings, scales, gs))
    history: list[dict[str, float]] = []
    best: tuple | None = None
    for _ in range(config.rounds):
        with torch.no_grad():
            for layer in layers:
                layer.scales = scales[layer.name]
                centroids = codebook @ mappings[layer.name][:dim] + mappings[layer.name][dim]
                layer.indices = assign_indices(layer, centroids, group_size=gs, compensate=config.compensate,
                                               damp=config.damp, block_size=config.block_size)  # fmt: skip
            assigned = float(_relative_error(layers, codebook, mappings, scales, gs))
        codebook, mappings, scales, learned = _refine(layers, codebook, mappings, scales, config)
        history.append({"assigned": assigned, "learned": learned})
        if best is None or learned < best[0]:
            best = (learned, len(history), codebook, mappings, scales, {layer.name: layer.indices for layer in layers})
    # A re-assignment round can land worse than the one before it: keep the best round's state.
    _, kept_round, codebook, mappings, scales, indices = best
    for layer in layers:
        layer.indices = indices[layer.name]
    # Scales are stored in bf16: round them and report the error of what is saved.
    scales = {name: s.to(torch.bfloat16).float() for name, s in scales.items()}
    with torch.no_grad():
        final = float(_relative_error(layers, codebook, mappings, scales, gs))
    details = {
        "layers": len(layers),
        "error_kmeans": error_kmeans,
        "rounds": history,
        "kept_round": kept_round,
        "error_final": final,
    }
    return GroupResult(
        codebook.detach().clone(),
        {n: m.detach().clone() for n, m in mappings.items()},
        {n: s.to(torch.bfloat16) for n, s in scales.items()},
        {layer.name: layer.indices for layer in layers},
        details,
    )


def _refine(layers: list[_Layer], codebook, mappings, scales, config: JLCMConfig):
    """Adam on the codebook, the mappings and the (log) scales with the indices fixed; keeps the best step."""
    with torch.no_grad():
        best = float(_relative_error(layers, codebook, mappings, scales, config.group_size))
    if config.steps == 0:
        return codebook, mappings, scales, best
    c = codebook.clone().requires_grad_(True)
    maps = {n: m.clone().requires_grad_(True) for n, m in mappings.items()}
    base = {n: s.clone() for n, s in scales.items()}
    logs = {n: torch.zeros_like(s, requires_grad=True) for n, s in scales.items()}
    optimizer = torch.optim.Adam([c, *maps.values(), *logs.values()], lr=config.lr)
    kept = (codebook, mappings, scales)
    for _ in range(config.steps):
        optimizer.zero_grad()
        current = {n: base[n] * logs[n].exp() for n in base}
        loss = _relative_error(layers, c, maps, current, config.group_size)
        if float(loss.detach()) < best:
            best = float(loss.detach())
            kept = (c.detach().clone(), {n: m.detach().clone() for n, m in maps.items()},
                    {n: s.detach().clone() for n, s in current.items()})  # fmt: skip
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        current = {n: base[n] * logs[n].exp() for n in base}
        last = float(_relative_error(layers, c, maps, current, config.group_size))
        if last < best:
            best = last
            kept = (c.detach().clone(), {n: m.detach().clone() for n, m in maps.items()}, current)
    return (*kept, best)


class JLCMQuantizer(Quantizer):
    """JLCM: layers share learned codebooks of weight sub-vectors; each layer keeps a mapping, scales, indices."""

    name = "jlcm"
    description = "JLCM: vector quantization on codebooks shared across layers, jointly learned with per-layer mappings"
    config_class = JLCMConfig
    produces = (JLCMLinear,)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, JLCMConfig)
        chosen = {}
        for name, linear in targets.items():
            if linear.in_features % config.dim:
                warnings.warn(
                    f"{name}: in_features {linear.in_features} is not a multiple of dim {config.dim}; kept in float",
                    stacklevel=2,
                )
            else:
                chosen[name] = linear
        if not chosen:
            return Replacements({})
        stats = collect_stats(model, calibration, chosen, absmax=False, hessian=True)
        groups: dict[str, list[str]] = {}
        for name in chosen:
            groups.setdefault(codebook_group_name(name, config.share), []).append(name)
        generator = torch.Generator().manual_seed(config.seed)
        out: dict[str, nn.Module] = {}
        group_details = {}
        for group, names in progress_bar(groups.items(), desc="jlcm codebooks", total=len(groups)):
            layers = [
                _Layer(n, chosen[n].weight.detach().float(), stats[n].mean_hessian().float(), torch.empty(0))
                for n in names
            ]
            found = learn_group(layers, config, generator)
            for n in names:
                stats[n].hessian = None
            shared = found.codebook
            for n in names:
                linear = chosen[n]
                module = JLCMLinear(
                    linear.in_features, linear.out_features, linear.bias is not None,
                    config.dim, config.codebook_size, config.group_size, group,
                )  # fmt: skip
                module.codebook = shared  # one tensor for the whole group
                module.mapping.copy_(found.mappings[n])
                module.indices.copy_(found.indices[n])
                module.scales.copy_(found.scales[n])
                if linear.bias is not None:
                    module.bias.copy_(linear.bias.detach().float())
                out[n] = module
            group_details[group] = found.details
        return Replacements(out, {"codebooks": group_details, "bytes": jlcm_bytes(out.values())})


def jlcm_bytes(modules: Any) -> int:
    """Bytes of JLCM layers with each shared codebook counted once."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for buffer in module.buffers():
            key = buffer.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += buffer.numel() * buffer.element_size()
    return total
