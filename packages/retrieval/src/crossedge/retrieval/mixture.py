"""A broad training mixture for rerankers, built at run time from text on this machine.

A reranker trained on one collection learns that collection's shape (the stdlib's code, its
docstring queries) and can do worse than the zero-shot bi-encoder elsewhere. The mixture gives it
several kinds of text and query instead, each made from files that are already on the machine:

- ``stdlib-code``: the stdlib code-search train split (docstring summary -> function source);
- ``pydoc-topics``: Python's reference topics (``pydoc_data``), a section's heading -> its text;
- ``usr-share-doc``: READMEs and NEWS files of installed Debian packages, a paragraph's or list
  item's first sentence -> its other sentences (titled with the package and heading);
- ``docstrings``: the docstrings of installed Python packages (site-packages), a docstring's
  summary line -> the rest of the docstring (its prose, parameters and notes).

Sources are split into train and dev by *file* (the stdlib by module), so no file feeds both
splits; dev exists to choose settings (such as the fusion weight) without touching evaluation
data. :func:`decontaminate` drops every mixture document that shares a run of
:data:`SHINGLE` words with a document of an evaluation collection, so a collection built for
evaluation is never trained on, even where two files on the machine hold the same text.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .collection import (
    Collection,
    CollectionError,
    first_sentence,
    load_code_search,
    read_text_file,
    seeded_order,
    write_beir,
)

MIXTURE_VERSION = 1
SOURCES = ("stdlib-code", "pydoc-topics", "usr-share-doc", "docstrings")
#: Words a shingle holds: two documents sharing this many consecutive words share text.
SHINGLE = 13
MAX_DOC_WORDS = 300
#: READMEs and NEWS files (GNU-style ChangeLogs, ``file (function): change`` lines, teach nothing a user asks).
DOC_FILES = re.compile(r"^(readme|news)(\.md|\.rst|\.txt)?(\.gz)?$", re.IGNORECASE)
_HEADING_RULE = re.compile(r"^\s*([=\-~*#^+])\1{2,}\s*$")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+")
_ISSUE = re.compile(r"^(?:(?:bpo|gh|issue|bug|closes|lp)?[-\s#:]*\d+[:,)]?\s*)+", re.IGNORECASE)
_SIGNATURE = re.compile(r"^[\w.]+\(")


@dataclass(frozen=True)
class Pair:
    """One self-supervised training pair: where it came from, its query and its document."""

    source: str
    group: str  # the file (or module) it came from: the unit of the train/dev split
    query: str
    title: str
    text: str

    @property
    def doc_id(self) -> str:
        """A stable id from the source, group and document text."""
        digest = hashlib.sha256(f"{self.group}|{self.title}|{self.text}".encode()).hexdigest()[:12]
        return f"{self.source}:{digest}"


def _words(text: str, limit: int = MAX_DOC_WORDS) -> str:
    return " ".join(text.split()[:limit])


def _usable(query: str, text: str) -> bool:
    """A pair worth training on: a query of 2-40 words, a document of 15 or more that does not contain it."""
    q = query.split()
    if _SIGNATURE.match(query) or sum(w.isalpha() for w in q) < 2:
        return False  # a call signature or a list of symbols, not a question anyone asks
    return 2 <= len(q) <= 40 and len(text.split()) >= 15 and query.lower() not in text.lower()


def sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` pairs of a README-like text: Markdown ``#`` headings and underlined (RST) ones.

    Text before the first heading comes with an empty heading.
    """
    lines = text.splitlines()
    out: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        md = _MD_HEADING.match(line)
        underlined = i + 1 < len(lines) and line.strip() and _HEADING_RULE.match(lines[i + 1])
        if md:
            out.append((md.group(1).strip(), []))
        elif underlined and not _HEADING_RULE.match(line):
            out.append((line.strip(), []))
            i += 1  # the rule under the heading
        elif not _HEADING_RULE.match(line):
            out[-1][1].append(line)
        i += 1
    return [(h, "\n".join(body).strip()) for h, body in out if "\n".join(body).strip()]


def split_first_sentence(text: str) -> tuple[str, str]:
    """The first sentence of ``text`` and the rest (the query and document of an inverse-cloze pair)."""
    flat = " ".join(text.split())
    match = re.search(r"(?<=[.!?])\s+(?=[A-Z(\"'])", flat)
    if not match:
        return flat, ""
    return flat[: match.start()].strip(), flat[match.end() :].strip()


# ------------------------------------------------------------------ readers


