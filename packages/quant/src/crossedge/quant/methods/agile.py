"""``agile``: Agile-Quant (Shen et al., 2024): power-of-two scales, 8- or 4-bit activations, prompt token pruning.

Every scale is a power of two, stored as an int8 exponent: an activation is quantized by an
exponent subtraction and the int32 sums are rescaled by an exponent addition (a shift), never a
division or a float multiply by an arbitrary scale. The weights are guided by calibration
activations twice: each layer picks the smoothing strength (power-of-two smoothing factors, so
folding them costs nothing either) that gives the lowest output error on its calibration inputs,
and each output channel picks between the exponent that holds its largest weight and the one
below it (clipping) by the same output error. :func:`prune_prompt_tokens` drops the least
attended prompt tokens after one layer during prefill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..api import Quantizer, Replacements
from ..calibration import collect_stats
from ..config import QuantConfigError, check
from ..modules import Int8DynamicLinear
from ..primitives import EPS
from .w8a8 import W8A8Config, smoothing_factors, with_matmuls

#: Smoothing strengths each layer tries (``None``: no smoothing), scored by output error.
ALPHAS: tuple[float | None, ...] = (None, 0.25, 0.5, 0.75)
#: Calibration rows kept per layer to score the choices.
SAMPLE_ROWS = 512


@dataclass(kw_only=True)
class AgileQuantConfig(W8A8Config):
    """Int8 weights and 8- or 4-bit dynamic per-token activations, every scale a power of two.

    ``act_bits=4`` keeps the codes in [-7, 7] and runs them on the same int8 matmuls.
    ``guide=false`` skips the calibration-guided smoothing and clipping (plain power-of-two W8A8).
    """

    method: ClassVar[str] = "agile"

    act_bits: int = 8
    guide: bool = True

    def validate(self) -> None:
        super().validate()
        check(self.act_bits in (4, 8), f"agile act_bits must be 4 or 8, got {self.act_bits}")
        check(self.act_granularity == "per_token", "agile scales activations per token: keep act_granularity=per_token")
        check(
            self.weight_granularity == "per_channel",
            "agile scales weights per channel: keep weight_granularity=per_channel",
        )
        check(not self.fake, "agile has no fake path: its integer kernel is exact (drop fake=true)")


def pow2_exponent(absmax: torch.Tensor, qmax: int) -> torch.Tensor:
    """The smallest k (int32) with ``absmax / 2**k <= qmax``: the power-of-two scale that clips nothing."""
    k = torch.ceil(torch.log2(absmax.float().clamp(min=EPS) / qmax))
    # log2 rounds; step k up where 2**k still falls short of absmax / qmax.
    k = torch.where(torch.ldexp(torch.full_like(k, float(qmax)), k) < absmax, k + 1, k)
    return k.clamp(-126, 127).to(torch.int32)


def pow2_quantize(x: torch.Tensor, exponent: torch.Tensor, qmax: int) -> torch.Tensor:
    """Codes of ``x / 2**exponent`` rounded and clamped to [-qmax, qmax] (float, exact)."""
    return torch.round(torch.ldexp(x, -exponent)).clamp_(-qmax, qmax)


def rescale_exponent_add(acc: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``acc * 2**exponent`` by adding to the float32 exponent field (what a shift does in hardware).

    Exact and equal to the float multiply wherever the result stays a normal float32; zero sums stay zero.
    """
    f = acc.float()
    bits = f.view(torch.int32) + (exponent.to(torch.int32) << 23)
    return torch.where(f == 0, f, bits.view(torch.float32))


