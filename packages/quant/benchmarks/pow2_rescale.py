"""What Agile-Quant's power-of-two (shift) rescaling saves on this CPU, in PyTorch eager (ms per call, median).

Run on an idle machine:
    python packages/quant/benchmarks/pow2_rescale.py --threads 1 \
        --json packages/quant/benchmarks/results/pow2_rescale.json

Three parts, at decoding's few rows and one prefill block, on SmolLM2-135M's layer shapes:

* rescaling an int32 accumulator ``[rows, out]`` to float: by float multiplies with arbitrary
  per-token and per-channel scales (what ``Int8DynamicLinear`` does), by ``torch.ldexp`` with
  integer exponents, by adding the exponents into the float32 bit pattern (the shift a
  hardware kernel would do), and by an integer right shift of the int32 sums (the integer-only
  path the paper's hardware takes, which truncates; listed for scale, not used);
* quantizing the activations: ``round(x / scale)`` against ``round(ldexp(x, -k))``, each with its
  own scale search (absmax / 127 against the power-of-two exponent);
* a whole layer: ``Int8DynamicLinear`` against ``AgileQuantLinear`` on the same matmul.

Each variant's result is checked against the float multiply before timing (the power-of-two
paths are exact, so they must agree bit for bit).
"""

from __future__ import annotations

import argparse
import json

import torch

from crossedge.core.bench import measure
from crossedge.quant.methods.agile import AgileQuantLinear, pow2_exponent, pow2_quantize, rescale_exponent_add
from crossedge.quant.modules import Int8DynamicLinear, int_mm_is_exact

SHAPES = ((576, 576), (1536, 576), (576, 1536))
ROWS = (1, 4, 16, 512)


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds after three warm-up calls (core's ``measure``)."""
    return 1e3 * measure(fn, warmup=3, repeats=repeats).median


def rescale_row(out_f: int, rows: int, repeats: int) -> dict[str, float]:
    """Milliseconds of each way to turn int32 sums into float outputs."""
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (rows, out_f), generator=g, dtype=torch.int32)
    ka = torch.randint(-12, -4, (rows, 1), generator=g, dtype=torch.int32)
    kw = torch.randint(-14, -6, (out_f,), generator=g, dtype=torch.int32)
    sa, sw = torch.ldexp(torch.ones(rows, 1), ka), torch.ldexp(torch.ones(out_f), kw)
    variants = {
        "float multiply": lambda: acc.float() * sa * sw,
        "ldexp": lambda: torch.ldexp(acc.float(), ka + kw),
        "exponent add": lambda: rescale_exponent_add(acc, ka + kw),
        "int shift": lambda: acc >> 8,
    }
    expected = variants["float multiply"]()
    for name in ("ldexp", "exponent add"):
        assert torch.equal(variants[name](), expected), f"{name} differs from the float multiply"
    return {name: median_ms(fn, repeats) for name, fn in variants.items()}


def quantize_row(in_f: int, rows: int, repeats: int) -> dict[str, float]:
    """Milliseconds of quantizing activations with an arbitrary scale and with a power-of-two one."""
    x = torch.randn(rows, in_f)

    def arbitrary():
        scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127.0
        return torch.round(x / scale).clamp_(-127, 127).to(torch.int8)

    def pow2():
        k = pow2_exponent(x.abs().amax(-1, keepdim=True), 127)
        return pow2_quantize(x, k, 127).to(torch.int8)

    return {"quantize x/scale": median_ms(arbitrary, repeats), "quantize ldexp": median_ms(pow2, repeats)}


def layer_row(out_f: int, in_f: int, rows: int, matmul: str, repeats: int) -> dict[str, float]:
    """Milliseconds of a whole W8A8 layer and of the Agile-Quant layer on the same matmul."""
    w = torch.randn(out_f, in_f) * 0.05
    plain = Int8DynamicLinear.from_weight(w, None, per_tensor_weight=False, act_granularity="per_token")
    e = pow2_exponent(w.abs().amax(1), 127)
    agile = AgileQuantLinear.from_codes(pow2_quantize(w, e[:, None], 127).to(torch.int8), e, None, 8)
    plain.matmul = agile.matmul = matmul
    x = torch.randn(rows, in_f)
    with torch.inference_mode():
        return {"layer w8a8": median_ms(lambda: plain(x), repeats), "layer agile": median_ms(lambda: agile(x), repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="write the table here")
    parser.add_argument("--smoke", action="store_true", help="one small shape, few repeats (checks the script runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes, rows_list = (SHAPES[:1], ROWS[:1]) if args.smoke else (SHAPES, ROWS)
    repeats = 2 if args.smoke else args.repeats
    matmul = "int_mm" if int_mm_is_exact() else "fp32-codes"
    table = []
    for out_f, in_f in shapes:
        for rows in rows_list:
            row = {"shape": f"{out_f}x{in_f}", "rows": rows}
            row.update(rescale_row(out_f, rows, repeats))
            row.update(quantize_row(in_f, rows, repeats))
            row.update(layer_row(out_f, in_f, rows, matmul, repeats))
            table.append(row)
    columns = [c for c in table[0] if c not in ("shape", "rows")]
    print(f"threads={args.threads} matmul={matmul} torch={torch.__version__} (ms per call, median of {repeats})")
    print(f"{'shape':>10} {'rows':>5} " + " ".join(f"{c:>16}" for c in columns))
    for row in table:
        print(f"{row['shape']:>10} {row['rows']:>5} " + " ".join(f"{row[c]:16.4f}" for c in columns))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"threads": args.threads, "matmul": matmul, "torch": torch.__version__, "rows": table}, f, indent=2
            )


if __name__ == "__main__":
    main()