def pydoc_topic_pairs(topics: dict[str, str] | None = None) -> list[Pair]:
    """Python's reference topics: each section's heading (a phrase) is the query, its body the document."""
    if topics is None:
        try:
            from pydoc_data.topics import topics
        except ImportError:  # some distributions strip pydoc_data
            return []
    pairs = []
    for key in sorted(topics):
        for heading, body in sections(topics[key]):
            query = heading.replace("*", "").strip() or split_first_sentence(body)[0]
            text = _words(body)
            if _usable(query, text):
                pairs.append(Pair("pydoc-topics", f"pydoc:{key}", query, "", text))
    return pairs


def blocks(body: str) -> list[str]:
    """Paragraphs and list items of a section body, bullets and issue numbers stripped."""
    out: list[list[str]] = [[]]
    for line in body.splitlines():
        if not line.strip():
            out.append([])
        elif _BULLET.match(line):
            out.append([_BULLET.sub("", line, count=1)])
        else:
            out[-1].append(line.strip())
    return [_ISSUE.sub("", " ".join(b)).strip() for b in out if b]


def doc_file_pairs(path: Path, package: str) -> list[Pair]:
    """A README / NEWS / changelog: the first sentence of a paragraph or list item is the query, its
    other sentences the document (an inverse-cloze pair), titled with the package and section."""
    text = read_text_file(path)
    if not text:
        return []
    pairs = []
    for heading, body in sections(text):
        title = f"{package}: {heading}" if heading else package
        for block in blocks(body):
            query, rest = split_first_sentence(block)
            rest = _words(rest)
            if _usable(query, rest):
                pairs.append(Pair("usr-share-doc", str(path), query, title, rest))
    return pairs


def usr_share_doc_files(root: Path | str = "/usr/share/doc") -> list[tuple[Path, str]]:
    """``(file, package)`` for every README and NEWS file below ``root`` (Debian's own ``*.Debian`` skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and DOC_FILES.match(path.name) and "Debian" not in path.name:
            found.append((path, path.relative_to(root).parts[0]))
    return found


def docstring_pairs(source: str, group: str) -> list[Pair]:
    """Docstrings of one module's public functions and classes: the summary is the query, the rest the document."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        query = first_sentence(doc)
        head, _, rest = doc.partition("\n\n")
        text = _words(rest)
        if first_sentence(head) == query and _usable(query, text):
            pairs.append(Pair("docstrings", group, query, node.name, text))
    return pairs


def package_files(root: Path | str | None = None, per_package: int = 40) -> list[tuple[Path, str]]:
    """``(file, group)`` for up to ``per_package`` modules of each top-level package in site-packages.

    Tests and crossedge's own modules are skipped: the mixture is other people's text.
    """
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["purelib"])
    if not root.is_dir():
        return []
    found = []
    for top in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isidentifier()):
        if top.name in {"crossedge", "tests", "test"}:
            continue
        files = sorted(
            f
            for f in top.rglob("*.py")
            if not ({"tests", "test", "testing", "_vendor", "vendored"} & set(f.relative_to(root).parts))
        )
        # A stable spread over the package rather than its first folder only.
        files.sort(key=lambda f: hashlib.sha256(str(f.relative_to(root)).encode()).hexdigest())
        found += [(f, str(f.relative_to(root))) for f in files[:per_package]]
    return found


# ------------------------------------------------------------- decontamination


def shingles(text: str, n: int = SHINGLE) -> set[int]:
    """Hashes of every run of ``n`` consecutive lower-cased words (the whole text when shorter)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {hash(" ".join(words))} if words else set()
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def decontaminate(pairs: Sequence[Pair], evaluation: Iterable[Collection]) -> tuple[list[Pair], int]:
    """Drop pairs whose document or query shares a shingle with any evaluation document; returns (kept, dropped)."""
    banned: set[int] = set()
    for collection in evaluation:
        for doc_id in collection.corpus:
            banned |= shingles(collection.doc_text(doc_id))
    kept = [p for p in pairs if not (shingles(f"{p.title}\n{p.text}") & banned or shingles(p.query) & banned)]
    return kept, len(pairs) - len(kept)


# ------------------------------------------------------------------ mixture


@dataclass
class MixtureCaps:
    """At most this many pairs per source (the stdlib would otherwise outweigh the rest)."""

    stdlib_code: int = 2500
    pydoc_topics: int = 600
    usr_share_doc: int = 2000
    docstrings: int = 2500
    #: At most this many pairs from one file, so a long NEWS file does not make a source its own.
    per_group: int = 20

    def of(self, source: str) -> int:
        """The cap of one source."""
        return getattr(self, source.replace("-", "_"))


def _stdlib_pairs() -> list[Pair]:
    train = load_code_search("train")
    return [
        Pair("stdlib-code", str(train.corpus[d].get("module", d)), train.queries[q], "", train.corpus[d]["text"])
        for q, judged in train.qrels.items()
        for d in judged
        if q in train.queries and d in train.corpus
    ]


def gather(
    sources: Sequence[str] = SOURCES,
    *,
    doc_root: Path | str = "/usr/share/doc",
    package_root: Path | str | None = None,
    stdlib: Callable[[], list[Pair]] = _stdlib_pairs,
) -> dict[str, list[Pair]]:
    """Every pair each source gives on this machine (before caps, splits and decontamination)."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise CollectionError(f"unknown mixture source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    out: dict[str, list[Pair]] = {}
    if "stdlib-code" in sources:
        out["stdlib-code"] = stdlib()
    if "pydoc-topics" in sources:
        out["pydoc-topics"] = pydoc_topic_pairs()
    if "usr-share-doc" in sources:
        out["usr-share-doc"] = [p for path, pkg in usr_share_doc_files(doc_root) for p in doc_file_pairs(path, pkg)]
    if "docstrings" in sources:
        pairs = []
        for path, group in package_files(package_root):
            try:
                pairs += docstring_pairs(path.read_text(encoding="utf-8"), group)
            except (OSError, UnicodeDecodeError):
                continue
        out["docstrings"] = pairs
    return out


