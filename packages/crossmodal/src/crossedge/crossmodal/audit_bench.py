"""``bench --task audit``: train the encoder-decoder on the ASR corpus (or open a saved model), then audit
its test utterances."""

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
    model_dir: str | Path | None = None,
) -> dict:
    """CER of the trained model on the test split and the audit summary over up to ``utterances`` test utterances.

    The audit runs on the reference texts (teacher forcing), so every utterance is audited on
    the tokens it should produce whatever the model decodes. ``progress(stage, n)`` is told
    about ``"train"`` steps and ``"audit"`` utterances.

    ``model_dir`` audits a saved model instead (any format :func:`audit.load_explainable` opens:
    the encoder-decoder or a Zipper), untrained here; give the ``texts`` and ``seed`` it was
    trained with, so that the test split is one it never saw.
    """
    if model_dir is not None and save is not None:
        raise audit.AuditError("--model audits a saved model and --save saves a trained one; give one of them")
    if save is not None:  # before hours of training, not after
        encdec.check_save_folder(save)
    model = audit.load_explainable(model_dir) if model_dir is not None else None
    corpus = corpus or asr.build_corpus(texts=texts, seed=seed)
    losses: list[float] = []
    if model is None:
        model, losses = encdec.train_encdec(
            corpus,
            steps=steps,
            seed=seed,
            config=config,
            progress=(lambda n: progress("train", n)) if progress else None,
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
        "model": encdec.FORMAT if model_dir is None else str(model_dir),
        "config": vars(model.config),
        "texts": texts,
        "steps": steps if model_dir is None else 0,
        "seed": seed,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]) if losses else None,
        "cer": scores["cer"],
        "examples": [
            {"reference": r, "hypothesis": h}
            for r, h in zip(scores["references"][:5], scores["hypotheses"][:5], strict=True)
        ],
        "audit": audit.summarize(audits),
    }


def format_table(result: dict) -> str:
    """The CER line and the audit's table."""
    trained = "" if result["final_loss"] is None else f" (final train loss {result['final_loss']:.3f})"
    return f"test CER {result['cer']:.3f}{trained}\n" + audit.format_summary(result["audit"])
