"""Retrieval collections: the stdlib code-search collection and BEIR's folder format.

The code-search collection is built at run time from the Python standard library
of the running interpreter: each public function or method with a docstring gives
a query (the docstring's first sentence) and a document (its source without the
docstring). Modules, not functions, are split into train, dev and test, so no
module's code appears in two splits. Nothing of it ships with crossedge.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import re
import sys
import sysconfig
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crossedge.core import CrossedgeError

SPLITS = ("train", "dev", "test")
BUILDER_VERSION = 1
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "turtledemo"}


class CollectionError(CrossedgeError):
    """A collection folder is missing files or has malformed lines."""


@dataclass
class CodeExample:
    """One function: where it lives, its query and its document."""

    id: str
    module: str
    query: str
    document: str


@dataclass
class Collection:
    """A BEIR-style collection: corpus, queries and graded relevance judgements."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def doc_ids(self) -> list[str]:
        """Corpus ids in file order."""
        return list(self.corpus)

    def doc_text(self, doc_id: str) -> str:
        """Title and text of one document joined the way BEIR models read them."""
        doc = self.corpus[doc_id]
        title = doc.get("title") or ""
        return f"{title}\n{doc.get('text', '')}" if title else doc.get("text", "")

    def judged_queries(self, limit: int | None = None) -> list[str]:
        """Query ids that have at least one relevant document, in a stable order, at most ``limit``."""
        ids = [q for q in self.queries if any(v > 0 for v in self.qrels.get(q, {}).values())]
        return ids[:limit] if limit else ids


# ------------------------------------------------------------------ extraction


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence: up to the first blank line, then up to the first '. '."""
    paragraph = docstring.strip().split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    match = re.search(r"(?<=[.!?])\s", text)
    return text[: match.start()].strip() if match else text.strip()


def _strip_docstring(source_lines: list[str], node: ast.AST) -> str | None:
    """The function's source with its docstring statement removed, dedented; None if not separable."""
    doc = node.body[0]
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    end = node.end_lineno
    if doc.lineno == node.lineno or doc.end_lineno is None:
        return None  # docstring on the def line: `def f(): "doc"`
    # Statements sharing a line with the docstring would be cut in half.
    for stmt in node.body[1:2]:
        if stmt.lineno == doc.end_lineno:
            return None
    kept = source_lines[start : doc.lineno - 1] + source_lines[doc.end_lineno : end]
    body = textwrap.dedent("".join(kept)).rstrip()
    if len(node.body) == 1:
        body += "\n" + " " * (node.body[0].col_offset - node.col_offset) + "..."
    return body


def extract_functions(source: str, module: str) -> list[CodeExample]:
    """Public documented functions and methods of one module's source (nested functions are skipped)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    out: list[CodeExample] = []

    def visit(body: Iterable[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                docstring = ast.get_docstring(node)
                if not docstring:
                    continue
                query = first_sentence(docstring)
                document = _strip_docstring(lines, node)
                if len(query.split()) < 2 or not document:
                    continue
                out.append(CodeExample(f"{module}:{prefix}{node.name}", module, query, document))

    visit(tree.body, "")
    return out


def module_name(root: Path, path: Path) -> str:
    """Dotted module name of a file below a library root."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def iter_stdlib_files(root: Path) -> list[Path]:
    """Python files of the standard library, without tests, demos and installed third-party packages."""
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith("test_") for part in rel.parts):
            continue
        files.append(path)
    return files


def split_modules(
    counts: dict[str, int], *, test_min: int, test_fraction: float, dev_fraction: float, salt: str = "split"
) -> dict[str, str]:
    """Assign whole modules to splits in a stable hash order until test and dev reach their sizes."""
    total = sum(counts.values())
    test_target = max(test_min, int(test_fraction * total))
    dev_target = int(dev_fraction * total)
    order = sorted(counts, key=lambda m: hashlib.sha256((salt + m).encode()).hexdigest())
    assignment, sizes = {}, {s: 0 for s in SPLITS}
    for module in order:
        if sizes["test"] < test_target:
            split = "test"
        elif sizes["dev"] < dev_target:
            split = "dev"
        else:
            split = "train"
        assignment[module] = split
        sizes[split] += counts[module]
    return assignment