class AgileQuantLinear(Int8DynamicLinear):
    """W8A8 (or W8A4) with power-of-two scales: int8 weight codes, int8 per-channel exponents ``wexp``.

    Activations get a per-token exponent at run time, codes ``round(x / 2**k)`` in [-qmax, qmax];
    the sums run on :class:`Int8DynamicLinear`'s matmuls and are rescaled by ``2**(k + wexp)``,
    which is exact, so the kernel equals :meth:`reference_forward` bit for bit on the exact matmuls.
    """

    kind = "agile_pow2"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        act_bits: int = 8,
        smooth: bool = False,
        matmul: str = "int_mm",
    ):
        self.act_bits = act_bits
        super().__init__(in_features, out_features, bias, "per_token", smooth, None, matmul)
        self.register_buffer("wexp", torch.zeros(out_features, dtype=torch.int8))
        self._derive_operands()

    @property
    def qmax(self) -> int:
        """Largest activation code: 127 or 7."""
        return 2 ** (self.act_bits - 1) - 1

    @property
    def kernel(self) -> str:
        return super().kernel.replace("int8 activations", f"int{self.act_bits} pow2 activations")

    def _derive_operands(self) -> None:
        # wscale (2**wexp, exact) is derived, not saved: the exponents are the stored form.
        wexp = self._buffers.get("wexp")
        if wexp is not None:
            self._buffers.pop("wscale", None)
            self.register_buffer("wscale", torch.ldexp(torch.ones(self.out_features), wexp.int()), persistent=False)
            self._non_persistent_buffers_set.add("wscale")
        super()._derive_operands()

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "act_bits": self.act_bits,
            "smooth": self.inv_smooth is not None,
            "matmul": self.matmul,
        }

    @classmethod
    def from_codes(
        cls,
        qweight: torch.Tensor,
        wexp: torch.Tensor,
        bias: torch.Tensor | None,
        act_bits: int,
        smooth: torch.Tensor | None = None,
    ) -> AgileQuantLinear:
        """A layer from int8 codes, per-channel exponents and an optional power-of-two smoothing vector."""
        out_features, in_features = qweight.shape
        module = cls(in_features, out_features, bias is not None, act_bits, smooth is not None)
        module.qweight.copy_(qweight)
        module.wexp.copy_(wexp.to(torch.int8))
        if smooth is not None:
            module.inv_smooth.copy_(1.0 / smooth.float())
        if bias is not None:
            module.bias.copy_(bias.detach().float())
        module._derive_operands()
        return module

    def _quantized_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = x.reshape(-1, self.in_features).float()
        if self.inv_smooth is not None:
            x2 = x2 * self.inv_smooth
        exponent = pow2_exponent(x2.abs().amax(-1, keepdim=True), self.qmax)
        q = pow2_quantize(x2, exponent, self.qmax).to(torch.int8)
        if self.track_kernel:
            self.kernel_zeros += int((q == 0).sum())
            self.kernel_total += q.numel()
        return q, torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)


@dataclass
class LayerChoice:
    """What the activation guidance chose for one layer."""

    alpha: float | None
    clipped: int
    error: float


def guided_codes(
    weight: torch.Tensor, sample: torch.Tensor | None, col_absmax: torch.Tensor | None, act_bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, LayerChoice]:
    """Codes, exponents and smoothing of one layer, chosen by output error on the calibration ``sample``."""
    w = weight.detach().float()
    if sample is None:
        q, e = _clip_choice(w, None)
        return q, e, None, LayerChoice(None, 0, float("nan"))
    reference = sample @ w.t()
    best = None
    qmax = 2 ** (act_bits - 1) - 1
    for alpha in ALPHAS:
        smooth = None
        if alpha is not None:
            # Rounded to powers of two, dividing the inputs and folding into the weights are exact shifts.
            smooth = torch.exp2(torch.round(torch.log2(smoothing_factors(col_absmax, w, alpha))))
        ws = w * smooth[None, :] if smooth is not None else w
        xs = sample / smooth if smooth is not None else sample
        h = xs.t() @ xs
        q, e = _clip_choice(ws, h)
        xe = pow2_exponent(xs.abs().amax(-1, keepdim=True), qmax)
        xq = torch.ldexp(pow2_quantize(xs, xe, qmax), xe)
        y = xq @ torch.ldexp(q.float(), e[:, None].int()).t()
        err = float((y - reference).pow(2).mean())
        if best is None or err < best[3].error:
            clipped = int((e < _clip_choice(ws, None)[1]).sum())
            best = (q, e, smooth, LayerChoice(alpha, clipped, err))
    assert best is not None
    return best


