"""``bench --task zipper-asr``: a speech tower zipped into the frozen text tower, against a speech-only baseline.

Stages, all on one corpus (:func:`asr.build_corpus`, split by text):

1. ``speech``: pretrain the speech tower alone with CTC (its greedy CTC CER is reported);
2. ``zipper``: zip it into the text tower and train the blocks (the tower's text-only
   perplexity on the test texts is measured before and after, and must not move);
3. ``baseline``: the same speech tower with a character decoder of about as many trainable
   parameters, trained from scratch with the same steps, batch size and learning rate;
4. ``eval``: greedy CER of all three on the test split.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import asr, zipper

STAGES = ("speech", "zipper", "baseline", "eval")


def _digests(module: torch.nn.Module) -> dict[str, str]:
    """sha256 of every parameter and buffer's bytes (a copy of the tower would double its memory)."""
    import hashlib

    return {
        k: hashlib.sha256(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for k, v in module.state_dict().items()
    }


def zipper_bench(
    texts: int = 3000,
    steps: int = 300,
    speech_steps: int = 600,
    seed: int = 0,
    lr: float = 3e-3,
    speech_lr: float = 2e-3,
    batch_size: int = 16,
    config: zipper.ZipperConfig | None = None,
    speech_config: zipper.SpeechTowerConfig | None = None,
    text_tower: Any = None,
    text_name: str = zipper.TEXT_TOWER,
    corpus: asr.AsrCorpus | None = None,
    save: str | Path | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict:
    """Train and score the Zipper, the speech-only baseline and the CTC speech tower; a JSON-ready dict.

    ``text_tower`` (anything with ``model`` and ``tokenizer``) replaces loading ``text_name``
    through :func:`crossedge.core.sources.load_model`. ``progress(stage, n)`` is told about
    ``"speech"``, ``"zipper"`` and ``"baseline"`` steps and ``"eval"`` models.
    """

    def tell(stage: str) -> Callable[[int], None] | None:
        return (lambda n: progress(stage, n)) if progress else None

    if save is not None:
        zipper.check_save_folder(save)  # before any training: a refused folder must not cost the run
    started = time.perf_counter()
    times: dict[str, float] = {}
    corpus = corpus or asr.build_corpus(texts=texts, seed=seed)
    if text_tower is None:
        from crossedge.core.sources import load_model

        text_tower = load_model(text_name)
    tick = time.perf_counter()
    speech, speech_losses = zipper.train_speech_tower(
        corpus,
        steps=speech_steps,
        seed=seed,
        batch_size=batch_size,
        lr=speech_lr,
        config=speech_config,
        progress=tell("speech"),
    )
    times["speech"] = time.perf_counter() - tick

    # each model gets its own copy of the pretrained tower (a tuned one must not carry over to the next)
    model = zipper.ZipperModel(text_tower.model, text_tower.tokenizer, copy.deepcopy(speech), config, text_name)
    test_texts = [corpus.texts[i] for i in corpus.indices("test")]
    probe = model.tokenizer.encode(test_texts[0])
    probe_tokens = torch.tensor([[model.bos_id, *probe]])
    before_params = _digests(model.text)
    before_logits = model.decode(None, probe_tokens)[0].detach().clone()
    ppl_before = zipper.text_perplexity(model, test_texts)

    tick = time.perf_counter()
    model, zipper_losses = zipper.train_zipper(
        model, corpus, steps=steps, seed=seed, batch_size=batch_size, lr=lr, progress=tell("zipper")
    )
    times["zipper"] = time.perf_counter() - tick
    ppl_after = zipper.text_perplexity(model, test_texts)
    with torch.no_grad():
        logits_identical = bool(torch.equal(before_logits, model.decode(None, probe_tokens)[0]))
    params_unchanged = before_params == _digests(model.text)
    if save is not None:
        zipper.save(model, save)

    trainable = zipper.count(model.trainable())
    decoder = zipper.matched_decoder(speech, trainable)
    tick = time.perf_counter()
    baseline, baseline_losses = zipper.train_baseline(
        copy.deepcopy(speech), corpus, decoder, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
        tune_speech=model.config.tune_speech, progress=tell("baseline"),
    )  # fmt: skip
    times["baseline"] = time.perf_counter() - tick

    tick = time.perf_counter()
    scores = {}
    for name, scored in (("zipper", model), ("speech_only", baseline), ("ctc", speech)):
        with torch.no_grad():
            scores[name] = zipper.evaluate(scored, corpus, "test")
        if progress:
            progress("eval", 1)
    times["eval"] = time.perf_counter() - tick

    def tail(losses: list[float]) -> float:
        return float(np.mean(losses[-50:]))

    return {
        "task": "zipper-asr",
        "model": zipper.FORMAT,
        "text_tower": model.text_identity,
        "inserted_after_layers": model.inserted,
        "config": vars(model.config),
        "speech_config": vars(speech.config),
        "baseline_decoder": vars(decoder),
        "texts": len(corpus.texts),
        "train_utterances": len(corpus.indices("train")),
        "test_utterances": len(test_texts),
        "steps": steps,
        "speech_steps": speech_steps,
        "lr": lr,
        "speech_lr": speech_lr,
        "batch_size": batch_size,
        "seed": seed,
        "trainable_parameters": {
            "zipper": trainable,
            "speech_only": zipper.count(baseline.trainable()),
            "speech_tower": zipper.count(list(speech.parameters())),
        },
        "cer": {name: s["cer"] for name, s in scores.items()},
        "final_loss": {
            "speech_ctc": tail(speech_losses),
            "zipper": tail(zipper_losses),
            "speech_only": tail(baseline_losses),
        },  # fmt: skip
        "losses": {"speech_ctc": speech_losses, "zipper": zipper_losses, "speech_only": baseline_losses},
        "frozen_text_tower": {
            "perplexity_before": ppl_before,
            "perplexity_after": ppl_after,
            "perplexity_identical": ppl_before == ppl_after,
            "logits_identical": logits_identical,
            "parameters_unchanged": params_unchanged,
        },
        "gates": [round(float(torch.tanh(b.gate.detach())), 4) for b in model.blocks],
        "examples": [
            {"reference": r, "zipper": z, "speech_only": b, "ctc": c}
            for r, z, b, c in zip(
                scores["zipper"]["references"][:8],
                scores["zipper"]["hypotheses"][:8],
                scores["speech_only"]["hypotheses"][:8],
                scores["ctc"]["hypotheses"][:8],
                strict=True,
            )
        ],  # fmt: skip
        "seconds": {**{k: round(v, 1) for k, v in times.items()}, "total": round(time.perf_counter() - started, 1)},
    }


def format_table(result: dict) -> str:
    """CER and trainable parameters per model, and the frozen tower's perplexity before and after."""
    counts = result["trainable_parameters"]
    rows = [
        ("zipper (frozen text tower + blocks)", result["cer"]["zipper"], counts["zipper"]),
        ("speech-only (tower + char decoder)", result["cer"]["speech_only"], counts["speech_only"]),
        ("speech tower alone (CTC)", result["cer"]["ctc"], counts["speech_tower"]),
    ]
    lines = [f"{'model':<38}{'test CER':>9}{'trainable':>12}"]
    lines += [f"{name:<38}{cer:>9.3f}{n:>12,}" for name, cer, n in rows]
    frozen = result["frozen_text_tower"]
    same = "identical" if frozen["perplexity_identical"] and frozen["logits_identical"] else "CHANGED"
    lines.append(
        f"text tower {result['text_tower']['name']} text-only perplexity: before {frozen['perplexity_before']:.4f}, "
        f"after {frozen['perplexity_after']:.4f} ({same}; parameters "
        f"{'unchanged' if frozen['parameters_unchanged'] else 'CHANGED'})"
    )
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """A PNG: test CER per model, and the training losses of the three stages."""
    from .charts import chart

    with chart(path, (10, 3.8), cols=2) as (left, right):
        names = ["zipper", "speech_only", "ctc"]
        left.bar(["Zipper", "speech-only", "CTC tower"], [result["cer"][n] for n in names],
                 color=["tab:green", "tab:blue", "tab:gray"])  # fmt: skip
        left.set_ylabel("test CER")
        left.set_title(f"zipper-asr ({result['test_utterances']} test utterances)")
        for name, losses in result["losses"].items():
            right.plot(losses, label=name, alpha=0.8)
        right.set_yscale("log")
        right.set_xlabel("step")
        right.set_ylabel("train loss")
        right.legend(fontsize=8)
    return Path(path)