def build_code_search(
    root: Path | str | None = None,
    *,
    test_min: int = 2000,
    test_fraction: float = 0.4,
    dev_fraction: float = 0.1,
) -> dict[str, Collection]:
    """Build the train, dev and test collections from a library folder (default: this interpreter's stdlib)."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    examples: list[CodeExample] = []
    for path in iter_stdlib_files(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        examples.extend(extract_functions(source, module_name(root, path)))
    if not examples:
        raise CollectionError(f"no documented public functions found below {root}")
    seen, unique = set(), []
    for ex in examples:  # identical sources (re-exported copies) would be ambiguous answers
        key = ex.document
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    counts: dict[str, int] = {}
    for ex in unique:
        counts[ex.module] = counts.get(ex.module, 0) + 1
    assignment = split_modules(counts, test_min=test_min, test_fraction=test_fraction, dev_fraction=dev_fraction)
    out = {}
    for split in SPLITS:
        chosen = [ex for ex in unique if assignment[ex.module] == split]
        out[split] = Collection(
            corpus={ex.id: {"title": "", "text": ex.document, "module": ex.module} for ex in chosen},
            queries={f"q:{ex.id}": ex.query for ex in chosen},
            qrels={f"q:{ex.id}": {ex.id: 1} for ex in chosen},
            name=f"stdlib-code-{split}",
            meta={"split": split, "modules": sorted({ex.module for ex in chosen}), "root": str(root)},
        )
    return out


# ------------------------------------------------------------------ BEIR format


def write_beir(collection: Collection, folder: Path | str, split: str = "test") -> Path:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (BEIR's folder format)."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc_id, doc in collection.corpus.items():
            handle.write(json.dumps({"_id": doc_id, **doc}, ensure_ascii=False) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for qid, text in collection.queries.items():
            handle.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["query-id", "corpus-id", "score"])
        for qid, docs in collection.qrels.items():
            for doc_id, rel in docs.items():
                writer.writerow([qid, doc_id, rel])
    return folder


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; anything but a JSON object is refused."""
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise CollectionError(f"{path} line {line_no} is not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise CollectionError(
                    f'{path} line {line_no} is a JSON {type(record).__name__}, not an object with an "_id"'
                )
            yield line_no, record


def _record_id(path: Path, line_no: int, record: dict, seen: dict[str, int], what: str) -> str:
    """The record's ``_id`` as a string; a missing, empty or repeated id is refused with both line numbers."""
    raw = record.get("_id")
    if raw is None or isinstance(raw, (dict, list, bool)) or str(raw) == "":
        raise CollectionError(f'{path} line {line_no}: the {what} has no "_id" (every line needs a non-empty "_id")')
    key = str(raw)
    if key in seen:
        raise CollectionError(
            f"{path} line {line_no}: duplicate {what} id {key!r} (first on line {seen[key]}); ids must be unique"
        )
    seen[key] = line_no
    return key


#: First cells that mark the first line of a qrels file as its header (BEIR writes ``query-id``).
QRELS_HEADER = ("query-id", "query_id", "qid", "query")


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for row_no, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if row_no == 1 and (row[0].strip().lower() in QRELS_HEADER or row[-1].strip().lower() == "score"):
                continue
            if len(row) < 3:
                raise CollectionError(f"{path} line {row_no}: expected query-id, corpus-id, score")
            try:
                score = int(row[-1].strip())
            except ValueError:
                raise CollectionError(
                    f"{path} line {row_no}: relevance score {row[-1]!r} is not an integer (BEIR qrels grade 0, 1, 2...)"
                ) from None
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


def read_beir(folder: Path | str, split: str = "test") -> Collection:
    """Read a BEIR-format folder; only queries judged in ``qrels/<split>.tsv`` are kept.

    Malformed records are refused with their file and line: a line that is not a JSON
    object, a record without ``_id``, a repeated id, a query without ``text``, a
    non-integer relevance score, an empty corpus.
    """
    folder = Path(folder)
    needed = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise CollectionError(
            f"{folder} is not a BEIR-format collection: missing {', '.join(missing)} "
            "(expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv)"
        )
    try:
        return _read_beir(folder, *needed)
    except UnicodeDecodeError as exc:
        raise CollectionError(f"{folder} holds a file that is not UTF-8 text ({exc})") from exc


