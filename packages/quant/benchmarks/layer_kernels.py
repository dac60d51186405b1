"""Per-layer CPU kernel timings that chose crossedge-quant's kernels (milliseconds per call, median).

Run: python packages/quant/benchmarks/layer_kernels.py [THREADS]
Compares an fp32 linear with the int8/int4 kernels available in torch on the
layer shapes of SmolLM2-135M (576, 1536, 49152) and one 4096x4096 layer, with W8A8's integer
sums on ``torch._int_mm`` and on the two fallbacks without VNNI (the weight-only kernel on the
codes in bf16, an fp32 linear on the codes).
"""

from __future__ import annotations

import sys

import torch

from crossedge.core.bench import measure


def median_ms(fn, repeats: int = 30) -> float:
    """Median wall time of ``fn`` in milliseconds after three warm-up calls (core's ``measure``)."""
    return 1e3 * measure(fn, warmup=3, repeats=repeats).median


def time_shape(out_f: int, in_f: int, tokens: int) -> list[float]:
    """Milliseconds per call of each kernel on one layer shape."""
    x = torch.randn(tokens, in_f)
    w = torch.randn(out_f, in_f)
    q = torch.randint(-127, 128, (out_f, in_f), dtype=torch.int8)
    scale = torch.rand(out_f)
    xb, sb = x.bfloat16(), scale.bfloat16()
    packed = torch._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (out_f, in_f), dtype=torch.int32), 1)
    sz = torch.ones(in_f // 64, out_f, 2, dtype=torch.bfloat16)

    def codes() -> tuple[torch.Tensor, torch.Tensor]:
        s = x.abs().amax(-1, keepdim=True) / 127
        return torch.round(x / s).clamp_(-127, 127).to(torch.int8), s

    def w8a8() -> torch.Tensor:
        xi, s = codes()
        return torch._int_mm(xi, q.t()).float() * s * scale

    float_codes = q.float()

    def w8a8_int8pack_bf16() -> torch.Tensor:
        xi, s = codes()
        return torch._weight_int8pack_mm(xi.to(torch.bfloat16), q, sb).float() * s

    def w8a8_fp32_codes() -> torch.Tensor:
        xi, s = codes()
        return torch.nn.functional.linear(xi.float(), float_codes) * s * scale

    return [
        median_ms(lambda: torch.nn.functional.linear(x, w)),
        median_ms(lambda: torch._weight_int8pack_mm(xb, q, sb)),
        median_ms(lambda: torch._weight_int4pack_mm_for_cpu(xb, packed, 64, sz)),
        median_ms(w8a8),
        median_ms(w8a8_int8pack_bf16),
        median_ms(w8a8_fp32_codes),
    ]


def int_mm_error() -> str:
    """How far ``torch._int_mm`` is from the exact sums on random full-range codes, 4x576 by 576x576."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (4, 576), generator=generator, dtype=torch.int8)
    b = torch.randint(-127, 128, (576, 576), generator=generator, dtype=torch.int8)
    exact = a.double() @ b.double()
    wrong = (torch._int_mm(a, b).double() - exact).abs().max() / exact.abs().max()
    return f"largest error {100 * float(wrong):.1f}% of the largest sum (4x576 by 576x576 random codes)"


def main() -> None:
    """Print one line per layer shape and token count."""
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    from crossedge.quant.modules import int_mm_is_exact

    print(f"threads={torch.get_num_threads()} capability={torch.backends.cpu.get_cpu_capability()}")
    print(f"torch._int_mm exact here: {int_mm_is_exact()}; {int_mm_error()}")
    print(
        "out x in, tokens: fp32 | int8 weight-only bf16 | int4 g64 bf16 | W8A8 per token (incl. act quant) on: "
        "_int_mm | _weight_int8pack_mm, bf16 codes | fp32 linear on the codes"
    )
    for out_f, in_f in [(576, 576), (1536, 576), (576, 1536), (49152, 576), (4096, 4096)]:
        for tokens in (1, 64):
            times = time_shape(out_f, in_f, tokens)
            print(f"{out_f}x{in_f}, {tokens}: " + " | ".join(f"{t:.3f}" for t in times))


if __name__ == "__main__":
    main()
