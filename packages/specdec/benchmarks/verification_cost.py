"""t(k) of smollm2-135m quantized to int8: one verification forward of k drafted tokens after a
200-token prompt, plain SDPA against row-invariant attention on the same model (ms, median).

    python packages/specdec/benchmarks/verification_cost.py [--quant SPEC] [--reps 41] [--threads 2]

Each attention implementation is measured twice, interleaved, so drift on the machine shows.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

from crossedge.core import load_model
from crossedge.core.attention import ROW_INVARIANT
from crossedge.quant import quantize_

TEXT = "The history of the city begins in the Roman era, when a small settlement " * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="rtn:bits=8,keep_lm_head=false")
    parser.add_argument("--reps", type=int, default=41)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="0,3,7")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids[:, :200]
    model = quantize_(loaded.model, args.quant)

    def seconds(implementation: str, k: int) -> float:
        model.config._attn_implementation = implementation
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=ids, cache=cache, use_cache=True)
            times = []
            for _ in range(args.reps):
                start = time.perf_counter()
                model(input_ids=ids[:, : k + 1], cache=cache, use_cache=True, logits_to_keep=k + 1)
                times.append(time.perf_counter() - start)
                cache.crop(-(k + 1))
        return sorted(times)[args.reps // 2] * 1000

    print(f"| k | {args.quant}, SDPA | {args.quant}, row-invariant |")
    print("| ---: | ---: | ---: |")
    for k in (int(v) for v in args.lengths.split(",")):
        a, b, c, d = (seconds(i, k) for i in ("sdpa", ROW_INVARIANT, "sdpa", ROW_INVARIANT))
        print(f"| {k} | {a:.1f}, {c:.1f} | {b:.1f}, {d:.1f} |", flush=True)


if __name__ == "__main__":
    main()