def build_mixture(
    gathered: dict[str, list[Pair]],
    *,
    evaluation: Iterable[Collection] = (),
    caps: MixtureCaps | None = None,
    dev_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Collection]:
    """The ``train`` and ``dev`` collections of the mixture.

    Per source: decontaminate against ``evaluation``, drop repeated documents and queries and keep
    at most ``caps.per_group`` pairs of one file, assign
    whole groups (files) to dev by a seeded hash until ``dev_fraction`` of the pairs, then keep
    a seeded sample of at most the source's cap in each split. Deterministic for a seed.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise CollectionError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    caps = caps or MixtureCaps()
    evaluation = list(evaluation)
    splits: dict[str, list[Pair]] = {"train": [], "dev": []}
    report: dict[str, dict[str, int]] = {}
    for source in sorted(gathered):
        pairs, dropped = decontaminate(gathered[source], evaluation)
        seen_docs, seen_queries, unique = set(), set(), []
        taken: dict[str, int] = {}
        for p in sorted(pairs, key=lambda p: seeded_order(p.doc_id, seed)):
            if p.doc_id in seen_docs or p.query.lower() in seen_queries or taken.get(p.group, 0) >= caps.per_group:
                continue
            taken[p.group] = taken.get(p.group, 0) + 1
            seen_docs.add(p.doc_id)
            seen_queries.add(p.query.lower())
            unique.append(p)
        sizes: dict[str, int] = {}
        for p in unique:
            sizes[p.group] = sizes.get(p.group, 0) + 1
        dev_groups, dev_size = set(), 0
        for group in sorted(sizes, key=lambda g: seeded_order(g, seed)):
            if dev_size >= dev_fraction * len(unique):
                break
            dev_groups.add(group)
            dev_size += sizes[group]
        cap = caps.of(source)
        for split in splits:
            chosen = [p for p in unique if (p.group in dev_groups) == (split == "dev")]
            limit = cap if split == "train" else max(1, round(cap * dev_fraction))
            chosen = sorted(chosen, key=lambda p: seeded_order(p.doc_id, seed))[:limit]
            splits[split] += sorted(chosen, key=lambda p: p.doc_id)
        report[source] = {
            "pairs": len(gathered[source]),
            "dropped_as_evaluation_text": dropped,
            "unique": len(unique),
            "train": sum(p.source == source for p in splits["train"]),
            "dev": sum(p.source == source for p in splits["dev"]),
        }
    out = {}
    for split, pairs in splits.items():
        if not pairs:
            raise CollectionError(f"the mixture's {split} split is empty: no source gave text on this machine")
        out[split] = Collection(
            corpus={p.doc_id: {"title": p.title, "text": p.text, "source": p.source, "group": p.group} for p in pairs},
            queries={f"q:{p.doc_id}": p.query for p in pairs},
            qrels={f"q:{p.doc_id}": {p.doc_id: 1} for p in pairs},
            name=f"mixture-{split}",
            meta={
                "split": split,
                "sources": report,
                "version": MIXTURE_VERSION,
                "seed": seed,
                "evaluation": [c.name for c in evaluation],
                "groups": sorted({p.group for p in pairs}),
            },
        )
    return out


def write_mixture(collections: dict[str, Collection], folder: Path | str) -> Path:
    """One BEIR folder per split below ``folder``, plus ``mixture.json`` with what each source gave."""
    folder = Path(folder)
    for split, collection in collections.items():
        write_beir(collection, folder / split, split=split)
    meta = {split: c.meta for split, c in collections.items()}
    (folder / "mixture.json").write_text(json.dumps(meta, indent=2, default=str))
    return folder