def _read_beir(folder: Path, corpus_path: Path, queries_path: Path, qrels_path: Path) -> Collection:
    corpus: dict[str, dict[str, str]] = {}
    seen: dict[str, int] = {}
    for line_no, record in _read_jsonl(corpus_path):
        doc_id = _record_id(corpus_path, line_no, record, seen, "document")
        corpus[doc_id] = {k: v for k, v in record.items() if k != "_id" and isinstance(v, str)}
    if not corpus:
        raise CollectionError(f"{corpus_path} holds no documents: a collection needs at least one")
    qrels = _read_qrels(qrels_path)
    queries: dict[str, str] = {}
    seen = {}
    for line_no, record in _read_jsonl(queries_path):
        qid = _record_id(queries_path, line_no, record, seen, "query")
        text = record.get("text")
        if not isinstance(text, str):
            raise CollectionError(f'{queries_path} line {line_no}: query {qid!r} has no "text" string')
        if qid in qrels:
            queries[qid] = text
    return Collection(corpus=corpus, queries=queries, qrels=qrels, name=folder.name)


# ---------------------------------------------------------------------- cache


def stdlib_fingerprint(root: Path | None = None) -> str:
    """A short id of this interpreter's stdlib and the builder version, naming the cache entry."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    text = f"{BUILDER_VERSION}|{sys.version}|{root}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def code_search_dir() -> Path:
    """Where the stdlib collection is cached: ``<crossedge cache>/retrieval/stdlib-code-<fingerprint>``."""
    from crossedge.core.cache import cache_dir

    version = f"{sys.version_info[0]}{sys.version_info[1]}"
    return cache_dir() / "retrieval" / f"stdlib-code-py{version}-{stdlib_fingerprint()}"


def ensure_code_search(force: bool = False) -> Path:
    """Build the stdlib collection into the cache once; returns its folder (one BEIR folder per split)."""
    from crossedge.core.cache import locked

    target = code_search_dir()
    done = target / "complete.json"
    with locked(target):
        if done.exists() and not force:
            return target
        collections = build_code_search()
        for split, coll in collections.items():
            write_beir(coll, target / split, split=split)
        sizes = {s: {"documents": len(c.corpus), "modules": len(c.meta["modules"])} for s, c in collections.items()}
        done.write_text(json.dumps({"builder": BUILDER_VERSION, "python": sys.version, "splits": sizes}, indent=2))
    return target


def load_code_search(split: str = "test") -> Collection:
    """One split of the stdlib code-search collection, built and cached on first use."""
    if split not in SPLITS:
        raise CollectionError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return read_beir(ensure_code_search() / split, split=split)


def seeded_order(key: str, seed: int) -> str:
    """A sort key that orders strings in a stable pseudo-random order for ``seed`` (the collections' samples)."""
    return hashlib.sha256(f"{seed}|{key}".encode()).hexdigest()


def read_text_file(path: Path) -> str | None:
    """A text file's contents (gunzipped when it ends in ``.gz``); None when unreadable or not UTF-8."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError):
        return None


def sample_queries(collection: Collection, limit: int | None, seed: int = 0) -> list[str]:
    """A stable subsample of judged query ids (hash order with ``seed``), all when ``limit`` is None."""
    ids = collection.judged_queries()
    if limit is None or limit >= len(ids):
        return ids
    return sorted(ids, key=lambda q: seeded_order(q, seed))[:limit]


def split_of(collections: dict[str, Collection]) -> dict[str, str]:
    """Module -> split, for checking that splits are disjoint."""
    out = {}
    for split, coll in collections.items():
        for module in coll.meta.get("modules", []):
            out.setdefault(module, split)
    return out


__all__: Sequence[str] = (
    "CodeExample",
    "Collection",
    "CollectionError",
    "build_code_search",
    "ensure_code_search",
    "extract_functions",
    "first_sentence",
    "load_code_search",
    "read_beir",
    "write_beir",
)
