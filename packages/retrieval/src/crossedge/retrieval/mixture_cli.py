"""``crossedge retrieval mixture``: build the training mixture into a folder, kept apart from evaluation text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from crossedge.core import CrossedgeError

from .mixture import SOURCES

MARKER = "mixture.json"


@click.command("mixture")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New or empty folder (train/, dev/).")
@click.option("--sources", default=",".join(SOURCES), show_default=True, help="Comma list of mixture sources.")
@click.option(
    "--exclude",
    "excluded",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    multiple=True,
    help="A BEIR folder (qrels/test.tsv) to evaluate on later: no mixture text may share a 13-word run with "
    "its documents. Repeatable.",
)
@click.option("--dev-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True)  # fmt: skip
@click.option("--seed", default=0, show_default=True)
def mixture_cmd(out: Path, sources: str, excluded: tuple[Path, ...], dev_fraction: float, seed: int) -> None:
    """Build the reranker training mixture from text on this machine (train and dev BEIR folders)."""
    from .collection import read_beir
    from .mixture import build_mixture, gather, write_mixture

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise CrossedgeError(
            f"--out {out} is not empty and holds no earlier mixture; choose a new or empty folder "
            "(nothing there is overwritten)"
        )
    chosen = [s.strip() for s in sources.split(",") if s.strip()]
    evaluation = [read_beir(folder) for folder in excluded]
    start = time.perf_counter()
    built = build_mixture(gather(chosen), evaluation=evaluation, dev_fraction=dev_fraction, seed=seed)
    write_mixture(built, out)
    report = built["train"].meta["sources"]
    click.echo(json.dumps(report, indent=2))
    click.echo(
        f"mixture: {len(built['train'].corpus)} train and {len(built['dev'].corpus)} dev pairs in "
        f"{time.perf_counter() - start:.0f} s, kept apart from {len(evaluation)} evaluation collection(s) -> {out}"
    )
    click.echo(f"train on it with: --train-collection {out / 'train'} --dev-collection {out / 'dev'}")
