"""``crossedge specdec train-dllm`` and ``crossedge specdec parallel-bench``."""

from __future__ import annotations

import sys

import click

DEFAULT_STRATEGIES = (
    "low-confidence:k=1;low-confidence:k=2;low-confidence:k=4;threshold:tau=0.9;threshold:tau=0.7;token-editing"
)


@click.command(name="train-dllm")
@click.option("--tasks", "task_spec", default="parallelbench", show_default=True, help="Tasks or groups, comma list.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New or empty folder for the model.")
@click.option(
    "--objective",
    type=click.Choice(["diffusion", "autoregressive"]),
    default="diffusion",
    show_default=True,
    help="diffusion: the masked diffusion LM; autoregressive: the same architecture trained causally (baseline).",
)
@click.option("--steps", type=click.IntRange(min=1), default=3500, show_default=True, help="Optimizer steps.")
@click.option(
    "--ar-warmup",
    type=click.FloatRange(min=0.0, max=1.0, max_open=True),
    default=0.5,
    show_default=True,
    help="diffusion: share of the steps trained causally first (adapting an AR model, as Dream and DiffuLLaMA do).",
)
@click.option(
    "--edit-ratio",
    type=click.FloatRange(min=0.0, max=1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="diffusion: share of unmasked answer tokens replaced by random ones to restore (LLaDA2.1's "
    "token-to-token objective, for token-editing).",
)
@click.option(
    "--init",
    "init_name",
    default=None,
    help="Go on training this diffusion LM folder (its tokenizer, canvas and size) instead of a new model.",
)
@click.option("--max-minutes", type=float, default=30.0, show_default=True, help="Stop training after this.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--hidden", type=click.IntRange(min=8), default=192, show_default=True, help="Model width.")
@click.option("--layers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--block-length", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
@click.option("--seed", type=int, default=0, show_default=True)
def train_dllm(
    task_spec,
    out,
    objective,
    steps,
    ar_warmup,
    edit_ratio,
    init_name,
    max_minutes,
    batch_size,
    lr,
    hidden,
    layers,
    heads,
    block_length,
    threads,
    seed,
):
    """Train a small masked diffusion LM (or its autoregressive twin) on ParallelBench-style tasks, on CPU."""
    import torch
    from tqdm import tqdm

    from crossedge.core import CrossedgeError

    from . import tasks as T
    from . import train as TR

    if hidden % heads:
        raise CrossedgeError(f"--hidden {hidden} must be a multiple of --heads {heads}")
    if threads:
        torch.set_num_threads(threads)
    if edit_ratio and objective != "diffusion":
        raise CrossedgeError("--edit-ratio trains a diffusion LM; drop it for --objective autoregressive")
    if init_name is not None:
        from .model import load_diffusion_lm

        model = load_diffusion_lm(init_name)
        if model.info.objective != "diffusion":
            raise CrossedgeError(f"--init {init_name} is a {model.info.objective} model; give a diffusion LM folder")
        # The model was adapted already; its size and canvas come with it, and its tasks unless it has none.
        objective, ar_warmup = "diffusion", 0.0
        model.info.tasks = model.info.tasks or T.resolve_tasks(task_spec)
    else:
        names = T.resolve_tasks(task_spec)
        model = TR.new_model(
            names, objective=objective, hidden=hidden, layers=layers, heads=heads, block_length=block_length, seed=seed
        )
    TR.check_out(out)  # refuse a folder we may not write before spending the training time
    bar = tqdm(total=steps, desc=f"train-dllm ({objective})", unit="step", disable=not sys.stderr.isatty())

    def progress(step: int, loss: float, seconds: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    report = TR.train(
        model,
        steps=steps,
        seconds=max_minutes * 60,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        ar_warmup=ar_warmup if objective == "diffusion" else 0.0,
        edit_ratio=edit_ratio,
        progress=progress,
    )
    bar.close()
    TR.save_new(model, out)
    click.echo(
        f"trained {report.parameters / 1e6:.2f}M parameters ({objective}) for {report.steps} steps in "
        f"{report.seconds:.0f} s: loss {report.final_loss:.3f}, held-out {report.held_out_loss:.3f}; "
        f"canvas {model.info.gen_length} in blocks of {model.info.block_length}; saved to {out}"
    )


@click.command(name="parallel-bench")
@click.option("--model", "model_name", default=None, help="A diffusion LM folder (train-dllm) or LLaDA-style folder.")
@click.option(
    "--strategies",
    default=DEFAULT_STRATEGIES,
    show_default=True,
    help="Unmasking strategy specs separated by ';' (each one method).",
)
@click.option("--ar", "ar_name", default=None, help="The autoregressive twin (train-dllm --objective autoregressive).")
@click.option("--lexical", "lexical_name", default=None, help="A lexical-unit model (train-lexical).")
@click.option(
    "--lexical-taus", default="0.9", show_default=True, help="Confidence thresholds for --lexical, separated by ';'."
)
@click.option(
    "--speculative",
    default=None,
    help="Drafter specs run losslessly on --ar, separated by ';' (for example 'copy;copy,history').",
)
@click.option("--tasks", "task_spec", default=None, help="Tasks or groups [default: the model's own tasks].")
@click.option("--per-task", type=click.IntRange(min=1), default=50, show_default=True, help="Held-out examples a task.")
@click.option("--block-length", type=click.IntRange(min=1), default=None, help="Override the model's block length.")
@click.option("--stop-at-eos", is_flag=True, help="End the canvas at a block that decodes end-of-text.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write accuracy curves (PNG).")
def parallel_bench(
    model_name,
    strategies,
    ar_name,
    lexical_name,
    lexical_taus,
    speculative,
    task_spec,
    per_task,
    block_length,
    stop_at_eos,
    seed,
    threads,
    json_path,
    plot_path,
):
    """Accuracy per task against tokens per forward for each unmasking strategy (and the AR baseline)."""
    import shlex

    import torch
    from tqdm import tqdm

    from crossedge.core import CrossedgeError
    from crossedge.core.bench import format_table
    from crossedge.core.specs import split_alternatives

    from . import bench as B
    from . import tasks as T
    from .model import load_diffusion_lm

    if model_name is None and ar_name is None and lexical_name is None:
        raise CrossedgeError("give --model (a diffusion LM), --ar (its autoregressive twin) and/or --lexical")
    try:
        taus = [float(t) for t in lexical_taus.split(";") if t.strip()]
    except ValueError as exc:
        raise CrossedgeError(f"--lexical-taus takes numbers separated by ';', not {lexical_taus!r}") from exc
    if threads:
        torch.set_num_threads(threads)
    specs = split_alternatives(strategies, kind="unmasking strategy") if model_name else []
    drafting = split_alternatives(speculative, kind="drafter spec") if speculative else []
    if drafting and ar_name is None:
        raise CrossedgeError("--speculative runs on the autoregressive twin: pass --ar as well")
    model = load_diffusion_lm(model_name) if model_name else None
    twin = load_diffusion_lm(ar_name) if ar_name else None
    lexical = load_diffusion_lm(lexical_name) if lexical_name else None
    trained_on = (model or twin or lexical).info.tasks
    names = T.resolve_tasks(task_spec) if task_spec else trained_on
    if not names:
        raise CrossedgeError("the model does not record its tasks: pass --tasks")
    total = per_task * len(names) * (len(specs) + (twin is not None) + len(drafting) + (len(taus) if lexical else 0))
    with tqdm(total=total, desc="parallel-bench", unit="answer", disable=not sys.stderr.isatty()) as bar:
        rows = B.run_parallel_bench(
            model,
            specs,
            names,
            per_task=per_task,
            seed=seed,
            autoregressive=twin,
            lexical=lexical,
            lexical_taus=taus,
            speculative=drafting,
            block_length=block_length,
            stop_at_eos=stop_at_eos,
            progress=lambda: bar.update(1),
        )
    columns = ["method", "task", "n", "accuracy", "score", "tok/fwd", "canvas/fwd", "vs fixed-k"]
    if drafting:
        columns.append("same as AR")
    click.echo(format_table(B.rows_table(rows), columns))
    if json_path:
        command = "crossedge specdec parallel-bench " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        B.write_json(rows, json_path, command=command, threads=torch.get_num_threads(), stop_at_eos=stop_at_eos)
        click.echo(f"wrote {json_path}")
    if plot_path:
        B.plot(rows, plot_path)
        click.echo(f"wrote {plot_path}")


@click.command(name="train-filter")
@click.option("--model", "model_name", required=True, help="The diffusion LM folder (train-dllm).")
@click.option(
    "--out", default=None, type=click.Path(dir_okay=False), help="Filter file [default: MODEL/learn2pd.safetensors]."
)
@click.option("--per-task", type=click.IntRange(min=1), default=40, show_default=True, help="Training examples a task.")
@click.option("--epochs", type=click.IntRange(min=1), default=300, show_default=True, help="Full-batch epochs.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
@click.option("--seed", type=int, default=0, show_default=True)
def train_filter(model_name, out, per_task, epochs, threads, seed):
    """Train Learn2PD's filter on the model's own one-token-per-forward decoding of training examples."""
    import time
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from crossedge.core import CrossedgeError

    from . import learn2pd as L
    from . import tasks as T
    from .model import load_diffusion_lm

    if threads:
        torch.set_num_threads(threads)
    model = load_diffusion_lm(model_name)
    if not model.bidirectional:
        raise CrossedgeError(f"{model_name} is an autoregressive model; Learn2PD filters a diffusion LM")
    if out is None and not (Path(model_name) / "dllm.json").is_file():
        raise CrossedgeError(f"{model_name} is not a folder written by train-dllm: pass --out FILE for the filter")
    path = Path(out) if out else Path(model_name) / "learn2pd.safetensors"
    # Seeds apart from both the held-out split and the model's own training draws.
    examples = T.make_examples(model.info.tasks, per_task, seed=seed + 7919)
    start = time.perf_counter()
    with tqdm(total=len(examples), desc="learn2pd traces", unit="answer", disable=not sys.stderr.isatty()) as bar:
        features, labels = L.collect(model, examples, progress=lambda: bar.update(1))
    net, stats = L.train_filter(features, labels, epochs=epochs, seed=seed)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    L.save_filter(net, path, stats=stats, model=str(model_name))
    click.echo(
        f"trained the Learn2PD filter on {stats['rows']} position states ({stats['final']:.2f} already final) in "
        f"{stats['seconds']:.0f} s: training accuracy {stats['accuracy']:.3f}; saved to {path}"
    )


@click.command(name="train-cd4lm")
@click.option("--model", "model_name", required=True, help="The teacher diffusion LM folder (train-dllm).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New or empty folder for the student.")
@click.option(
    "--per-task", type=click.IntRange(min=1), default=40, show_default=True, help="Teacher trajectories a task."
)
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True, help="Distillation steps.")
@click.option("--max-minutes", type=float, default=15.0, show_default=True, help="Stop distilling after this.")
@click.option(
    "--jump", type=click.IntRange(min=1), default=4, show_default=True, help="Longest jump along a trajectory."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
@click.option("--seed", type=int, default=0, show_default=True)
def train_cd4lm(model_name, out, per_task, steps, max_minutes, jump, batch_size, lr, threads, seed):
    """Distil a student that jumps several decoding steps at once (CD4LM) from a diffusion LM."""
    import torch
    from tqdm import tqdm

    from crossedge.core import CrossedgeError

    from . import cd4lm as C
    from . import tasks as T
    from . import train as TR
    from .model import load_diffusion_lm

    if threads:
        torch.set_num_threads(threads)
    teacher = load_diffusion_lm(model_name)
    if not teacher.bidirectional:
        raise CrossedgeError(f"{model_name} is an autoregressive model; CD4LM distils a diffusion LM")
    TR.check_out(out)  # refuse a folder we may not write before spending the time
    examples = T.make_examples(teacher.info.tasks, per_task, seed=seed + 104729)
    with tqdm(total=len(examples), desc="teacher trajectories", unit="answer", disable=not sys.stderr.isatty()) as bar:
        trajs = C.trajectories(teacher, examples, progress=lambda: bar.update(1))
    with tqdm(total=steps, desc="cd4lm", unit="step", disable=not sys.stderr.isatty()) as bar:
        student, record = C.distill(
            teacher,
            trajs,
            steps=steps,
            seconds=max_minutes * 60,
            batch_size=batch_size,
            jump=jump,
            lr=lr,
            seed=seed,
            progress=lambda *_: bar.update(1),
        )
    TR.save_new(student, out)
    click.echo(
        f"distilled a student from {len(trajs)} teacher trajectories for {record['steps']} steps in "
        f"{record['seconds']:.0f} s: loss {record['final_loss']:.3f}; saved to {out}"
    )


@click.command(name="train-lexical")
@click.option(
    "--model",
    "model_name",
    required=True,
    help="An autoregressive twin (train-dllm --objective autoregressive) or a causal LM (smollm2-135m, a folder).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New or empty folder for the result.")
@click.option("--span", type=click.IntRange(min=1), default=3, show_default=True, help="Guesses after the next token.")
@click.option("--steps", type=click.IntRange(min=1), default=800, show_default=True, help="Fine-tuning steps.")
@click.option("--max-minutes", type=float, default=10.0, show_default=True, help="Stop fine-tuning after this.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Rows a step [64 for a twin, 8 for an LM]."
)
@click.option("--lr", type=float, default=None, help="Learning rate [5e-4 for a twin, 1e-4 for an LM].")
@click.option(
    "--tuned-layers", type=click.IntRange(min=0), default=2, show_default=True, help="LM: top layers fine-tuned."
)
@click.option("--prompts", type=click.IntRange(min=8), default=96, show_default=True, help="LM: corpus prompts.")
@click.option("--prompt-tokens", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads (default: torch's).")
@click.option("--seed", type=int, default=0, show_default=True)
def train_lexical(
    model_name,
    out,
    span,
    steps,
    max_minutes,
    batch_size,
    lr,
    tuned_layers,
    prompts,
    prompt_tokens,
    new_tokens,
    threads,
    seed,
):
    """Fine-tune an autoregressive model to emit confident runs of tokens in one forward (lexical units)."""
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from .model import DLLM_FILE

    if threads:
        torch.set_num_threads(threads)
    bar = tqdm(total=steps, desc="train-lexical", unit="step", disable=not sys.stderr.isatty())
    if (Path(model_name) / DLLM_FILE).is_file():
        from . import lexical as X
        from . import train as TR
        from .model import load_diffusion_lm

        base = load_diffusion_lm(model_name)
        TR.check_out(out)
        tuned, record = X.fine_tune(
            base,
            span=span,
            steps=steps,
            seconds=max_minutes * 60,
            batch_size=batch_size or 64,
            lr=lr or 5e-4,
            seed=seed,
            progress=lambda *_: bar.update(1),
        )
        bar.close()
        TR.save_new(tuned, out)
        click.echo(
            f"fine-tuned for lexical units of up to {span + 1} tokens: {record['steps']} steps in "
            f"{record['seconds']:.0f} s, loss {record['final_loss']:.3f}; saved to {out}"
        )
        return
    from crossedge.core import load_model

    from ..exit_head import claim_folder, corpus_texts, self_generated_sequences, training_prompts
    from . import lexical_lm as U

    claim_folder(out, lambda p: p.name == U.WEIGHTS_NAME, what="lexical units", error=U.LexicalUnitError)
    loaded = load_model(model_name)
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = training_prompts(tokenizer, corpus_texts(), prompts, prompt_tokens, seed=seed)
    sequences = self_generated_sequences(model, rows, new_tokens, progress=sys.stderr.isatty())
    units = U.LexicalUnits(model, span=span, tuned_layers=tuned_layers)
    result = U.fine_tune_units(
        units,
        sequences,
        rows.shape[1],
        steps=steps,
        seconds=max_minutes * 60,
        batch_size=batch_size or 8,
        lr=lr or 1e-4,
        seed=seed,
        progress=lambda *_: bar.update(1),
    )
    bar.close()
    U.save_units(units, out, model_name=model_name, result=result)
    shown = ", ".join(f"+{i + 2}: {a:.3f}" for i, a in enumerate(result.depth_accuracy))
    click.echo(
        f"fine-tuned lexical units (span {span}, top {tuned_layers} layers) for {result.steps} steps in "
        f"{result.seconds:.0f} s, loss {result.final_loss:.3f}; held-out top-1 of each guess: {shown}; saved to {out}"
    )


@click.command(name="lexical-bench")
@click.option("--model", "model_name", required=True, help="The causal LM the units were trained for.")
@click.option("--units", "units_dir", required=True, type=click.Path(file_okay=False), help="train-lexical --out.")
@click.option("--taus", default="0.9;0.7;0.5", show_default=True, help="Confidence thresholds, separated by ';'.")
@click.option(
    "--limit-per-task", type=click.IntRange(min=1), default=2, show_default=True, help="Suite prompts a task."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON.")
def lexical_bench(model_name, units_dir, taus, limit_per_task, max_new_tokens, threads, json_path):
    """Lexical-unit decoding of the bundled suite against the base greedy output: identity, tokens/forward, speed."""
    import shlex

    import torch

    from crossedge.core import CrossedgeError, load_model
    from crossedge.core.bench import BenchmarkReport, format_table
    from crossedge.core.sources import encode_prompt

    from ..suite import default_suite
    from ..suite import limit_per_task as limit
    from . import lexical_lm as U

    torch.set_num_threads(threads)
    try:
        thresholds = [float(t) for t in taus.split(";") if t.strip()]
    except ValueError as exc:
        raise CrossedgeError(f"--taus takes numbers separated by ';', not {taus!r}") from exc
    loaded = load_model(model_name)
    model, tokenizer = loaded.model, loaded.tokenizer
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    prompts = [encode_prompt(tokenizer, p.turns[0]) for p in limit(default_suite(), limit_per_task)]
    U.generate_plain(model, prompts[0], 4, eos)  # warm-up
    reference = [U.generate_plain(model, p, max_new_tokens, eos) for p in prompts]
    units = U.load_units(model, units_dir)  # from here the model carries the tuned layers
    rows = [_lexical_row("base greedy", reference, reference)]
    rows.append(
        _lexical_row("tuned greedy", [U.generate_plain(model, p, max_new_tokens, eos) for p in prompts], reference)
    )
    for tau in thresholds:
        outs = [U.generate_units(units, p, max_new_tokens, tau, eos) for p in prompts]
        rows.append(_lexical_row(f"lexical:tau={tau:g}", outs, reference))
    base_speed = rows[0]["tok/s"]
    for row in rows:
        row["speedup"] = round(row["tok/s"] / base_speed, 3)
    click.echo(format_table(rows, ["method", "identical", "prefix", "tok/fwd", "tok/s", "speedup"]))
    if json_path:
        command = "crossedge specdec lexical-bench " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        summary = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "threads": threads}
        BenchmarkReport("lexical-bench", rows=rows, summary=summary, command=command).write_json(json_path)
        click.echo(f"wrote {json_path}")


def _lexical_row(method: str, outs, reference) -> dict:
    from . import lexical_lm as U

    tokens = sum(len(o.tokens) for o in outs)
    same = sum(o.tokens == r.tokens for o, r in zip(outs, reference, strict=True))
    prefix = sum(
        U.matching_prefix(o.tokens, r.tokens) / max(1, len(r.tokens)) for o, r in zip(outs, reference, strict=True)
    )
    return {
        "method": method,
        "identical": round(same / len(outs), 3),
        "prefix": round(prefix / len(outs), 3),
        "tok/fwd": round(tokens / sum(o.forwards for o in outs), 2),
        "tok/s": round(tokens / sum(o.seconds for o in outs), 1),
    }
