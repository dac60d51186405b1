"""Quantized linear modules: integer buffers plus scales, and a forward that runs a real CPU kernel.

Kernels were chosen by measuring on the development machine (2 vCPU with AVX512-VNNI
and AVX512-BF16; see docs/quant.md): weight-only int8 uses ``torch._weight_int8pack_mm``
and int4 uses ``torch._weight_int4pack_mm_for_cpu``, both with bf16 activations; W8A8
uses ``torch._int_mm`` (int8 x int8 -> int32), which is fast on VNNI CPUs, or, where that is
slower or not exact (no VNNI), the weight-only kernel or a float32 matmul on the activation codes. Every module
also has ``reference_forward``, the same arithmetic in fp32 on dequantized weights,
which tests compare the kernel against. :class:`FakeQuantLinear` is the research path.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

from .primitives import EPS

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class KeepsQuantizedDtypes(nn.Module):
    """A module whose buffers keep the dtypes they were quantized with when the model is cast."""

    def _apply(self, fn: Any, recurse: bool = True) -> KeepsQuantizedDtypes:
        # ``model.to(torch.bfloat16)`` would also cast the scales, which belong to the quantization
        # (saved with it, and their dtype picks the kernel: float32 scales sent a bf16 layer to a
        # kernel 13x slower). Devices move; dtypes stay as quantized; inputs are cast in forward.
        # An unchanged buffer stays the same tensor, so a head and embedding keep sharing theirs.
        def keep_dtype(tensor: torch.Tensor) -> torch.Tensor:
            moved = fn(tensor)
            if moved.dtype == tensor.dtype:
                return moved
            return tensor if moved.device == tensor.device else tensor.to(moved.device)

        return super()._apply(keep_dtype, recurse)


class QuantizedLinear(KeepsQuantizedDtypes):
    """Base of the quantized replacements of ``nn.Linear``; buffers only, no trainable parameters.

    ``kind`` names the class in ``quantization.json``; a saved folder is rebuilt from the
    classes its method lists in ``Quantizer.produces``, so there is no global table of kinds.
    """

    kind: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-ready dict (what the quantization map stores)."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantizedLinear:
        """An instance with buffers of the right shape and dtype, ready for ``load_state_dict``."""
        return cls(**spec)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight ``[out, in]`` this module multiplies by."""
        raise NotImplementedError

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation in fp32 on dequantized weights (the test oracle)."""
        return nn.functional.linear(x.float(), self.dequantized_weight(), self.bias).to(x.dtype)

    @property
    def kernel(self) -> str:
        """The CPU kernel this module's forward runs, as reports print it."""
        return type(self).__name__

    def weight_bytes(self) -> int:
        """Bytes held by this module's buffers."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items())

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Int8WeightLinear(QuantizedLinear):
    """Weight-only int8 (one scale per output channel) on ``torch._weight_int8pack_mm``.

    Asymmetric weights add a zero point per channel: ``x @ ((q - z) s)^T =
    kernel(x, q, s) - sum(x) (s z)``, one extra reduction per call.
    """

    kind = "int8_weight"

    @property
    def kernel(self) -> str:
        return f"torch._weight_int8pack_mm (int8 weights, {self.act_dtype} activations)"

    def __init__(
        self, in_features: int, out_features: int, bias: bool, symmetric: bool = True, act_dtype: str = "bfloat16"
    ):
        super().__init__(in_features, out_features, bias)
        self.symmetric = symmetric
        self.act_dtype = act_dtype
        dtype = _DTYPES[act_dtype]
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=dtype))
        self.register_buffer("zero_term", None if symmetric else torch.zeros(out_features))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "symmetric": self.symmetric, "act_dtype": self.act_dtype}

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None, *, symmetric: bool, per_tensor: bool, act_dtype: str
    ) -> Int8WeightLinear:
        """Round-to-nearest quantization of a float weight ``[out, in]``."""
        from .primitives import compute_qparams

        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias is not None, symmetric, act_dtype)
        w = weight.detach().float()
        qp = compute_qparams(w, bits=8, granularity="per_tensor" if per_tensor else "per_channel", symmetric=symmetric)
        # Quantize against the scale the kernel will actually see (rounded to act dtype).
        scale = qp.scale.reshape(-1).expand(out_features).to(module.scale.dtype).float().clamp(min=EPS)
        zero = qp.zero.reshape(-1).expand(out_features)
        q = torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], -128, 127)
        module.set_quantized(q, scale, zero, bias)
        return module

    def set_quantized(
        self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """Store integers ``q [out, in]`` with per-channel ``scale`` and integer ``zero``."""
        self.qweight.copy_(q.to(torch.int8))
        self.scale.copy_(scale.to(self.scale.dtype))
        if self.zero_term is not None:
            self.zero_term.copy_(self.scale.float() * zero.float())
        if bias is not None:
            self.bias.copy_(bias.detach().float())

    def dequantized_weight(self) -> torch.Tensor:
        w = self.qweight.float() * self.scale.float()[:, None]
        if self.zero_term is not None:
            w = w - self.zero_term[:, None]
        return w

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = x.to(_DTYPES[self.act_dtype]).float()
        return nn.functional.linear(xq, self.dequantized_weight(), self.bias).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.scale.dtype)
        y = torch._weight_int8pack_mm(x2, self.qweight, self.scale)
        if self.zero_term is not None:
            y = y.float() - x2.float().sum(-1, keepdim=True) * self.zero_term
        return self._finish(y, x)


class Int4WeightLinear(QuantizedLinear):
    """Weight-only int4 in groups along the input dimension on ``torch._weight_int4pack_mm_for_cpu``.

    The kernel dequantizes ``(u - 8) * scale + offset`` with ``u`` in 0..15; our signed
    ``q = u - 8`` with integer zero ``z`` maps to ``offset = -z * scale``. When the input
    size is not a multiple of the group size the weight is zero-padded (and the input
    padded at run time), so groups stay exactly ``group_size`` wide.
    """

    kind = "int4_weight"

    @property
    def kernel(self) -> str:
        return (
            f"torch._weight_int4pack_mm_for_cpu (int4 weights in groups of {self.group_size}, "
            f"{self.act_dtype} activations)"
        )

    def __init__(
        self, in_features: int, out_features: int, bias: bool, group_size: int = 128, act_dtype: str = "bfloat16"
    ):
        super().__init__(in_features, out_features, bias)
        if out_features % 16:
            raise ValueError(f"the int4 CPU kernel needs out_features divisible by 16, got {out_features}")
        self.group_size = group_size
        self.act_dtype = act_dtype
        self.padded_in = -(-in_features // group_size) * group_size
        groups = self.padded_in // group_size
        self.register_buffer("qweight", torch.zeros(out_features, self.padded_in // 2, dtype=torch.uint8))
        self.register_buffer("scales_zeros", torch.zeros(groups, out_features, 2, dtype=_DTYPES[act_dtype]))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "group_size": self.group_size, "act_dtype": self.act_dtype}

    def set_quantized(
        self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """Store signed integers ``q [out, in]`` in -8..7 with ``scale``/``zero`` of shape ``[out, groups]``."""
        groups = self.padded_in // self.group_size
        pad = self.padded_in - self.in_features
        q = q.to(torch.int32)
        if pad:
            # Padded columns hold the zero point of the last group, so they dequantize to exactly 0.
            q = torch.cat([q, zero[:, -1:].to(torch.int32).expand(-1, pad)], dim=1)
        unsigned = (q + 8).clamp(0, 15).to(torch.int32)
        self.qweight.copy_(torch._convert_weight_to_int4pack_for_cpu(unsigned.contiguous(), 1))
        scale = scale.float().reshape(self.out_features, groups)
        offset = -zero.float().reshape(self.out_features, groups) * scale
        self.scales_zeros.copy_(torch.stack([scale.t(), offset.t()], dim=-1).to(self.scales_zeros.dtype))
        if bias is not None:
            self.bias.copy_(bias.detach().float())

    def dequantized_weight(self) -> torch.Tensor:
        # The packed layout is the kernel's own; multiplying the identity recovers the weight exactly in fp32.
        eye = torch.eye(self.padded_in, dtype=torch.float32)
        w_t = torch._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group_size, self.scales_zeros.float())
        return w_t.t()[:, : self.in_features].contiguous()

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = x.to(_DTYPES[self.act_dtype]).float()
        return nn.functional.linear(xq, self.dequantized_weight(), self.bias).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.scales_zeros.dtype)
        if self.padded_in != self.in_features:
            x2 = nn.functional.pad(x2, (0, self.padded_in - self.in_features))
        y = torch._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_zeros)
        return self._finish(y, x)


def quantize_activation(
    x2: torch.Tensor,
    granularity: str,
    cross_alpha: float | None,
    raw: torch.Tensor | None = None,
    widen: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 activations ``[tokens, features]`` and their scale (``[tokens, 1]`` or ``[1, 1]``).

    With ``cross_alpha`` the per-token scale is CrossQuant's ``t_i^alpha / 127`` where
    ``t_i`` is the row absolute maximum of the raw (unsmoothed) input ``raw``; ``widen`` raises it
    to the row's own maximum where that is larger (no clamping of values past the calibrated columns).
    """
    if cross_alpha is not None:
        rows = (raw if raw is not None else x2).abs().amax(-1, keepdim=True).clamp(min=EPS)
        scale = rows.pow(cross_alpha) / 127.0
        if widen:
            # The column factor folded into the weights comes from calibration; where a token exceeds
            # a column's calibrated maximum, its scale widens to x2's own maximum instead of clamping.
            scale = torch.maximum(scale, x2.abs().amax(-1, keepdim=True) / 127.0)
    elif granularity == "per_token":
        scale = x2.abs().amax(-1, keepdim=True).clamp(min=EPS) / 127.0
    else:
        scale = x2.abs().amax().clamp(min=EPS).reshape(1, 1) / 127.0
    q = torch.round(x2 / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


#: The matmuls a W8A8 layer can run its sums of int8 products on (see :class:`Int8DynamicLinear`).
W8A8_MATMULS = ("int_mm", "int8pack-bf16", "fp32-codes")


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` returns exact int32 sums here (probed once per process).

    Without VNNI, oneDNN's int8 GEMM multiplies pairs of bytes into saturating 16-bit sums
    (``vpmaddubsw``): with its kernels capped at AVX2 on this machine a 4x576 by 576x576 product
    came back wrong by up to 19% of the largest sum. Full-range codes, as per-token quantization makes,
    provoke it; the check compares against the same products in float64.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 256), generator=generator, dtype=torch.int8)
    b = torch.randint(-127, 128, (256, 32), generator=generator, dtype=torch.int8)
    exact = a.double() @ b.double()
    return bool(torch.equal(torch._int_mm(a, b).double(), exact))


class Int8DynamicLinear(QuantizedLinear):
    """W8A8: int8 weights, activations quantized to int8 at run time, integer sums in int32 or exact float32.

    An optional ``inv_smooth`` vector multiplies the input first; SmoothQuant and
    CrossQuant fold its inverse into the weight columns before quantizing them.

    ``matmul`` picks the kernel for the sums of int8 products: ``int_mm`` (``torch._int_mm``,
    int32; fast with VNNI, slow and saturating without it, see :func:`int_mm_is_exact`);
    ``int8pack-bf16`` (the weight-only kernel ``torch._weight_int8pack_mm`` on the activation
    codes as bfloat16, which holds them exactly, then the activation scales: fast at decoding's
    few rows on any CPU, but the weight scales and the output are rounded to bfloat16, as the
    weight-only layers' are); or ``fp32-codes`` (a float32 matmul on the codes, which holds the
    integer sums exactly up to 2^24, past the largest sum SmolLM2's widest layer reaches only at
    worst-case codes; it keeps a float32 copy of the codes, so it takes a float32 layer's bytes).
    """

    kind = "int8_dynamic"

    @property
    def kernel(self) -> str:
        on = {
            "int_mm": "torch._int_mm",
            "int8pack-bf16": "torch._weight_int8pack_mm on bf16 codes",
            "fp32-codes": "fp32 linear on the codes",
        }[self.matmul]
        return f"{on} (W8A8, {self.act_granularity} int8 activations)"

    @property
    def matmul(self) -> str:
        """The kernel the int8 sums run on; setting ``fp32-codes`` keeps a float32 copy of the codes."""
        return self._matmul

    @matmul.setter
    def matmul(self, name: str) -> None:
        if name not in W8A8_MATMULS:
            raise ValueError(f"matmul must be one of {', '.join(W8A8_MATMULS)}, not {name!r}")
        self._matmul = name
        self._derive_operands()

    def _derive_operands(self) -> None:
        # What the chosen matmul reads besides qweight, derived from the saved buffers once rather
        # than per call: fp32-codes' float copy of the codes, int8pack-bf16's bf16 weight scales.
        # Not saved; buffers, so weight_bytes counts them and .to() moves them.
        codes = self.qweight.float() if self._matmul == "fp32-codes" else None
        scales = self.wscale.to(torch.bfloat16) if self._matmul == "int8pack-bf16" else None
        self.register_buffer("float_codes", codes, persistent=False)
        self.register_buffer("bf16_wscale", scales, persistent=False)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._derive_operands()  # the codes and scales changed: derive again from them

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        act_granularity: str = "per_token",
        smooth: bool = False,
        cross_alpha: float | None = None,
        matmul: str = "int_mm",
        cross_widen: bool = False,
    ):
        super().__init__(in_features, out_features, bias)
        self.act_granularity = act_granularity
        self.cross_alpha = cross_alpha
        self.cross_widen = cross_widen
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("wscale", torch.ones(out_features))
        self.register_buffer("inv_smooth", torch.ones(in_features) if smooth else None)
        self.matmul = matmul
        self.track_kernel = False
        self.kernel_zeros = 0
        self.kernel_total = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8DynamicLinear:
        """As saved, except that ``int_mm`` runs as ``fp32-codes`` (the same sums, exact) where it is not exact."""
        module = cls(**spec)
        if module.matmul == "int_mm" and not int_mm_is_exact():
            warnings.warn(
                "this W8A8 model was saved to run torch._int_mm, which returns wrong sums on this CPU (no VNNI); "
                "its layers run a float32 matmul on the same int8 codes instead (exact sums, float32 bytes)",
                stacklevel=2,
            )
            module.matmul = "fp32-codes"
        return module

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "act_granularity": self.act_granularity,
            "smooth": self.inv_smooth is not None,
            "cross_alpha": self.cross_alpha,
            "matmul": self.matmul,
            "cross_widen": self.cross_widen,
        }

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        per_tensor_weight: bool,
        act_granularity: str,
        smooth: torch.Tensor | None = None,
        cross_alpha: float | None = None,
        cross_widen: bool = False,
    ) -> Int8DynamicLinear:
        """Quantize ``weight * smooth`` (columns) symmetrically to int8; ``x / smooth`` happens at run time."""
        from .primitives import compute_qparams, quantize

        out_features, in_features = weight.shape
        module = cls(
            in_features,
            out_features,
            bias is not None,
            act_granularity,
            smooth is not None,
            cross_alpha,
            cross_widen=cross_widen,
        )
        w = weight.detach().float()
        if smooth is not None:
            w = w * smooth.float()[None, :]
            module.inv_smooth.copy_(1.0 / smooth.float())
        qp = compute_qparams(w, bits=8, granularity="per_tensor" if per_tensor_weight else "per_channel")
        q = quantize(w, qp).clamp(-127, 127)
        module.qweight.copy_(q.to(torch.int8))
        module.wscale.copy_(qp.scale.reshape(-1).expand(out_features))
        if bias is not None:
            module.bias.copy_(bias.detach().float())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        w = self.qweight.float() * self.wscale[:, None]
        if self.inv_smooth is not None:
            w = w * self.inv_smooth[None, :]
        return w

    def _quantized_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = x.reshape(-1, self.in_features).float()
        x2 = raw * self.inv_smooth if self.inv_smooth is not None else raw
        q, scale = quantize_activation(x2, self.act_granularity, self.cross_alpha, raw, self.cross_widen)
        if self.track_kernel:
            self.kernel_zeros += int((q == 0).sum())
            self.kernel_total += q.numel()
        return q, scale

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self._quantized_input(x)
        w = self.qweight.float() * self.wscale[:, None]
        y = nn.functional.linear(q.float() * scale, w)
        return self._finish(y, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self._quantized_input(x)
        if self.matmul == "int8pack-bf16":
            y = torch._weight_int8pack_mm(q.to(torch.bfloat16), self.qweight, self.bf16_wscale)
            return self._finish(y.float() * scale, x)
        if self.matmul == "fp32-codes":
            y = nn.functional.linear(q.float(), self.float_codes) * scale * self.wscale
            return self._finish(y, x)
        acc = torch._int_mm(q, self.qweight.t())
        y = acc.float() * scale * self.wscale
        return self._finish(y, x)


class FakeQuantLinear(QuantizedLinear):
    """The research path: a float weight already rounded to the quantization grid, optional simulated activations.

    ``act_bits`` set means activations are fake-quantized symmetric per token or per
    tensor; with ``cross_alpha`` they use CrossQuant's per-element scale computed from
    the current batch's row and column maxima (the paper's dynamic form).
    """

    kind = "fake"

    @property
    def kernel(self) -> str:
        return "float linear on fake-quantized weights (research path)"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        act_bits: int | None = None,
        act_granularity: str = "per_token",
        cross_alpha: float | None = None,
        smooth: bool = False,
    ):
        super().__init__(in_features, out_features, bias)
        self.act_bits = act_bits
        self.act_granularity = act_granularity
        self.cross_alpha = cross_alpha
        self.register_buffer("weight", torch.zeros(out_features, in_features))
        self.register_buffer("inv_smooth", torch.ones(in_features) if smooth else None)
        self.track_kernel = False
        self.kernel_zeros = 0
        self.kernel_total = 0

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "act_bits": self.act_bits,
            "act_granularity": self.act_granularity,
            "cross_alpha": self.cross_alpha,
            "smooth": self.inv_smooth is not None,
        }

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()
        if self.inv_smooth is not None:
            x2 = x2 * self.inv_smooth
        if self.act_bits is not None:
            qmax = 2 ** (self.act_bits - 1) - 1
            if self.cross_alpha is not None:
                rows = x2.abs().amax(-1, keepdim=True).clamp(min=EPS)
                cols = x2.abs().amax(0, keepdim=True).clamp(min=EPS)
                scale = rows.pow(self.cross_alpha) * cols.pow(1 - self.cross_alpha) / qmax
            elif self.act_granularity == "per_token":
                scale = x2.abs().amax(-1, keepdim=True).clamp(min=EPS) / qmax
            else:
                scale = x2.abs().amax().clamp(min=EPS) / qmax
            q = torch.round(x2 / scale).clamp(-qmax, qmax)
            if self.track_kernel:
                self.kernel_zeros += int((q == 0).sum())
                self.kernel_total += q.numel()
            x2 = q * scale
        y = nn.functional.linear(x2, self.weight)
        return self._finish(y, x)


class Int8Embedding(KeepsQuantizedDtypes):
    """An input embedding that shares the int8 rows and per-row scales of a quantized, tied LM head.

    Tied models keep one matrix for both ends; once the head is int8 the embedding
    reads the same buffers (``tied_to`` names the head), so the bytes are held once.
    """

    kind = "int8_embedding"

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        tied_to: str,
        scale_dtype: str = "bfloat16",
        output_scale: float | None = None,
    ):
        super().__init__()
        # Some architectures (Gemma) multiply embeddings by a constant such as sqrt(hidden).
        self.output_scale = output_scale
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.tied_to = tied_to
        self.scale_dtype = scale_dtype
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=_DTYPES[scale_dtype]))

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Int8Embedding:
        """An instance with buffers of the right shape and dtype."""
        return cls(**spec)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-ready dict."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "tied_to": self.tied_to,
            "scale_dtype": self.scale_dtype,
            "output_scale": self.output_scale,
        }

    def share(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        """Point the buffers at the head's tensors (no copy)."""
        self.qweight = qweight
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[input_ids].float() * self.scale[input_ids].float().unsqueeze(-1)
        return rows * self.output_scale if self.output_scale is not None else rows


def shared_head_buffers(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (int8 rows, per-row scale) of a quantized head an embedding can reuse, or None."""
    if isinstance(head, Int8WeightLinear) and head.zero_term is None:
        return head.qweight, head.scale
    if isinstance(head, Int8DynamicLinear) and head.inv_smooth is None:
        return head.qweight, head.wscale
    return None


def kernel_fraction(model: nn.Module) -> float | None:
    """Fraction of quantized activation elements that rounded to zero since tracking began (None if none)."""
    zeros = total = 0
    for module in model.modules():
        if hasattr(module, "kernel_total"):
            zeros += module.kernel_zeros
            total += module.kernel_total
    return zeros / total if total else None


def track_kernel(model: nn.Module, enabled: bool = True) -> None:
    """Start (and reset) or stop counting activation elements that quantize to zero."""
    for module in model.modules():
        if hasattr(module, "track_kernel"):
            module.track_kernel = enabled
            if enabled:
                module.kernel_zeros = module.kernel_total = 0
