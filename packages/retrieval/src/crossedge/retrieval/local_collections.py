"""Out-of-domain evaluation collections built at run time from text on this machine.

``manpages``: the English manual pages below ``/usr/share/man`` (sections 1, 5, 7 and 8). A page
gives one document, titled with the page's name, whose text is its DESCRIPTION section; its query
is the one-line description of the NAME section ("copy files and directories"). The pages are read
with a small roff reader of ours (no ``man`` or ``groff`` subprocess). Nothing of the collection is
in the repository; it is cached per machine like the stdlib collection.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from .collection import Collection, CollectionError, read_beir, read_text_file, seeded_order, write_beir
from .options import LOCAL_SOURCES

BUILDER_VERSION = 2
MAN_SECTIONS = ("1", "5", "7", "8")
MAX_WORDS = 300

_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_NAMED = re.compile(r"\\(?:\(..|\[[^\]]*\])")
_MACRO_TEXT = {"B", "I", "BR", "IR", "BI", "RB", "RI", "IB", "SM", "SB"}
_BREAKS = {"PP", "LP", "P", "TP", "IP", "RS", "RE", "br", "sp", "nf", "fi", "HP", "TQ", "EX", "EE", "in", "ti"}
_NAME_LINE = re.compile(r"^(?P<names>.+?)\s+(?:\\-|-|\\\(em|—)\s+(?P<description>.+)$")


def roff_text(line: str) -> str:
    """One roff text line as plain text: font escapes removed, ``\\-`` as ``-``, other escapes dropped."""
    line = line.replace("\\-", "-").replace("\\(em", "-").replace("\\(en", "-").replace("\\(aq", "'")
    line = line.replace("\\e", "\\").replace("\\&", "").replace("\\,", "").replace("\\/", "").replace("\\ ", " ")
    line = _FONT.sub("", line)
    line = _NAMED.sub("", line)
    return line.replace("\\", "")


def _macro_args(rest: str) -> str:
    parts = re.findall(r'"([^"]*)"|(\S+)', rest)
    return " ".join(a or b for a, b in parts)


def roff_sections(source: str) -> dict[str, str]:
    """A page's sections (upper-case ``.SH`` names) as plain text, paragraphs separated by blank lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].strip().partition(" ")
            if macro == "SH":
                current = sections.setdefault(roff_text(_macro_args(rest)).strip().upper(), [])
            elif current is None:
                continue
            elif macro in _MACRO_TEXT:
                current.append(roff_text(_macro_args(rest)))
            elif macro in _BREAKS:
                current.append("")
            continue
        if current is not None:
            current.append(roff_text(raw))
    out = {}
    for name, lines in sections.items():
        paragraphs = [" ".join(p.split()) for p in "\n".join(lines).split("\n\n")]
        out[name] = "\n\n".join(p for p in paragraphs if p)
    return out


def read_page(path: Path) -> str | None:
    """A page's roff source (gunzipped), or None when unreadable, not text, or a ``.so`` redirect."""
    text = read_text_file(path)
    return None if text is None or text.lstrip().startswith(".so ") else text


def manpage_entry(source: str) -> tuple[str, str, str] | None:
    """``(names, description, document)`` of one page, or None when it has no usable NAME or body."""
    sections = roff_sections(source)
    name_text = " ".join(sections.get("NAME", "").split())
    match = _NAME_LINE.match(name_text)
    if not match:
        return None
    body = sections.get("DESCRIPTION") or next(
        (text for key, text in sections.items() if key not in {"NAME", "SYNOPSIS"} and text), ""
    )
    document = " ".join(body.split()[:MAX_WORDS])
    description = match.group("description").strip().rstrip(".")
    if len(description.split()) < 2 or len(document.split()) < 15 or description.lower() in document.lower():
        return None
    return match.group("names").strip(), description, document


def manpage_files(root: Path | str = "/usr/share/man", sections: Sequence[str] = MAN_SECTIONS) -> list[Path]:
    """English pages directly in ``root/manN`` for each section (the language folders are skipped)."""
    root = Path(root)
    return sorted(
        p for s in sections if (root / f"man{s}").is_dir() for p in (root / f"man{s}").iterdir() if p.is_file()
    )


