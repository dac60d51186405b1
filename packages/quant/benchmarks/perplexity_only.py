"""Perplexity and kernel fraction only (no timing) for method specs, with the eval command's protocol.

Run: python packages/quant/benchmarks/perplexity_only.py MODEL MAX_EVAL_TOKENS CALIB_TOKENS [--cloze=N] SPEC [SPEC ...]
Used for research-path (fake=true) variants whose speed means nothing, and for long-running methods
(edgeqat) measured on a shared machine; ``--cloze=N`` adds the eval command's cloze accuracy.
"""

from __future__ import annotations

import sys

import torch

from crossedge.core import load_model
from crossedge.quant import kernel_fraction, quantize_, text_batches, track_kernel
from crossedge.quant.cloze import cloze_accuracy, cloze_items
from crossedge.quant.evaluation import load_corpus, perplexity


def main() -> None:
    """Print one line per spec: perplexity, change against fp32, kernel fraction."""
    # First-party plugins (crossedge-quant's methods, the model sources) load from their entry points.
    model_name, max_tokens, calib_tokens, specs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    cloze = 0
    if specs and specs[0].startswith("--cloze="):
        cloze, specs = int(specs[0].split("=", 1)[1]), specs[1:]
    torch.set_num_threads(1)
    corpus = load_corpus()
    items = cloze_items(corpus.evaluation, cloze) if cloze else []
    base = None
    for spec in ["fp32", *specs]:
        loaded = load_model(model_name)
        ids = loaded.tokenizer(corpus.evaluation, return_tensors="pt").input_ids[0]
        if spec != "fp32":
            calib = text_batches(loaded.tokenizer, corpus.calibration, seq_len=512, num_batches=calib_tokens // 512)
            quantize_(loaded.model, spec, calibration=calib)
        track_kernel(loaded.model)
        result = perplexity(loaded.model, ids, window=512, max_tokens=max_tokens)
        base = base or result.ppl
        fraction = kernel_fraction(loaded.model)
        shown = "-" if fraction is None else f"{fraction:.3f}"
        accuracy = f", cloze {cloze_accuracy(loaded.model, loaded.tokenizer, items):.3f}" if items else ""
        print(
            f"{spec}: ppl {result.ppl:.3f} ({100 * (result.ppl / base - 1):+.2f}%), kernel fraction {shown}, "
            f"{result.windows} windows of {result.window}{accuracy}",
            flush=True,
        )


if __name__ == "__main__":
    main()
