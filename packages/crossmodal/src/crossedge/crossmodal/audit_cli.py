"""The bodies of ``crossedge crossmodal explain`` and ``bench --task audit`` (kept out of cli.py, imported lazily)."""

from __future__ import annotations

import json
from pathlib import Path

import click

OUTPUTS = ("audit.json", "audit.png")


def explain_command(
    model_dir: str, audio: str, out_dir: str, reference: str | None, method: str, max_len: int, force: bool
) -> None:
    """Load, transcribe, audit and write ``audit.json`` and ``audit.png`` into ``out_dir``."""
    import torch

    from . import asr, audit, speech

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise audit.AuditError(f"--out {out} is a file; give a folder")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise audit.AuditError(f"{out} already holds {', '.join(existing)}; pick another --out or pass --force")
    model = audit.load_explainable(model_dir)
    features = asr.features(speech.read_wav(audio))[None]
    with torch.no_grad():
        hypothesis = model.transcribe(features, max_len)
    text = hypothesis if reference is None else reference
    tokens = list(model.tokenizer.encode(text))
    result = audit.audit(model, features, tokens, method=method, max_len=max_len)
    report = {
        "audio": str(audio), "model": str(model_dir), "transcription": hypothesis, "reference": reference,
        **result.metrics,
        "maps": {
            "attention_mean": result.attention_mean.tolist(), "memory_saliency": result.memory_saliency.tolist(),
            "input_saliency": result.input_saliency.tolist(),
        },
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    audit.plot(result, features, out / "audit.png", model.frames_per_position)
    click.echo(f"transcription: {hypothesis!r}" + (f"  (audited on reference {reference!r})" if reference else ""))
    click.echo(audit.format_summary(audit.summarize([result])))
    click.echo(f"wrote {out / 'audit.json'} and {out / 'audit.png'}")


def audit_bench_command(
    texts: int, steps: int, save_dir: str | None, json_out: str | None, model_dir: str | None = None
) -> None:
    """Run :func:`audit_bench.audit_bench` with progress bars; print the table, optionally write JSON."""
    from tqdm.auto import tqdm

    from . import asr, audit
    from .audit_bench import UTTERANCES, audit_bench, format_table
    from .progress import stage_bars

    if model_dir is not None and save_dir is not None:  # before the corpus is spoken
        raise audit.AuditError("--model audits a saved model and --save saves a trained one; give one of them")
    if model_dir is not None and not (Path(model_dir) / audit.WEIGHTS).is_file():
        raise audit.AuditError(f"{Path(model_dir) / audit.WEIGHTS} does not exist; give a folder saved by crossedge")

    with tqdm(total=texts, desc="speech", unit="utt") as bar:
        corpus = asr.build_corpus(texts=texts, progress=bar.update)
    totals = {"train": steps, "audit": min(UTTERANCES, len(corpus.indices("test")))}
    with stage_bars(totals, {"audit": "utt"}) as progress:
        result = audit_bench(
            texts=texts, steps=steps, save=save_dir, corpus=corpus, progress=progress, model_dir=model_dir
        )
    click.echo(format_table(result))
    if save_dir:
        click.echo(f"saved the model to {save_dir}")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
