"""What one proposal of draft heads costs with the whole vocabulary and with reduced ones (ms, median).

    python packages/specdec/benchmarks/head_vocab_cost.py [--model smollm2-135m] [--backend torch-onednn]
        [--kind medusa] [--heads 4] [--vocabs 0,16384,8192,4096] [--reps 101] [--threads 2]

Untrained heads of ``--kind`` on the prepared target (vocab 0 is the whole vocabulary): the
timed call is the heads' part of a proposal, every depth's logits from one anchor state
(medusa) or one regressive step per depth (clover), then each depth's top 10. One target
forward of one token after a 200-token prompt is timed beside them for scale. The vocabularies
are measured interleaved, round by round, so drift on the machine affects all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from crossedge.core.compose import build_stack, check_stack
from crossedge.specdec.heads import heads_class

TEXT = "The history of the city begins in the Roman era, when a small settlement " * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="torch-onednn")
    parser.add_argument("--kind", default="medusa", choices=("medusa", "clover"))
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocabs", default="0,16384,8192,4096")
    parser.add_argument("--reps", type=int, default=101)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plan = check_stack(args.model, backend=args.backend, purpose="head vocab cost", kv_cache_decoding=True)
    built = build_stack(plan)
    model = built.model
    ids = built.tokenizer(TEXT, return_tensors="pt").input_ids[:, :200]
    hidden = model.config.hidden_size
    calls = {}
    for size in (int(v) for v in args.vocabs.split(",")):
        heads = heads_class(args.kind)(model, args.heads, vocab=size or None)
        if size:
            heads.set_vocab(torch.arange(size))
        calls[size] = proposal(heads, args.kind, hidden)

    def forward() -> float:
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        model(input_ids=ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start

    times: dict[int | str, list[float]] = {size: [] for size in calls}
    times["target forward"] = []
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm
        for rep in range(args.reps):
            for size, call in calls.items():
                start = time.perf_counter()
                call()
                times[size].append(time.perf_counter() - start)
            if rep % 10 == 0:
                times["target forward"].append(forward())
    print(f"{args.model} on {args.backend}, {args.kind} heads x{args.heads}, {args.threads} threads")
    for size, values in times.items():
        name = size if isinstance(size, str) else f"vocab {size or model.config.vocab_size}"
        print(f"{name:>16}: {1000 * statistics.median(values):7.2f} ms (median of {len(values)})")


def proposal(heads, kind: str, hidden: int):
    state = torch.randn(1, 1, hidden, dtype=heads.dtype)
    if kind == "medusa":
        return lambda: heads(state[0, 0]).topk(10, dim=-1)
    window = torch.randn(1, heads.window, hidden, dtype=heads.dtype)

    def clover() -> None:
        augmented = heads.augmented(window, window.shape[1])
        keys, values = heads.decoder_k(augmented), heads.decoder_v(augmented)
        g = augmented[:, -1:]
        for _ in range(heads.depth):
            logits, g = heads.step(g, torch.tensor([[1]]), keys, values, None)
            logits.topk(10, dim=-1)

    return clover


if __name__ == "__main__":
    main()
