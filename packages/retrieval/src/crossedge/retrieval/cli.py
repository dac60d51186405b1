"""The ``crossedge retrieval`` commands: index, search, train, collection, speed and bench.

Imported only when the CLI is built; heavy modules (torch, transformers) are imported
inside the commands so that ``crossedge --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from crossedge.core import CrossedgeError
from crossedge.core.contracts.backend import DEFAULT_BACKEND

from .options import ALL_METHODS, HEADS, LOCAL_SOURCES, NEGATIVE_SOURCES, RERANKER_LOSSES, STUDENT_LOSS_NAMES, UNI_INITS

NEGATIVES_HELP = (
    "Hard negatives of the training lists: the top non-relevant documents of BM25, or of the zero-shot "
    "bi-encoder (the near misses a reranker of its candidates has to tell apart)."
)
HEAD_HELP = (
    "Reranker head: 'similarity' scores the cosine of the query's and the document's pooled states "
    "(starts from the bi-encoder's ranking); 'cls' is a fresh regression head on [CLS]."
)
UNI_INIT_HELP = (
    "Where the uni-encoder starts before training in its own layout: the plain encoder, or the "
    "cross-encoder the bench trains (same encoder and head, candidates keep what it learned)."
)
INTERACTION_HELP = (
    "Cross-encoder only: let query and document attend to each other in the top N layers only "
    "(the lower layers encode each alone). Default: all layers."
)


def stack_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--quant``, ``--backend`` and ``--dtype`` for the scorer named by ``what``, as the other packages take them."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--dtype",
            default="float32",
            show_default=True,
            help=f"Cast {what} to float32, bfloat16 (bf16) or float16 after loading (not with --quant); "
            "auto: bfloat16 where the CPU has native bfloat16 instructions, else float32.",
        )(command)
        command = click.option(
            "--backend",
            "backend_name",
            default=DEFAULT_BACKEND,
            show_default=True,
            help=f"Backend spec that runs {what} (it must keep the model's interface: torch-eager, torch-onednn).",
        )(command)
        return click.option(
            "--quant",
            "quant_spec",
            default=None,
            help=f"Quantize {what}'s encoder after loading: 'int8' or 'int4' (kernels chosen by timing this machine "
            "at the scorer's batch rows), or a method spec such as 'w8a8' or 'rtn:bits=8' (docs/specs.md).",
        )(command)

    return decorate


@click.group()
def retrieval() -> None:
    """Local semantic search: bi-, cross- and uni-encoders, BM25, distillation and a code-search benchmark."""


@retrieval.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to write the index to.")
@click.option("--model", default="minilm-l6", show_default=True, help="Model name, or a folder saved by train.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--force",
    is_flag=True,
    help="Write into a folder that holds other files too (only the index's own files are replaced).",
)
@stack_options("the bi-encoder that embeds the documents")
def index_cmd(paths: tuple[Path, ...], out: Path, model: str, batch_size: int, force: bool, quant_spec: str | None,
              backend_name: str, dtype: str) -> None:  # fmt: skip
    """Index the text and code files under PATHS (Python by function/class, text by paragraph)."""
    import shutil
    import tempfile

    from .chunking import chunk_paths
    from .index import DenseIndex, prepare_index_folder
    from .runtime import check_scorer_stack, prepare_scorer
    from .scorers import BiEncoder, load_scorer

    # Checked before any model loads: a refused --out or stack costs nothing.
    stack = check_scorer_stack(quant_spec, backend_name, dtype, purpose="retrieval index")
    replacing = prepare_index_folder(out, inputs=paths, force=force)
    chunks = chunk_paths(paths)
    if not chunks:
        raise CrossedgeError(f"no text or code files found under {', '.join(map(str, paths))}")
    saved_scorer = (Path(model) / "scorer.json").exists()
    bi = load_scorer(model) if saved_scorer else BiEncoder.from_pretrained(model)
    if not isinstance(bi, BiEncoder):
        raise CrossedgeError(f"--model {model} is a saved {bi.name}; an index is built with a bi-encoder")
    float_copy = None
    if not stack.is_plain:
        if saved_scorer:
            # Saved as loaded, before the stack changes it: search loads this copy as the query encoder.
            float_copy = tempfile.TemporaryDirectory(prefix="crossedge-index-model-")
            bi.save(float_copy.name)
        prepare_scorer(bi, stack, batch_size=batch_size)
    start = time.perf_counter()
    embeddings = bi.encode([f"{c.path}\n{c.text}" for c in chunks], batch_size=batch_size, progress=True)
    seconds = max(time.perf_counter() - start, 1e-9)
    ids = [f"{c.path}:{c.start_line}-{c.end_line}" for c in chunks]
    info = {"paths": [str(p) for p in paths], "stack": stack.describe()}
    index = DenseIndex(embeddings, ids, [c.to_dict() for c in chunks], model=model, info=info)
    index.save(out)
    if replacing and (out / "model").is_dir():
        # The previous index's bi-encoder: search would prefer it over --model.
        shutil.rmtree(out / "model")
    if float_copy is not None:
        shutil.copytree(float_copy.name, out / "model")
        float_copy.cleanup()
    elif saved_scorer:
        bi.save(out / "model")
    click.echo(f"indexed {len(chunks)} chunks in {seconds:.1f} s ({len(chunks) / seconds:.1f} chunks/s) -> {out}")


@retrieval.command("search")
@click.argument("index", type=click.Path(path_type=Path))
@click.argument("query")
@click.option("--rerank", type=click.Choice(["cross-encoder", "uni-encoder"]), default=None)
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1), help="Results to show.")
@click.option(
    "--depth", default=50, show_default=True, type=click.IntRange(min=1), help="Candidates the reranker rescores."
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@stack_options("the reranker")
def search_cmd(index: Path, query: str, rerank: str | None, k: int, depth: int, as_json: bool, quant_spec: str | None,
               backend_name: str, dtype: str) -> None:  # fmt: skip
    """Search INDEX for QUERY; --rerank rescores the top candidates with a trained reranker saved in the index."""
    from crossedge.core.cli import echo_json

    from .pipeline import search_index
    from .runtime import check_scorer_stack

    stack = check_scorer_stack(quant_spec, backend_name, dtype, purpose="retrieval search")
    if rerank is None and stack.was_asked_for:
        raise CrossedgeError("--quant, --backend and --dtype apply to the reranker: add --rerank cross-encoder")
    results = search_index(index, query, k=k, rerank_with=rerank, depth=depth, stack=stack)
    if as_json:
        echo_json(results)
        return
    for rank, r in enumerate(results, 1):
        first_line = r.get("text", "").strip().splitlines()[0][:80] if r.get("text", "").strip() else ""
        click.echo(f"{rank:2d}. {r['score']:8.4f}  {r.get('path', r['id'])}:{r.get('start_line', '')}  {first_line}")


@retrieval.command("train")
@click.argument("kind", type=click.Choice(["bi-encoder", "cross-encoder", "uni-encoder"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the trained scorer.")
@click.option("--collection", type=click.Path(path_type=Path), default=None, help="BEIR folder with qrels/train.tsv.")
@click.option("--loss", default="infonce", show_default=True, help="Loss name (see crossedge plugins).")
@click.option("--queries", default=256, show_default=True, help="Training queries.")
@click.option("--candidates", default=4, show_default=True, help="List size: the positive plus hard negatives.")
@click.option(
    "--negatives", type=click.Choice(NEGATIVE_SOURCES), default="bm25", show_default=True, help=NEGATIVES_HELP
)
@click.option("--head", type=click.Choice(HEADS), default="similarity", show_default=True, help=HEAD_HELP)
@click.option("--epochs", default=1, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--lr", default=3e-5, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--model", default="minilm-l6", show_default=True)
@click.option(
    "--init",
    "init_from",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="Start from a cross- or uni-encoder saved by train (e.g. a uni-encoder from a trained cross-encoder).",
)
def train_cmd(kind, out, collection, loss, queries, candidates, negatives, head, epochs, batch_size, lr, seed,
              model, init_from) -> None:  # fmt: skip
    """Train a scorer on labelled lists; checkpoints per epoch in OUT/checkpoints, rerun to resume."""
    from .collection import load_code_search, read_beir
    from .losses import get_loss
    from .pipeline import training_lists
    from .scorers import BiEncoder, CrossEncoder, UniEncoder, load_scorer
    from .training import TrainConfig, Trainer, list_loss

    if init_from is not None and kind == "bi-encoder":
        raise CrossedgeError(
            "--init starts a cross- or uni-encoder from saved weights; a bi-encoder starts from --model"
        )
    loss_fn = list_loss(get_loss(loss))  # an unknown --loss fails before any model loads
    train = read_beir(collection, split="train") if collection else load_code_search("train")
    miner = BiEncoder.from_pretrained(model) if negatives == "bi-encoder" else None
    examples = training_lists(train, queries, candidates, seed, negatives=negatives, miner=miner, progress=True)
    del miner
    kinds = {"bi-encoder": BiEncoder, "cross-encoder": CrossEncoder, "uni-encoder": UniEncoder}
    if init_from is not None:
        start = load_scorer(init_from)
        scorer = start if start.name == kind else kinds[kind].from_scorer(start)
        click.echo(f"starting from the {start.name} in {init_from}")
    else:
        scorer = kinds[kind].from_pretrained(model, seed=seed, **({} if kind == "bi-encoder" else {"head": head}))
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    trainer = Trainer(scorer, examples, loss_fn, config, out / "checkpoints", kind)
    if trainer.latest_checkpoint() is not None:
        click.echo(f"resuming from {trainer.latest_checkpoint()}")
    history = trainer.fit()
    scorer.save(out)
    click.echo(f"trained {kind} on {len(examples)} lists: {json.dumps(history)} -> {out}")


@retrieval.command("collection")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also copy the BEIR folders here.")
@click.option("--force", is_flag=True, help="Rebuild even if cached.")
@click.option(
    "--source",
    type=click.Choice(["stdlib", *LOCAL_SOURCES]),
    default="stdlib",
    show_default=True,
    help="stdlib: the code-search collection (train/dev/test); manpages: the out-of-domain man-page "
    "collection (one test folder).",
)
def collection_cmd(out: Path | None, force: bool, source: str) -> None:
    """Build a collection (the stdlib code search, or the man pages) and print where it is."""
    import shutil

    from .collection import code_search_dir, ensure_code_search
    from .local_collections import ensure_local_collection

    def build() -> Path:
        return ensure_code_search(force=force) if source == "stdlib" else ensure_local_collection(source, force=force)

    if out is not None:
        # A copy goes to a new or empty folder, or over an earlier copy (it has complete.json), never elsewhere.
        if source == "stdlib" and out.resolve() == code_search_dir().resolve():
            raise CrossedgeError(f"--out {out} is the cached collection itself; choose another folder")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "complete.json").exists())):
            raise CrossedgeError(
                f"--out {out} is not empty and holds no earlier copy of the collection; "
                "choose a new or empty folder (nothing there is overwritten)"
            )
    folder = build()
    if out is not None and out.resolve() == folder.resolve():
        raise CrossedgeError(f"--out {out} is the cached collection itself; choose another folder")
    click.echo((folder / "complete.json").read_text())
    if out is not None:
        shutil.copytree(folder, out, dirs_exist_ok=True)
        folder = out
    click.echo(str(folder))


@retrieval.command("speed")
@click.option("--query-words", default=8, show_default=True)
@click.option("--doc-words", default=48, show_default=True, help="Words per candidate (truncated to this many tokens).")
@click.option("--candidates", default=20, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Pairs per forward.")
@stack_options("both rerankers (also timed as loaded, in the same run)")
def speed_cmd(query_words: int, doc_words: int, candidates: int, repeats: int, threads: int | None, batch_size: int,
              quant_spec: str | None, backend_name: str, dtype: str) -> None:  # fmt: skip
    """Time a cross-encoder scoring N pairs against a uni-encoder scoring the same N candidates in one pass."""
    from crossedge.core.bench import threads as pin_threads
    from crossedge.core.cli import echo_json

    from .pipeline import uni_vs_cross_speed
    from .runtime import check_scorer_stack

    stack = check_scorer_stack(quant_spec, backend_name, dtype, purpose="retrieval speed")
    with pin_threads(threads):
        result = uni_vs_cross_speed(
            query_words=query_words, doc_words=doc_words, candidates=candidates, repeats=repeats,
            batch_size=batch_size, stack=stack,
        )  # fmt: skip
    echo_json(result)


def parse_depths(text: str) -> tuple[int, ...]:
    """``"10,20,30"`` as depths; a clear error for anything else."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CrossedgeError(
            f"--curve-depths takes whole numbers separated by commas, e.g. 10,20,30; not {text!r}"
        ) from None