def build_manpages(
    root: Path | str = "/usr/share/man",
    *,
    documents: int = 1000,
    queries: int = 300,
    per_family: int = 20,
    seed: int = 0,
) -> Collection:
    """The man-page collection: at most ``documents`` pages, ``queries`` of them asked for by description.

    Pages whose description or document repeats an earlier page's (in path order) are dropped, so
    every query has one right answer, and at most ``per_family`` pages share a first name word (one
    SDK's thousands of ``tool group verb`` pages would otherwise fill the collection). The choice is
    a seeded hash order, stable for a seed.
    """
    files = manpage_files(root)
    entries, seen_q, seen_d = [], set(), set()
    for path in files:
        source = read_page(path)
        entry = manpage_entry(source) if source else None
        if entry is None or entry[1].lower() in seen_q or entry[2] in seen_d:
            continue
        seen_q.add(entry[1].lower())
        seen_d.add(entry[2])
        entries.append((path, *entry))
    if not entries:
        raise CollectionError(
            f"no English man pages with a NAME and DESCRIPTION under {root}: install man-db and manpages, "
            "or evaluate on another collection"
        )
    chosen, families = [], {}
    for entry in sorted(entries, key=lambda e: seeded_order(str(e[0]), seed)):
        family = entry[1].split()[0].rstrip(",").lower()
        if families.get(family, 0) < per_family and len(chosen) < documents:
            families[family] = families.get(family, 0) + 1
            chosen.append(entry)
    asked = chosen[:queries]
    chosen.sort(key=lambda e: str(e[0]))
    # The file name (``cp.1``, ``req.1ssl``) is unique within the tree; the name alone is not.
    doc_id = {str(e[0]): f"man:{e[0].name.removesuffix('.gz')}" for e in chosen}
    corpus = {doc_id[str(p)]: {"title": names, "text": doc} for p, names, _, doc in chosen}
    query_ids = {str(p): f"q:{doc_id[str(p)]}" for p, *_ in asked}
    return Collection(
        corpus=corpus,
        queries={query_ids[str(p)]: desc for p, _, desc, _ in asked},
        qrels={query_ids[str(p)]: {doc_id[str(p)]: 1} for p, *_ in asked},
        name="manpages",
        meta={
            "source": "manpages",
            "builder": BUILDER_VERSION,
            "files_read": len(files),
            "usable_pages": len(entries),
            "files": sorted(str(p) for p, *_ in chosen),
        },
    )


def build_local_collection(source: str, **options) -> Collection:
    """One of :data:`LOCAL_SOURCES`, built now."""
    if source not in LOCAL_SOURCES:
        raise CollectionError(f"unknown local collection {source!r}; choose from {', '.join(LOCAL_SOURCES)}")
    return build_manpages(**options)


def local_fingerprint(source: str, root: Path | str = "/usr/share/man") -> str:
    """Builder version and the names and sizes of the files a source reads, hashed."""
    files = manpage_files(root)
    listing = "\n".join(f"{p}:{p.stat().st_size}" for p in files)
    return hashlib.sha256(f"{BUILDER_VERSION}|{source}|{listing}".encode()).hexdigest()[:12]


def ensure_local_collection(source: str, force: bool = False) -> Path:
    """Build ``source`` into the cache once (one BEIR folder, split ``test``); returns the folder."""
    from crossedge.core.cache import cache_dir, locked

    if source not in LOCAL_SOURCES:
        raise CollectionError(f"unknown local collection {source!r}; choose from {', '.join(LOCAL_SOURCES)}")
    target = cache_dir() / "retrieval" / f"{source}-{local_fingerprint(source)}"
    done = target / "complete.json"
    with locked(target):
        if done.exists() and not force:
            return target
        collection = build_local_collection(source)
        write_beir(collection, target)
        meta = {k: v for k, v in collection.meta.items() if k != "files"}
        (target / "files.json").write_text(json.dumps(collection.meta["files"], indent=0))
        done.write_text(json.dumps({**meta, "documents": len(collection.corpus), "queries": len(collection.queries)}))
    return target


def load_local_collection(source: str) -> Collection:
    """One local collection, built and cached on first use."""
    return read_beir(ensure_local_collection(source))
