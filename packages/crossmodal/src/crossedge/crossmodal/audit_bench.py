"""``bench --task audit``: train the encoder-decoder on the ASR corpus, then audit its test utterances."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import asr, audit, encdec

#: test utterances audited by default (each is a few saliency and deletion passes)
UTTERANCES = 25


def audit_bench(
    texts: int = 1000,
    steps: int = 1500,
    seed: int = 0,
    utterances: int = UTTERANCES,
    method: str = "saliency",
    save: str | Path | None = None,
    corpus: asr.AsrCorpus | None = None,
    config: encdec.EncDecConfig | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict:
    """CER of the trained model on the test split and the audit summary over up to ``utterances`` test utterances.

    The audit runs on the reference texts (teacher forcing), so every utterance is audited on
    the tokens it should produce whatever the model decodes. ``progress(stage, n)`` is told
    about ``"train"`` steps and ``"audit"`` utterances.
    """
    if save is not None:  # before hours of training, not after
        encdec.check_save_folder(save)
    corpus = corpus or asr.build_corpus(texts=texts, seed=seed)
    model, losses = encdec.train_encdec(
        corpus, steps=steps, seed=seed, config=config, progress=(lambda n: progress("train", n)) if progress else None
    )
    if save is not None:
        encdec.save(model, save)
    scores = encdec.evaluate(model, corpus, "test")
    audits = []
    for i in corpus.indices("test")[:utterances]:
        tokens = model.tokenizer.encode(corpus.texts[i])
        audits.append(audit.audit(model, corpus.features[i][None], tokens, method=method, seed=seed))
        if progress:
            progress("audit", 1)
    return {
        "task": "audit",
        "model": encdec.FORMAT,
        "config": vars(model.config),
        "texts": texts,
        "steps": steps,
        "seed": seed,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "cer": scores["cer"],
        "examples": [
            {"reference": r, "hypothesis": h}
            for r, h in zip(scores["references"][:5], scores["hypotheses"][:5], strict=True)
        ],
        "audit": audit.summarize(audits),
    }


def format_table(result: dict) -> str:
    """The CER line and the audit's table."""
    return f"test CER {result['cer']:.3f} (final train loss {result['final_loss']:.3f})\n" + audit.format_summary(
        result["audit"]
    )