@retrieval.command("bench")
@click.option("--collection", type=click.Path(path_type=Path), default=None, help="BEIR folder to evaluate on.")
@click.option("--train-collection", type=click.Path(path_type=Path), default=None, help="BEIR folder to train on.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report here.")
@click.option("--limit-queries", type=int, default=50, show_default=True, help="Evaluate on a stable sample.")
@click.option(
    "--methods",
    default="all",
    show_default=True,
    help=f"Comma list of {', '.join(ALL_METHODS)}.",
)
@click.option("--losses", default=",".join(STUDENT_LOSS_NAMES), show_default=True)
@click.option("--corpus-limit", type=int, default=None, help="Subsample the corpus (relevant documents kept).")
@click.option("--train-queries", default=64, show_default=True)
@click.option(
    "--student-queries",
    type=int,
    default=None,
    help="Students and Trans-Encoder train on the first N training lists (default: all, as the teacher).",
)
@click.option("--candidates", default=4, show_default=True)
@click.option(
    "--negatives", type=click.Choice(NEGATIVE_SOURCES), default="bm25", show_default=True, help=NEGATIVES_HELP
)
@click.option("--head", type=click.Choice(HEADS), default="similarity", show_default=True, help=HEAD_HELP)
@click.option("--interaction-layers", type=int, default=None, help=INTERACTION_HELP)
@click.option("--uni-init", type=click.Choice(UNI_INITS), default="encoder", show_default=True, help=UNI_INIT_HELP)
@click.option(
    "--uni-epochs",
    type=click.IntRange(min=0),
    default=None,
    help="Epochs the uni-encoder trains in its own layout (default: --epochs); 0 keeps its starting weights.",
)
@click.option("--epochs", default=1, show_default=True)
@click.option("--lr", default=3e-5, show_default=True, help="Encoder learning rate (heads use 20x).")
@click.option("--rerank-depth", default=50, show_default=True)
@click.option("--uni-depth", default=20, show_default=True)
@click.option("--trans-cycles", default=1, show_default=True)
@click.option("--max-doc-tokens", default=128, show_default=True)
@click.option(
    "--reranker-loss",
    type=click.Choice(RERANKER_LOSSES),
    default="infonce",
    show_default=True,
    help="infonce-kl adds a KL term to the zero-shot bi-encoder's scores of each training list.",
)
@click.option("--distill-alpha", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the KL term of --reranker-loss infonce-kl.")  # fmt: skip
@click.option("--dev-collection", type=click.Path(path_type=Path), default=None,
              help="BEIR folder with qrels/dev.tsv from the training side (the mixture's dev split): each reranker "
              "also gets a row fused with the first stage, its weight chosen there.")  # fmt: skip
@click.option("--dev-queries", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--curve-depths", default="", help="More rerank depths for the cross-encoder's cost-quality curve, "
              "comma separated (e.g. 10,20,30).")  # fmt: skip
@stack_options("the cross-encoder (its float32 eager rows stay, for the paired comparison)")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--seed", default=0, show_default=True)
def bench_cmd(collection, train_collection, json_out, limit_queries, corpus_limit, methods, losses, train_queries,
              student_queries, candidates, negatives, head, interaction_layers, uni_init, uni_epochs, epochs, lr,
              rerank_depth, uni_depth, trans_cycles, max_doc_tokens, reranker_loss, distill_alpha, dev_collection,
              dev_queries, curve_depths, quant_spec, backend_name, dtype, threads, seed) -> None:  # fmt: skip
    """Compare BM25, bi-encoders, rerankers, distilled students and Trans-Encoder on one collection."""
    import sys

    from crossedge.core.bench import format_table, plot_bars
    from crossedge.core.bench import threads as pin_threads

    from .benchmark import report_of
    from .pipeline import BenchSettings, run_bench

    settings = BenchSettings(
        collection=str(collection) if collection else None,
        train_collection=str(train_collection) if train_collection else None,
        limit_queries=limit_queries,
        corpus_limit=corpus_limit,
        methods=ALL_METHODS if methods == "all" else tuple(m.strip() for m in methods.split(",") if m.strip()),
        losses=tuple(x.strip() for x in losses.split(",") if x.strip()),
        train_queries=train_queries,
        student_queries=student_queries,
        candidates=candidates,
        negatives=negatives,
        head=head,
        interaction_layers=interaction_layers,
        uni_init=uni_init,
        uni_epochs=uni_epochs,
        epochs=epochs,
        lr=lr,
        rerank_depth=rerank_depth,
        uni_depth=uni_depth,
        trans_cycles=trans_cycles,
        max_doc_tokens=max_doc_tokens,
        reranker_loss=reranker_loss,
        distill_alpha=distill_alpha,
        dev_collection=str(dev_collection) if dev_collection else None,
        dev_queries=dev_queries,
        quant=quant_spec,
        backend=backend_name,
        dtype=dtype,
        curve_depths=parse_depths(curve_depths),
        seed=seed,
    )
    with pin_threads(threads):
        result = run_bench(settings, say=lambda m: click.echo(m, err=True))
    columns = ["method", "ndcg@10", "mrr@10", "recall@100", "ms_per_query"]
    click.echo(format_table(result["rows"], columns, floatfmt=".4g"))
    for name, gap in result["summary"].get("ndcg_vs_bi_zero_shot_points", {}).items():
        click.echo(
            f"{name} vs bi-encoder zero-shot: {gap['mean']:+.2f} nDCG@10 points "
            f"(95% interval {gap['low']:+.2f} to {gap['high']:+.2f}): {gap['verdict']}"
        )
    click.echo(json.dumps(result["summary"], indent=2, default=str))
    if json_out is not None:
        report = report_of(result, command="crossedge " + " ".join(sys.argv[1:]))
        report.write_json(json_out)
        png = Path(json_out).with_suffix(".png")
        plot_bars(result["rows"], label="method", value="ndcg@10", path=png, title="nDCG@10", ylabel="nDCG@10")
        click.echo(f"wrote {json_out} and {png}")
