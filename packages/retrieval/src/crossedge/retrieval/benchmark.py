"""``crossedge bench run retrieval``: the retrieval comparison as a registered benchmark.

Its options are the fields of :class:`~crossedge.retrieval.pipeline.BenchSettings` (the
same as ``crossedge retrieval bench``'s flags, with ``_`` or ``-``); the defaults are
small, so a bare run finishes in a minute or two on a laptop: BM25 and the zero-shot
bi-encoder on 20 queries over 500 documents of the stdlib code-search collection.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from typing import Any

from crossedge.core import CrossedgeError
from crossedge.core.bench import Benchmark, BenchmarkReport

from .options import ALL_METHODS

#: What a bare ``crossedge bench run retrieval`` runs; any option overrides its entry.
SMALL_DEFAULTS: dict[str, Any] = {
    "methods": ("bm25", "bi-zero-shot"),
    "limit_queries": 20,
    "corpus_limit": 500,
    "train_queries": 16,
    "progress": False,
}
_NOT_OPTIONS = ("log",)


def report_of(result: dict[str, Any], command: str | None = None) -> BenchmarkReport:
    """The :class:`BenchmarkReport` of a ``run_bench`` result (the JSON shape ``retrieval bench --json`` writes)."""
    report = BenchmarkReport(
        "retrieval", rows=result["rows"], summary={**result["summary"], "settings": result["settings"]}
    )
    report.command = command
    return report


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` (a string from ``-o key=value``, or already typed) as the type of settings field ``key``.

    Core's one value coercion does the work; lists are split here on ``,`` (as the bench's flags
    take them) or ``+`` (the spec grammar's list separator).
    """
    from crossedge.core.specs import coerce

    if isinstance(value, str) and typing.get_origin(hint) is tuple:
        value = ALL_METHODS if key == "methods" and value.strip() == "all" else re.split(r"[,+]", value)
        value = [v.strip() for v in value if v.strip()]
    try:
        return coerce(value, hint)
    except ValueError as exc:
        raise CrossedgeError(f"retrieval benchmark option {key}={value!r} {exc}") from None


def settings_from_options(**options: Any) -> Any:
    """:class:`BenchSettings` from benchmark options over :data:`SMALL_DEFAULTS`; unknown keys are refused."""
    from .pipeline import BenchSettings

    hints = typing.get_type_hints(BenchSettings)
    known = [f.name for f in dataclasses.fields(BenchSettings) if f.name not in _NOT_OPTIONS]
    values = dict(SMALL_DEFAULTS)
    for raw_key, value in options.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            raise CrossedgeError(f"unknown retrieval benchmark option {raw_key!r}; valid: {', '.join(known)}")
        values[key] = _coerce(key, value, hints[key])
    return BenchSettings(**values)


class RetrievalBenchmark(Benchmark):
    """``crossedge bench run retrieval -o methods=bm25,bi-trained -o limit_queries=50``."""

    name = "retrieval"
    description = "nDCG@10/MRR@10/Recall@100 of BM25, bi-encoders, rerankers and students (stdlib code search)"

    def run(self, *, threads: int | str | None = None, **options: Any) -> BenchmarkReport:
        """Run the comparison with small defaults; ``threads`` pins torch's thread count."""
        from crossedge.core.bench import threads as pin_threads

        from .pipeline import run_bench

        settings = settings_from_options(**options)
        with pin_threads(_coerce("threads", threads, int | None)):
            result = run_bench(settings, say=lambda line: print(line, file=sys.stderr))
        return report_of(result)