def _clip_choice(w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel, the exponent that holds its maximum or the one below it, whichever errs less under ``h``."""
    top = pow2_exponent(w.abs().amax(1), 127)
    q_top = pow2_quantize(w, top[:, None], 127)
    if h is None:
        return q_top.to(torch.int8), top
    low = top - 1
    q_low = pow2_quantize(w, low[:, None], 127)
    errs = []
    for q, e in ((q_top, top), (q_low, low)):
        d = torch.ldexp(q, e[:, None]) - w
        errs.append(((d @ h) * d).sum(1))
    pick = errs[1] < errs[0]
    return torch.where(pick[:, None], q_low, q_top).to(torch.int8), torch.where(pick, low, top)


class AgileQuantQuantizer(Quantizer):
    """Agile-Quant: power-of-two weight and activation scales, 8- or 4-bit activations, calibration-guided."""

    name = "agile"
    description = (
        "Agile-Quant: int8 weights, 8/4-bit per-token activations, power-of-two scales (rescale by shift), "
        "smoothing and clipping chosen by output error on calibration activations"
    )
    config_class = AgileQuantConfig
    produces = (AgileQuantLinear,)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: Any, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, AgileQuantConfig)
        samples, absmax = {}, {}
        if config.guide:
            stats = collect_stats(model, calibration or [], targets, absmax=True, sample_rows=SAMPLE_ROWS)
            samples = {name: s.sample for name, s in stats.items()}
            absmax = {name: s.col_absmax for name, s in stats.items()}
        out: dict[str, nn.Module] = {}
        chosen: dict[str, Any] = {}
        for name, linear in targets.items():
            q, e, smooth, choice = guided_codes(linear.weight, samples.get(name), absmax.get(name), config.act_bits)
            if int(e.min()) < -128 or int(e.max()) > 127:
                raise QuantConfigError(f"{name}: a weight exponent left int8's range; the layer cannot be agile")
            out[name] = AgileQuantLinear.from_codes(q, e, linear.bias, config.act_bits, smooth)
            chosen[name] = {"alpha": choice.alpha, "clipped_channels": choice.clipped}
        found = with_matmuls(out, config)
        if config.guide:
            found.details["guidance"] = chosen
        return found


# ---------------------------------------------------------------------------------------------
# Token pruning for long prompts


def attention_importance(
    layer: nn.Module, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """How much attention each token receives in ``layer`` (mean over heads and later queries), ``[batch, seq]``."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, t, _ = x.shape
    head_dim = attn.head_dim
    q = attn.q_proj(x).view(b, t, -1, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, head_dim).transpose(1, 2)
    cos, sin = cos_sin
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(head_dim)
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    # A token can only be attended by the queries at or after it: average over those, not all t.
    received = probs.sum((1, 2))
    return received / torch.arange(t, 0, -1, device=x.device, dtype=received.dtype)


def keep_indices(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` most important positions of each row, always the last one, in their original order."""
    score = importance.clone()
    score[:, -1] = float("inf")
    return score.topk(keep, dim=-1).indices.sort(-1).values


def prune_prompt_tokens(
    model: nn.Module, input_ids: torch.Tensor, *, keep_ratio: float, after_layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``input_ids`` dropping the least attended tokens after decoder layer ``after_layer``.

    Returns the last token's logits ``[batch, vocab]`` and the kept positions ``[batch, kept]``.
    Kept tokens keep their original positions (rotary phases), so the rest of the layers see a
    shorter, gapped prompt; the last token is always kept. Llama-style decoders only
    (``model.model.layers`` with ``self_attn.q_proj``/``k_proj``).
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise QuantConfigError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(layers[0], "self_attn") or not hasattr(layers[0].self_attn, "q_proj"):
        raise QuantConfigError(f"token pruning needs a Llama-style decoder; {type(model).__name__} is not one")
    if not 0 <= after_layer < len(layers):
        raise QuantConfigError(f"after_layer must be in [0, {len(layers) - 1}], got {after_layer}")
    b, t = input_ids.shape
    keep = max(1, min(t, round(t * keep_ratio)))
    with torch.inference_mode():
        hidden = inner.embed_tokens(input_ids)
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        kept = positions
        for i, layer in enumerate(layers):
            cos_sin = inner.rotary_emb(hidden, positions)
            if i == after_layer and keep < hidden.shape[1]:
                kept_local = keep_indices(attention_importance(layer, hidden, cos_sin), keep)
                hidden = hidden.gather(1, kept_local[..., None].expand(-1, -1, hidden.shape[-1]))
                positions = positions.gather(1, kept_local)
                kept = positions
                cos_sin = inner.rotary_emb(hidden, positions)
            hidden = _run_layer(layer, hidden, positions, cos_sin)
        hidden = inner.norm(hidden[:, -1:])
        logits = model.lm_head(hidden)[:, -1]
    return logits.float(), kept


def _run_layer(layer: nn.Module, hidden: torch.Tensor, positions: torch.Tensor, cos_sin: Any) -> torch.Tensor:
    t = hidden.shape[1]
    mask = torch.full((t, t), float("-inf"), dtype=hidden.dtype, device=hidden.device).triu(1)[None, None]
    out = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
    return out[0] if isinstance(out, tuple) else out
