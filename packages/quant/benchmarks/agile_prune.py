"""Quality of Agile-Quant's prompt token pruning on long prompts (no timing): next-token perplexity and agreement.

Run: python packages/quant/benchmarks/agile_prune.py --model smollm2-135m --prompt-tokens 1024 --prompts 48 \
        --json /work/results/agile_prune.json

Each prompt is a window of the default corpus's evaluation half; the metric is the negative log
likelihood of the token that follows it (perplexity over the prompts) and how often the pruned
prefill's top-1 next token equals the full prefill's. Rows: the full prompt, then each keep ratio
after each pruning layer, on the float model and (``--agile``) on the Agile-Quant W8A8 model.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from crossedge.core.sources import load_model
from crossedge.quant.calibration import text_batches
from crossedge.quant.evaluation import load_corpus
from crossedge.quant.methods.agile import prune_prompt_tokens


def score(model, prompts, targets, keep_ratio, after_layer, reference=None):
    """Perplexity of the next tokens, top-1 tokens, and agreement with ``reference``'s top-1 tokens."""
    nll, top = [], []
    for ids, target in zip(prompts, targets, strict=True):
        logits, _ = prune_prompt_tokens(model, ids[None], keep_ratio=keep_ratio, after_layer=after_layer)
        nll.append(float(-logits.log_softmax(-1)[0, target]))
        top.append(int(logits.argmax(-1)))
    agree = None if reference is None else sum(a == b for a, b in zip(top, reference, strict=True)) / len(top)
    return math.exp(sum(nll) / len(nll)), top, agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--keep", default="0.75,0.5,0.25")
    parser.add_argument("--after", default="2,8")
    parser.add_argument("--agile", action="store_true", help="also on the agile-quantized model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    corpus = load_corpus()
    ids = tokenizer(corpus.evaluation, return_tensors="pt").input_ids[0]
    stride = args.prompt_tokens + 1
    count = min(args.prompts, (len(ids) - 1) // stride)
    prompts = [ids[i * stride : i * stride + args.prompt_tokens] for i in range(count)]
    targets = [int(ids[i * stride + args.prompt_tokens]) for i in range(count)]
    models = {"fp32": model}
    if args.agile:
        import copy

        from crossedge.quant import quantize_

        calib = text_batches(tokenizer, corpus.calibration, seq_len=512, num_batches=4)
        models["agile"] = quantize_(copy.deepcopy(model), "agile", calibration=calib)
    rows = []
    for label, m in models.items():
        full_ppl, full_top, _ = score(m, prompts, targets, 1.0, 0)
        rows.append({"model": label, "keep": 1.0, "after_layer": None, "ppl": full_ppl, "top1_agree": 1.0})
        print(f"{label:>6} keep=1.00            next-token ppl {full_ppl:9.3f}")
        for after in (int(a) for a in args.after.split(",")):
            for keep in (float(k) for k in args.keep.split(",")):
                ppl, _, agree = score(m, prompts, targets, keep, after, full_top)
                rows.append({"model": label, "keep": keep, "after_layer": after, "ppl": ppl, "top1_agree": agree})
                print(
                    f"{label:>6} keep={keep:.2f} after={after:<3}    next-token ppl {ppl:9.3f}  top-1 agree {agree:.3f}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"model": args.model, "prompt_tokens": args.prompt_tokens, "prompts": count, "rows": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
