"""``crossedge ondevice keyboard ...``: train the model, decode taps or a word, evaluate against the baseline."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_output import write_json as _write_json

JSON_OPTION = click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here as JSON."
)
THREADS_OPTION = click.option("--threads", default=1, show_default=True, help="Torch threads (decoding is timed).")
MODEL_OPTION = click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A .safetensors file written by `keyboard train`.",
)
SCORER_OPTION = click.option(
    "--scorer",
    type=click.Choice(["lexicon-only", "char-model", "char-model+counts"]),
    default="char-model+counts",
    show_default=True,
    help="lexicon-only is the baseline: spatial likelihood plus word frequency, no character model.",
)


def _noise_options(function):
    for option in reversed(
        [
            click.option("--sigma", default=0.45, show_default=True, help="Touch offset s.d., key widths."),
            click.option("--skip", default=0.0, show_default=True, help="Chance a letter's tap is skipped."),
            click.option("--extra", default=0.0, show_default=True, help="Chance of a stray tap after a letter."),
            click.option("--seed", default=0, show_default=True, help="Seeds the simulated taps."),
        ]
    ):
        function = option(function)
    return function


@click.group("keyboard")
def keyboard() -> None:
    """Keyboard decoding: noisy taps -> lexicon words with a small character model, corrections and completions."""


@keyboard.command("train")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Model file (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace --out even when it is not a keyboard model written here.")
@click.option("--steps", default=2000, show_default=True, help="Adam steps over random windows of training text.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--window", default=64, show_default=True, help="Characters per training window.")
@click.option("--lr", default=6e-3, show_default=True)
@click.option("--hidden", default=192, show_default=True, help="GRU width.")
@click.option("--embed", default=24, show_default=True, help="Character embedding width.")
@click.option("--layers", default=1, show_default=True, help="GRU layers.")
@click.option(
    "--min-count", default=1, show_default=True, help="Training-split count a word needs to enter the lexicon."
)
@click.option("--seed", default=0, show_default=True)
@THREADS_OPTION
@JSON_OPTION
def train_command(
    out, force, steps, batch_size, window, lr, hidden, embed, layers, min_count, seed, threads, json_out
) -> None:
    """Build the lexicon and train the character model on the training split; save both as safetensors."""
    from .corpus import load_corpus
    from .experiment import pinned_threads, train_keyboard
    from .model import CharModelConfig, check_writable
    from .training import TrainConfig

    check_writable(out, force=force)  # refuse before training, not after
    corpus = load_corpus()
    with pinned_threads(threads):
        model, result = train_keyboard(
            corpus,
            TrainConfig(steps=steps, batch_size=batch_size, window=window, lr=lr, seed=seed),
            CharModelConfig(embed=embed, hidden=hidden, layers=layers),
            min_count=min_count,
            progress=True,
        )
    model.save(out, force=force)
    parameters = sum(p.numel() for p in model.char_model.parameters())
    click.echo(f"lexicon            {len(model.lexicon)} words from {len(corpus.train_words)} training words")
    click.echo(f"character model    {parameters} parameters, {model.char_model.config.to_dict()}")
    click.echo(
        f"training           {steps} steps in {result.seconds:.1f} s, "
        f"loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
    )
    click.echo(f"held-out           {result.test_bits_per_char:.3f} bits per character")
    click.echo(f"saved {out}")
    _write_json(json_out, {"model": str(out), "parameters": parameters, **model.record})


@keyboard.command("decode")
@MODEL_OPTION
@click.option("--word", default=None, help="Simulate noisy taps for this word, then decode them.")
@click.option(
    "--taps", "taps_text", default=None, help="Touch points 'x,y x,y ...' in key widths (QWERTY, q at 0.5,0.5)."
)
@click.option("--context", default="", help="Words typed before, for the character model's context.")
@click.option("--beam", default=8, show_default=True)
@click.option("--k", default=3, show_default=True, help="Suggestions shown.")
@SCORER_OPTION
@_noise_options
@THREADS_OPTION
@JSON_OPTION
def decode_command(model_path, word, taps_text, context, beam, k, scorer, sigma, skip, extra, seed, threads, json_out):
    """Correct a tap sequence (or a word typed with simulated noise), with completions after each tap."""
    import time

    import numpy as np

    from crossedge.core import CrossedgeError

    from .experiment import decoder_config, make_decoder, parse_words, pinned_threads
    from .layout import QWERTY
    from .model import KeyboardModel
    from .noise import TapNoise, TapSimulator

    if (word is None) == (taps_text is None):
        raise CrossedgeError("give exactly one of --word (simulated taps) or --taps 'x,y x,y ...'")
    noise = TapNoise(sigma, skip, extra)
    if word is not None:
        points = TapSimulator(noise, seed=seed).taps(word.lower())
    else:
        try:
            points = np.array([[float(v) for v in pair.split(",")] for pair in taps_text.split()], dtype=np.float64)
        except ValueError as exc:
            raise CrossedgeError(f"--taps must be 'x,y x,y ...' numbers, got {taps_text!r}") from exc
        if points.ndim != 2 or points.shape[1] != 2 or not len(points):
            raise CrossedgeError(f"--taps must be 'x,y x,y ...' pairs, got {taps_text!r}")
    model = KeyboardModel.load(model_path)
    decoder = make_decoder(model, scorer, decoder_config(noise, beam))
    steps = []
    with pinned_threads(threads):
        for previous in parse_words(context):
            decoder.commit(previous)
        for point in points:
            start = time.perf_counter()
            decoder.tap(point)
            shown = decoder.completions(k)
            seconds = time.perf_counter() - start
            steps.append(
                {
                    "tap": [round(float(v), 3) for v in point],
                    "key": QWERTY.nearest_key(point),
                    "completions": [s.word for s in shown],
                    "ms": 1e3 * seconds,
                }
            )
        start = time.perf_counter()
        corrections = decoder.finish(k)
        finish_ms = 1e3 * (time.perf_counter() - start)
    literal = "".join(s["key"] for s in steps)
    click.echo(f"taps ({len(points)}), nearest keys: {literal}" + (f"  (intended: {word})" if word else ""))
    for i, s in enumerate(steps, 1):
        click.echo(
            f"  {i:2d} {s['key']} ({s['tap'][0]:.2f}, {s['tap'][1]:.2f})  {s['ms']:.2f} ms"
            f"  -> {', '.join(s['completions'])}"
        )
    click.echo(f"corrections ({scorer}, beam {beam}, {finish_ms:.2f} ms): " + ", ".join(s.word for s in corrections))
    _write_json(
        json_out,
        {
            "word": word,
            "literal": literal,
            "scorer": scorer,
            "beam": beam,
            "steps": steps,
            "corrections": [{"word": s.word, "score": s.score} for s in corrections],
            "finish_ms": finish_ms,
        },
    )


@keyboard.command("eval")
@MODEL_OPTION
@click.option("--words", default=1000, show_default=True, help="Held-out words typed.")
@click.option(
    "--calibration-words", default=150, show_default=True, help="Training-split words the beam cost is timed on."
)
@click.option(
    "--budget-ms", default=2.0, show_default=True, help="Decode time per keystroke (p90) each decoder must meet."
)
@click.option("--headroom", default=0.8, show_default=True, help="Beams are chosen to fit this fraction of the budget.")
@click.option("--widths", default="1,2,4,8,16,32", show_default=True, help="Beam widths to time.")
@click.option("--k", default=3, show_default=True, help="Completions shown and corrections considered.")
@click.option("--scorers", default="lexicon-only,char-model+counts", show_default=True)
@_noise_options
@THREADS_OPTION
@JSON_OPTION
def eval_command(
    model_path,
    words,
    calibration_words,
    budget_ms,
    headroom,
    widths,
    k,
    scorers,
    sigma,
    skip,
    extra,
    seed,
    threads,
    json_out,
):
    """Pick each decoder's widest beam under the budget, then WER, keystroke savings and latency on held-out text."""
    from crossedge.core.bench import format_table

    from .experiment import corpus_of, evaluate_under_budget, parse_widths
    from .model import KeyboardModel
    from .noise import TapNoise

    model = KeyboardModel.load(model_path)
    corpus = corpus_of(model)
    rows, costs = evaluate_under_budget(
        model,
        corpus,
        TapNoise(sigma, skip, extra),
        scorers=[s.strip() for s in scorers.split(",") if s.strip()],
        widths=parse_widths(widths),
        budget_s=budget_ms / 1e3,
        headroom=headroom,
        words=words,
        calibration_words=calibration_words,
        k=k,
        seed=seed,
        threads=threads,
    )
    click.echo(f"beam cost per keystroke ({calibration_words} training-split words, {threads} thread(s)):")
    click.echo(format_table(costs, ["scorer", "beam", "median_ms", "p90_ms", "keystrokes"]))
    click.echo("")
    click.echo(
        f"held-out ({words} words, sigma {sigma:g}, skip {skip:g}, extra {extra:g}, budget {budget_ms:g} ms p90):"
    )
    columns = [
        "scorer",
        "beam",
        "wer",
        "wer_in_lexicon",
        "wer_literal",
        "keystroke_savings",
        "latency_median_ms",
        "latency_p90_ms",
    ]
    click.echo(format_table(rows, columns))
    _write_json(
        json_out,
        {"model": str(model_path), "budget_ms": budget_ms, "threads": threads, "costs": costs, "results": rows},
    )
