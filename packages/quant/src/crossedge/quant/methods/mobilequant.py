"""``mobilequant``: equivalent transforms and activation ranges learned per block, for static integer activations.

Written from the MobileQuant paper (Tan et al., 2024): mobile NPUs take int8 activations with one
static scale per tensor, fixed before deployment, so a layer cannot rescale each token as W8A8's
dynamic per-token quantization does. What makes static scales work is learned jointly, block by
block, by minimizing the block's output error on calibration data:

- an equivalent transform per input (SmoothQuant's per-channel scales ``s``, initialized by its
  formula and then learned): ``x W^T = (x / s)(W s)^T``; layers that read the same tensor (the
  attention's q/k/v, the MLP's gate/up) share ``s`` and the activation range, so the quantized
  input is computed once, as an NPU would;
- the static activation range of each input (its per-tensor scale, learned through the rounding
  with a straight-through estimator, as LSQ does);
- weight clipping per output channel (8 bits) or per group (4 bits), learned the same way.

The float model's own block inputs are the training data (every block is fitted independently).
Weights then go to int8 per channel (W8A8, on :class:`Int8DynamicLinear`'s exact matmuls, the
fastest timed per shape) or to asymmetric int4 in groups (W4A8, the int4 kernel run on the
activation codes: bfloat16 holds integers up to 256 exactly).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from crossedge.core.bench import progress_bar

from ..api import Quantizer, Replacements
from ..calibration import CalibrationError, _call
from ..config import ACT_DTYPES, GROUP_SIZES, KernelTiming, QuantConfig, check
from ..modules import W8A8_MATMULS, Int4WeightLinear, Int8DynamicLinear, int_mm_is_exact
from ..primitives import EPS
from .w8a8 import with_matmuls

#: Largest activation code by activation width (symmetric).
ACT_QMAX = {8: 127, 16: 32767}


@dataclass(kw_only=True)
class MobileQuantConfig(KernelTiming):
    """Learned transforms and static per-tensor activation scales; int8 or grouped int4 weights."""

    method: ClassVar[str] = "mobilequant"

    weight_bits: int = 8
    group_size: int = 128
    #: Optimization steps per block (one calibration batch each); 0 keeps the initial transform and ranges.
    steps: int = 40
    lr: float = 5e-3
    #: SmoothQuant's migration strength for the transform's starting point.
    alpha: float = 0.5
    #: The int8 matmul of 8-bit weights (see :class:`Int8DynamicLinear`); ``auto`` times them per shape.
    matmul: str = "auto"
    #: The dtype the int4 kernel takes the codes and holds the scales in (4-bit weights only).
    act_dtype: str = "bfloat16"
    #: fnmatch patterns of layers whose input is quantized to 16 bits (still static, per tensor), as
    #: MobileQuant keeps the activations that 8 bits cannot hold; a group reading one tensor follows its first member.
    act16: list[str] = field(default_factory=list)

    def nominal_bits(self) -> int:
        """The weight width."""
        return self.weight_bits

    def validate(self) -> None:
        check(self.weight_bits in (4, 8), f"mobilequant weight_bits must be 4 or 8, got {self.weight_bits}")
        check(self.group_size in GROUP_SIZES, f"group_size must be one of {GROUP_SIZES}, got {self.group_size}")
        check(0 <= self.steps <= 10_000, f"mobilequant steps must be 0..10000, got {self.steps}")
        check(0.0 < self.lr < 1.0, f"mobilequant lr must be in (0, 1), got {self.lr}")
        check(0.0 <= self.alpha <= 1.0, f"mobilequant alpha must be in [0, 1], got {self.alpha}")
        check(self.act_dtype in ACT_DTYPES, f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")
        names = ("auto", *W8A8_MATMULS)
        check(self.matmul in names, f"matmul must be one of {', '.join(names)}, got {self.matmul!r}")
        check(
            not self.fake,
            "mobilequant has no fake-quant path: its layers run the integer kernels (drop fake=true)",
        )
        super().validate()


def static_codes(
    x: torch.Tensor, inv_smooth: torch.Tensor | None, act_scale: torch.Tensor, act_bits: int = 8
) -> torch.Tensor:
    """Integer codes ``round(x / s / a)`` (in float) of ``[tokens, features]`` inputs, one static scale ``a``."""
    x2 = x * inv_smooth if inv_smooth is not None else x
    return torch.round(x2 / act_scale).clamp_(-ACT_QMAX[act_bits], ACT_QMAX[act_bits])


class Int8StaticLinear(Int8DynamicLinear):
    """W8A8 with a static activation scale: codes ``round(x / s / a)`` with ``a`` fixed at quantization.

    The integer sums run on the matmul chosen for the layer (see :class:`Int8DynamicLinear`);
    16-bit activation codes (``act_bits=16``) run on ``fp32-codes`` only, the one matmul that
    takes them (float32 sums of exact products, rounded past 2^24).
    """

    kind = "int8_static"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        smooth: bool = True,
        matmul: str = "fp32-codes",
        act_bits: int = 8,
    ):
        if act_bits not in ACT_QMAX:
            raise ValueError(f"act_bits must be 8 or 16, not {act_bits}")
        self.act_bits = act_bits
        super().__init__(in_features, out_features, bias, "per_tensor", smooth, None, matmul)
        # Names the activation scheme in reports and keeps kernel timings apart from dynamic W8A8's.
        self.act_granularity = f"static per-tensor {act_bits}-bit"
        self.register_buffer("act_scale", torch.ones(()))

    @Int8DynamicLinear.matmul.setter
    def matmul(self, name: str) -> None:
        if self.act_bits == 16 and name != "fp32-codes":
            raise ValueError(f"16-bit activation codes run on fp32-codes only, not {name!r}")
        Int8DynamicLinear.matmul.fset(self, name)

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        for key in ("act_granularity", "cross_alpha", "cross_widen"):
            spec.pop(key)
        return {**spec, "act_bits": self.act_bits}

    def _quantized_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = x.reshape(-1, self.in_features).float()
        q = static_codes(raw, self.inv_smooth, self.act_scale, self.act_bits)
        q = q.to(torch.int8 if self.act_bits == 8 else torch.int16)
        if self.track_kernel:
            self.kernel_zeros += int((q == 0).sum())
            self.kernel_total += q.numel()
        return q, self.act_scale.reshape(1, 1)


class Int4StaticActLinear(Int4WeightLinear):
    """W4A8: int4 weights in groups, int8 activation codes with a static scale, on the int4 CPU kernel.

    The kernel multiplies the codes (exact in bfloat16) by the dequantized int4 groups in float32
    sums; the static scale multiplies the result once. 16-bit codes (``act_bits=16``) need
    ``act_dtype="float32"``, which holds them exactly.
    """

    kind = "w4a8_static"

    @property
    def kernel(self) -> str:
        return (
            f"torch._weight_int4pack_mm_for_cpu on int8 activation codes (int4 weights in groups of "
            f"{self.group_size}, static per-tensor int8 activations)"
        )

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        group_size: int = 128,
        act_dtype: str = "bfloat16",
        act_bits: int = 8,
    ):
        if act_bits not in ACT_QMAX or (act_bits == 16 and act_dtype != "float32"):
            raise ValueError(f"act_bits must be 8, or 16 with act_dtype float32; got {act_bits} with {act_dtype}")
        super().__init__(in_features, out_features, bias, group_size, act_dtype)
        self.act_bits = act_bits
        self.register_buffer("inv_smooth", torch.ones(in_features))
        self.register_buffer("act_scale", torch.ones(()))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "act_bits": self.act_bits}

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        return static_codes(x.reshape(-1, self.in_features).float(), self.inv_smooth, self.act_scale, self.act_bits)

    def dequantized_weight(self) -> torch.Tensor:
        return super().dequantized_weight() * self.inv_smooth[None, :]

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = super().dequantized_weight()
        y = nn.functional.linear(self._codes(x), w) * self.act_scale
        return self._finish(y, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self._codes(x).to(self.scales_zeros.dtype)
        if self.padded_in != self.in_features:
            codes = nn.functional.pad(codes, (0, self.padded_in - self.in_features))
        y = torch._weight_int4pack_mm_for_cpu(codes, self.qweight, self.group_size, self.scales_zeros)
        return self._finish(y.float() * self.act_scale, x)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``[out, groups, width]`` view of a weight (one group per row without ``group_size``), zero-padded."""
    out_features, in_features = w.shape
    if group_size is None:
        return w.reshape(out_features, 1, in_features)
    padded = -(-in_features // group_size) * group_size
    if padded != in_features:
        w = nn.functional.pad(w, (0, padded - in_features))
    return w.reshape(out_features, padded // group_size, group_size)


class InputTransform(nn.Module):
    """The learned part every layer reading one tensor shares: smoothing ``s`` and the static scale ``a``."""

    def __init__(self, smooth: torch.Tensor, act_scale: torch.Tensor, act_bits: int = 8):
        super().__init__()
        self.act_bits = act_bits
        self.log_smooth = nn.Parameter(smooth.float().log())
        self.log_act_scale = nn.Parameter(act_scale.float().log().reshape(()))

    def smooth(self) -> torch.Tensor:
        """The per-channel scales ``s``."""
        return self.log_smooth.exp()

    def act_scale(self) -> torch.Tensor:
        """The static activation scale ``a``."""
        return self.log_act_scale.exp()

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x / s`` on the static int8 grid, in float (gradients reach ``s`` and ``a``)."""
        a = self.act_scale()
        qmax = ACT_QMAX[self.act_bits]
        return _round_ste(torch.clamp(x.float() / self.smooth() / a, -qmax, qmax)) * a


class LearnedQuantLinear(nn.Module):
    """A float linear seen through its input's transform and its own learned weight clipping (training only)."""

    #: Clipping logits start here: sigmoid(4) = 0.982 of each row's (group's) range.
    CLIP_INIT = 4.0

    def __init__(self, linear: nn.Linear, transform: InputTransform, bits: int, group_size: int):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().float().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.transform = transform
        self.bits = bits
        self.group_size = group_size if bits == 4 else None
        groups = _grouped(self.weight, self.group_size).shape[1]
        self.clip_hi = nn.Parameter(torch.full((self.weight.shape[0], groups, 1), self.CLIP_INIT))
        # Int8 weights are symmetric (the int8 matmuls take no zero point); int4 ones get a lower clip too.
        self.clip_lo = nn.Parameter(torch.full_like(self.clip_hi, self.CLIP_INIT)) if bits == 4 else None

    def unfreeze_weight(self) -> nn.Parameter:
        """Make the float weight a trained parameter, for quantization-aware training (the block fit holds it)."""
        if not isinstance(self.weight, nn.Parameter):
            weight = self._buffers.pop("weight")
            self.weight = nn.Parameter(weight)
        return self.weight

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(view, scale, zero)``: the smoothed weight grouped, and its grid (zero all 0 for int8)."""
        view = _grouped(self.weight * self.transform.smooth()[None, :], self.group_size)
        if self.bits == 8:
            scale = (view.abs().amax(-1, keepdim=True) * torch.sigmoid(self.clip_hi) / 127).clamp(min=EPS)
            return view, scale, torch.zeros_like(scale)
        hi = view.amax(-1, keepdim=True).clamp(min=0) * torch.sigmoid(self.clip_hi)
        lo = view.amin(-1, keepdim=True).clamp(max=0) * torch.sigmoid(self.clip_lo)
        scale = ((hi - lo) / 15).clamp(min=EPS)
        zero = torch.clamp(-8 - _round_ste(lo / scale), -8, 7)
        return view, scale, zero

    def quantized_weight(self) -> torch.Tensor:
        """The smoothed weight on its learned grid, in float."""
        view, scale, zero = self.grid()
        qmin, qmax = (-127, 127) if self.bits == 8 else (-8, 7)
        q = torch.clamp(_round_ste(view / scale) + zero, qmin, qmax)
        w = ((q - zero) * scale).reshape(view.shape[0], -1)
        return w[:, : self.weight.shape[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(self.transform.quantize(x), self.quantized_weight(), self.bias)
        return y.to(x.dtype)

    @torch.no_grad()
    def integer_module(self, act_dtype: str = "bfloat16") -> nn.Module:
        """The deployable module: the learned grid rounded for good, on its integer kernel."""
        smooth = self.transform.smooth().detach()
        act_scale = self.transform.act_scale().detach()
        act_bits = self.transform.act_bits
        out_features, in_features = self.weight.shape
        view, scale, zero = self.grid()
        if self.bits == 8:
            module: nn.Module = Int8StaticLinear(in_features, out_features, self.bias is not None, act_bits=act_bits)
            wscale = scale.reshape(-1)
            module.qweight.copy_(torch.round(view.reshape(out_features, -1) / wscale[:, None]).clamp(-127, 127))
            module.wscale.copy_(wscale)
            module.matmul = module.matmul  # derive the matmul's operands from the codes just stored
        else:
            if act_bits == 16:
                act_dtype = "float32"  # bfloat16 holds integers up to 256 only
            module = Int4StaticActLinear(
                in_features, out_features, self.bias is not None, self.group_size, act_dtype, act_bits
            )
            # Round against the scales the kernel holds (its act dtype), as the weight-only layers do.
            scale = scale.to(module.scales_zeros.dtype).float().clamp(min=EPS)
            q = torch.clamp(torch.round(view / scale) + zero, -8, 7).reshape(out_features, -1)[:, :in_features]
            module.set_quantized(q, scale.reshape(out_features, -1), zero.reshape(out_features, -1), None)
        module.inv_smooth.copy_(1.0 / smooth)
        module.act_scale.copy_(act_scale)
        if self.bias is not None:
            module.bias.copy_(self.bias)
        return module


def decoder_blocks(model: nn.Module, targets: dict[str, nn.Linear]) -> dict[str, nn.Module]:
    """The blocks to fit one at a time: the children of the ``nn.ModuleList`` holding the most target layers."""
    best: dict[str, nn.Module] = {}
    best_count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        blocks = {f"{name}.{i}" if name else str(i): block for i, block in enumerate(module)}
        count = sum(1 for t in targets if any(t.startswith(b + ".") for b in blocks))
        if count > best_count:
            best, best_count = blocks, count
    return best


@dataclass
class BlockRecord:
    """What one calibration pass saw of a block: its calls (args, kwargs, float output)."""

    calls: list[tuple[tuple, dict[str, Any], torch.Tensor]]


#: Input rows kept per layer to choose its starting activation range (spread over the calibration data).
SAMPLE_ROWS = 1024


@dataclass
class InputRecord:
    """What one calibration pass saw of a layer's input: column maxima, a sample of rows, its input group."""

    col_absmax: torch.Tensor
    rows: list[torch.Tensor]
    group: int

    def sample(self) -> torch.Tensor:
        """The kept rows as one ``[rows, features]`` tensor."""
        return torch.cat(self.rows)


def _without_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Re-running a block must not append to the calibration forward's KV cache.
    out = {}
    for key, value in kwargs.items():
        if type(value).__name__.endswith("Cache"):
            continue
        out[key] = False if key == "use_cache" else value
    return out


def _main_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def record_calibration(
    model: nn.Module, batches: list[Any], blocks: dict[str, nn.Module], targets: dict[str, nn.Linear]
) -> tuple[dict[str, BlockRecord], dict[str, InputRecord]]:
    """One float pass: each block's calls, and each target's input (maxima, sample rows, group).

    Targets that read the very same tensor in a call get the same group number.
    """
    records = {name: BlockRecord([]) for name in blocks}
    inputs: dict[str, InputRecord] = {}
    per_call = -(-SAMPLE_ROWS // max(1, len(batches)))
    # Tensors seen in the first pass, by id: held so that no id is reused while the pass runs.
    call_inputs: dict[int, tuple[int, torch.Tensor]] = {}
    handles = []

    def block_hooks(name: str):
        def pre(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            records[name].calls.append((args, _without_cache(kwargs), torch.empty(0)))

        def post(module: nn.Module, args: tuple, kwargs: dict[str, Any], out: Any) -> None:
            a, k, _ = records[name].calls[-1]
            records[name].calls[-1] = (a, k, _main_output(out).detach().clone())

        return pre, post

    def linear_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            x2 = x.detach().reshape(-1, x.shape[-1]).float()
            picked = x2[torch.linspace(0, x2.shape[0] - 1, min(per_call, x2.shape[0])).long()].clone()
            seen = inputs.get(name)
            if seen is None:
                group = call_inputs.setdefault(id(x), (len(call_inputs), x))[0]
                inputs[name] = InputRecord(x2.abs().amax(0), [picked], group)
            else:
                seen.col_absmax = torch.maximum(seen.col_absmax, x2.abs().amax(0))
                seen.rows.append(picked)

        return hook

    for name, block in blocks.items():
        pre, post = block_hooks(name)
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    for name, linear in targets.items():
        handles.append(linear.register_forward_pre_hook(linear_hook(name)))
    try:
        for batch in progress_bar(batches, desc="calibration batches"):
            _call(model, batch)
            call_inputs.clear()
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in targets if name not in inputs]
    if missing:
        raise CalibrationError(f"calibration never reached layer(s) {', '.join(missing[:5])}: check the loader")
    return records, inputs


#: Fractions of ``max|x / s|`` tried as the starting activation range (log-spaced, 1 down to 1/200).
RANGE_FRACTIONS = torch.logspace(0, -2.3, 48)


@torch.no_grad()
def initial_transform(
    linears: list[nn.Linear], record: InputRecord, alpha: float | None, act_bits: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothQuant's ``s`` over the layers sharing an input (1 without ``alpha``), and the static scale of
    least error on ``x / s``.

    The whole range (absmax) would spend the int8 grid on a few outlier tokens and round most
    values to zero; the range kept is the one whose codes reproduce the sampled rows best.
    """
    if alpha is None:
        smooth = torch.ones_like(record.col_absmax)
    else:
        weights = torch.stack([lin.weight.detach().float().abs().amax(0) for lin in linears])
        w_absmax = weights.amax(0).clamp(min=EPS)
        smooth = (record.col_absmax.clamp(min=EPS).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=1e-5)
    x2 = record.sample() / smooth
    full = (record.col_absmax / smooth).amax().clamp(min=EPS)
    qmax = ACT_QMAX[act_bits]
    errors = []
    for fraction in RANGE_FRACTIONS:
        scale = full * fraction / qmax
        errors.append(float((torch.round(x2 / scale).clamp(-qmax, qmax) * scale - x2).pow(2).sum()))
    best = RANGE_FRACTIONS[min(range(len(errors)), key=errors.__getitem__)]
    return smooth, (full * best / qmax).clamp(min=EPS)


def fit_block(
    block: nn.Module, record: BlockRecord, learned: dict[str, LearnedQuantLinear], steps: int, lr: float
) -> tuple[float, float]:
    """Fit the learned layers inside ``block`` to its float outputs; the mean relative error before and after."""
    local = dict(learned)
    originals = {name: block.get_submodule(name) for name in local}
    for name, module in local.items():
        block.set_submodule(name, module)
    params = {id(p): p for m in local.values() for p in m.parameters()}
    # Only the learned transforms, ranges and clips train; the block's own weights (norms) get no grads.
    frozen = [p for p in block.parameters() if p.requires_grad and id(p) not in params]
    for p in frozen:
        p.requires_grad_(False)
    try:

        def error(call: tuple) -> torch.Tensor:
            args, kwargs, target = call
            out = _main_output(block(*args, **kwargs)).float()
            return (out - target).pow(2).mean() / target.pow(2).mean().clamp(min=EPS)

        with torch.no_grad():
            before = sum(float(error(c)) for c in record.calls) / len(record.calls)
        if steps:
            optimizer = torch.optim.Adam(list(params.values()), lr=lr)
            with torch.enable_grad():
                for step in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss = error(record.calls[step % len(record.calls)])
                    if not math.isfinite(loss.item()):
                        raise CalibrationError("mobilequant's block error became NaN or infinite: lower lr")
                    loss.backward()
                    optimizer.step()
        with torch.no_grad():
            after = sum(float(error(c)) for c in record.calls) / len(record.calls)
    finally:
        for name, module in originals.items():
            block.set_submodule(name, module)
        for p in frozen:
            p.requires_grad_(True)
    return before, after


class MobileQuantQuantizer(Quantizer):
    """MobileQuant: transforms, static activation ranges and weight clipping learned per block (W8A8, W4A8)."""

    name = "mobilequant"
    description = (
        "W8A8 / W4A8 with static per-tensor int8 activations; smoothing, ranges and clipping learned per block"
    )
    config_class = MobileQuantConfig
    produces = (Int8StaticLinear, Int4StaticActLinear)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, MobileQuantConfig) and calibration is not None
        learned, details = learn_blocks(model, config, targets, calibration, config.steps)
        return integer_replacements(learned, config, details)


def learn_blocks(
    model: nn.Module,
    config: MobileQuantConfig,
    targets: dict[str, nn.Linear],
    calibration: list[Any],
    steps: int,
) -> tuple[dict[str, LearnedQuantLinear], dict[str, Any]]:
    """MobileQuant's fit: a learned layer per target, its transform and ranges fitted block by block for ``steps``."""
    if config.weight_bits == 4:
        narrow = [name for name, lin in targets.items() if lin.out_features % 16]
        check(not narrow, f"the int4 kernel needs out_features divisible by 16; skip {', '.join(narrow[:3])}")
    check(
        config.matmul != "int_mm" or int_mm_is_exact(),
        "matmul=int_mm: torch._int_mm is not exact on this CPU; use matmul=auto or fp32-codes",
    )
    blocks = decoder_blocks(model, targets)
    records, inputs = record_calibration(model, calibration, blocks, targets)
    transforms: dict[int, InputTransform] = {}
    members: dict[int, list[str]] = {}
    for name in targets:
        members.setdefault(inputs[name].group, []).append(name)
    for group, names in members.items():
        # Members read the same tensor, so any one's record holds the group's input.
        wide = any(fnmatch.fnmatchcase(names[0], p) for p in config.act16)
        bits = 16 if wide else 8
        linears = [targets[n] for n in names]
        # 16 bits hold the outliers: such inputs start with no migration into the weights (s = 1).
        smooth, act_scale = initial_transform(linears, inputs[names[0]], None if wide else config.alpha, bits)
        transforms[group] = InputTransform(smooth, act_scale, bits)
    learned = {
        name: LearnedQuantLinear(lin, transforms[inputs[name].group], config.weight_bits, config.group_size)
        for name, lin in targets.items()
    }
    errors = []
    for block_name, block in progress_bar(list(blocks.items()), desc="mobilequant blocks"):
        inside = {n[len(block_name) + 1 :]: m for n, m in learned.items() if n.startswith(block_name + ".")}
        if inside and records[block_name].calls:
            errors.append(fit_block(block, records[block_name], inside, steps, config.lr))
    details: dict[str, Any] = {
        "blocks_fitted": len(errors),
        "input_groups": len(members),
        "layers_outside_blocks": sum(1 for n in targets if not any(n.startswith(b + ".") for b in blocks)),
    }
    if errors:
        details["block_error_initial"] = round(sum(b for b, _ in errors) / len(errors), 6)
        details["block_error_learned"] = round(sum(a for _, a in errors) / len(errors), 6)
    return learned, details


def integer_replacements(
    learned: dict[str, LearnedQuantLinear], config: MobileQuantConfig, details: dict[str, Any]
) -> Replacements:
    """The deployable integer layers of fitted learned layers, 8-bit ones on their timed matmuls."""
    modules = {name: module.integer_module(config.act_dtype) for name, module in learned.items()}
    details = {**details, "act16_layers": sum(1 for m in modules.values() if m.act_bits == 16)}
    narrow = {name: m for name, m in modules.items() if m.act_bits == 8}
    if config.weight_bits == 4 or not narrow:
        return Replacements(modules, details)
    found = with_matmuls(narrow, config)  # 16-bit codes stay on fp32-codes
    return Replacements({**modules, **found.modules}, {**details, **found.details})
