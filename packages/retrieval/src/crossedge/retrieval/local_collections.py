"""Out-of-domain evaluation collections built at run time from text on this machine.

Both collections pair a page's one-line description (the query) with the page's DESCRIPTION text (the
document, first :data:`MAX_WORDS` words), so every query has one right answer. Both are read by small
readers of ours, with no ``man``, ``groff`` or ``pod2text`` subprocess, and built by one builder
(:func:`build_local`): symlinks folded, repeated descriptions, documents and ids kept once (the first
in path order), a seeded hash order for the choice. Nothing of them is in the repository; each is
cached per machine under ``<crossedge cache>/retrieval/<source>-<fingerprint>``.

``manpages``: the English manual pages below ``/usr/share/man`` (sections 1, 5, 7 and 8), read by a
roff reader (``.SH`` sections, text macros, escapes; ``.de``/``.am``/``.ig`` blocks skipped whole). A
page's query is its NAME line's description ("copy files and directories"), its document id
``man:<section>:<name>`` (``man:1:cp``, ``man:1ssl:req``), its title the NAME line's names.

``perl-pod``: the POD documentation of the Perl modules and ``.pod`` files installed on this machine
(:data:`PERL_ROOTS`), read by a POD reader: ``=head1`` sections, ordinary paragraphs and ``=item``
and ``=head2`` texts with their formatting codes (``B<>``, ``C<< >>``, ``L<text|target>``, ``E<gt>``,
...) reduced to plain text. Verbatim (indented code) paragraphs, ``=begin``/``=end`` blocks and
``=for`` paragraphs are skipped. ``Module::Name - one-line description`` gives the query, the module
name the title and the id ``pod:<Module::Name>``.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .collection import Collection, CollectionError, read_beir, read_text_file, seeded_order, write_beir
from .options import LOCAL_SOURCES

BUILDER_VERSION = 3
MAN_SECTIONS = ("1", "5", "7", "8")
MAX_WORDS = 300
#: Where Perl keeps modules (the usual ``@INC`` folders of Debian-like systems); missing ones are skipped.
PERL_ROOTS = (
    "/usr/share/perl/5.*",
    "/usr/share/perl5",
    "/usr/lib/*-linux-gnu/perl*",
    "/usr/local/share/perl/*",
    "/usr/local/lib/*-linux-gnu/perl/*",
    "/usr/local/lib/site_perl",
)

Entry = tuple[str, str, str]  # names, description, document

# ---------------------------------------------------------------------------------------------- roff

# One escape a match: a comment, an escape with a delimited argument (motions, widths, drawing), font,
# family, colour and register escapes, sizes, strings, named characters, then any one character.
_ESCAPE = re.compile(
    r"""\\(?:
      (?P<comment>["\#].*)
    | (?P<delimited>[hvwlLoXDbxSRABNZYC])(?P<delim>.)(?P<argument>.*?)(?P=delim)
    | [fFmMgkn$][+-]?(?:\(..|\[[^\]]*\]|.)
    | s(?:[+-]?\(\d\d|\([+-]?\d\d|[+-]?\[[^\]]*\]|[+-]?'[^']*'|[+-]\d|[1-3]\d|\d)
    | \*(?P<string>\(..|\[[^\]]*\]|.)
    | (?P<char>\(..|\[[^\]]*\])
    | (?P<one>.|$)
    )""",
    re.VERBOSE,
)
_CHARS = {
    "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "Bq": '"', "bq": "'", "em": "-",
    "en": "-", "hy": "-", "mi": "-", "pl": "+", "eq": "=", "ga": "`", "ti": "~", "ha": "^", "rs": "\\",
    "sl": "/", "ba": "|", "or": "|", "co": "©", "rg": "®", "tm": "™", "de": "°", "mu": "×", "+-": "±",
    "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "sc": "§", "ps": "¶", "Fo": "«", "Fc": "»",
    "fo": "‹", "fc": "›", "Eu": "€", "Po": "£", "ct": "¢", "ss": "ß", "dg": "†", "lh": "", "rh": "", "bu": "",
}  # fmt: skip
_ACCENTS = {"'": "\u0301", "`": "\u0300", ":": "\u0308", "^": "\u0302", "~": "\u0303", ",": "\u0327"}
# pod2man's and groff's usual strings; a page's own unconditional ``.ds`` lines come first.
_STRINGS = {
    "Aq": "'", 'L"': '"', 'R"': '"', "C`": '"', "C'": '"', "''": '"', "``": '"', "lq": '"', "rq": '"', "--": "-",
    "Em": "-", "PI": "pi", "C+": "C++", "Tm": "(TM)", "R": "(R)", "Lt": "<", "Gt": ">", "q": '"',
}  # fmt: skip
_ONE = {"-": "-", "e": "\\", "E": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": " ", ".": ".", "'": "'",
        "`": "`", "_": "_"}  # fmt: skip
_SILENT = set("&|^)c%,/:{}udrzpa!?") | {""}
_JOIN = "\0"
_MACRO_TEXT = {"B", "I", "BR", "IR", "BI", "RB", "RI", "IB", "SM", "SB"}
_BREAKS = {"PP", "LP", "P", "TP", "IP", "RS", "RE", "br", "sp", "nf", "fi", "HP", "TQ", "EX", "EE", "in", "ti", "Sp"}
_DEFINITIONS = {"de", "de1", "dei", "dei1", "am", "am1", "ami", "ami1", "ig"}
_NAME_LINE = re.compile(r"^(?P<names>.+?)\s+(?:--?|—)\s+(?P<description>.+)$")


def _named_char(name: str) -> str:
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return _CHARS.get(name, "")


def roff_text(line: str, strings: dict[str, str] | None = None) -> str:
    """One roff text line as plain text: escapes resolved or dropped, never left as stray characters."""
    strings = {**_STRINGS, **(strings or {})}

    def one(match: re.Match) -> str:
        if match["char"]:
            return _named_char(match["char"][1:3] if match["char"][0] == "(" else match["char"][1:-1])
        if match["string"]:
            name = match["string"]
            return strings.get(name[1:3] if name[0] == "(" else name.strip("[]"), "")
        if match["delimited"] == "C":
            return _named_char(match["argument"])
        if match["one"] == "c" and match.end() == len(line):
            return _JOIN  # ``\c`` at the end of a line joins the next one to it
        if match["one"] is not None:
            return _ONE.get(match["one"], "" if match["one"] in _SILENT else match["one"])
        return ""

    return _ESCAPE.sub(one, line)


def _macro_args(rest: str) -> str:
    parts = re.findall(r'"([^"]*)"|(\S+)', rest)
    return " ".join(a or b for a, b in parts)


def _paragraphs(sections: dict[str, list[str]]) -> dict[str, str]:
    """Section lines as text: paragraphs (split at empty lines) with their whitespace collapsed."""
    out = {}
    for name, lines in sections.items():
        text = "\n".join(lines).replace(_JOIN + "\n", "").replace(_JOIN, "")
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
        out[name] = "\n\n".join(p for p in paragraphs if p)
    return out


def roff_sections(source: str) -> dict[str, str]:
    """A page's sections (upper-case ``.SH`` names) as plain text, paragraphs separated by blank lines.

    Macro definitions (``.de``, ``.am``, ``.ig`` and their variants, up to their ``..`` or named end)
    are skipped whole; unconditional ``.ds`` strings are substituted where the page uses them.
    """
    sections: dict[str, list[str]] = {}
    strings: dict[str, str] = {}
    current: list[str] | None = None
    block_end: str | None = None
    table_tab: str | None = None  # inside ``.TS``/``.TE``: the tbl column separator
    table_format = False  # inside the table's options and format lines, up to the one ending in "."
    for raw in source.splitlines():
        request = raw[1:].split() if raw.startswith((".", "'")) else []
        if block_end is not None:
            if request[:1] == [block_end]:
                block_end = None
            continue
        if table_format and not request:
            if raw.rstrip().endswith(";"):
                tab = re.search(r"tab\s*\((.)\)", raw)
                table_tab = tab[1] if tab else table_tab
            else:
                table_format = not raw.rstrip().endswith(".")
            continue
        if table_tab is not None and not request:
            raw = raw.replace("T{", " ").replace("T}", " ").replace(table_tab, " ")
        if raw.startswith(('.\\"', "'\\\"", '\\"', ".\\#")):
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].strip().partition(" ")
            if macro in _DEFINITIONS:
                # ``.de NAME [END]`` and ``.ig [END]`` end at ``.END``, or at ``..`` without one.
                ends = rest.split()[0 if macro == "ig" else 1 :]
                block_end = ends[0] if ends else "."
            elif macro in {"TS", "T&"}:
                table_format, table_tab = True, table_tab if macro == "T&" else "\t"
            elif macro == "TE":
                table_format, table_tab = False, None
            elif macro == "ds":
                name, _, value = rest.strip().partition(" ")
                strings[name] = roff_text(value.removeprefix('"'), strings)
            elif macro == "SH":
                current = sections.setdefault(roff_text(_macro_args(rest), strings).strip().upper(), [])
            elif current is None:
                continue
            elif macro in _MACRO_TEXT:
                current.append(roff_text(_macro_args(rest), strings))
            elif macro in _BREAKS:
                current.append("")
            continue
        if current is not None:
            current.append(roff_text(raw, strings))
    return _paragraphs(sections)


def read_page(path: Path) -> str | None:
    """A page's roff source (gunzipped), or None when unreadable, not text, or a ``.so`` redirect."""
    text = read_text_file(path)
    return None if text is None or text.lstrip().startswith(".so ") else text


def section_entry(sections: dict[str, str], *, min_description: int, min_document: int, fallback: bool) -> Entry | None:
    """``(names, description, document)`` from a page's NAME and DESCRIPTION sections, or None.

    None when the NAME section is not ``names - description``, the description has fewer than
    ``min_description`` words, the document fewer than ``min_document``, or the document contains the
    description (the query would quote its answer). With ``fallback`` a page without DESCRIPTION uses
    its first other section after SYNOPSIS.
    """
    match = _NAME_LINE.match(" ".join(sections.get("NAME", "").split()))
    if not match:
        return None
    body = sections.get("DESCRIPTION", "")
    if not body and fallback:
        body = next((text for key, text in sections.items() if key not in {"NAME", "SYNOPSIS"} and text), "")
    document = " ".join(body.split()[:MAX_WORDS])
    description = match.group("description").strip().rstrip(".")
    if len(description.split()) < min_description or len(document.split()) < min_document:
        return None
    if description.lower() in document.lower():
        return None
    return match.group("names").strip(), description, document


def manpage_entry(source: str) -> Entry | None:
    """``(names, description, document)`` of one man page, or None when it has no usable NAME or body."""
    return section_entry(roff_sections(source), min_description=2, min_document=15, fallback=True)


def unique_files(paths: Iterable[Path]) -> list[Path]:
    """``paths`` sorted, one per real file: a file reached through symlinks is kept under its own name."""
    kept: dict[Path, Path] = {}
    for path in sorted(paths):
        target = path.resolve()
        if target not in kept or (kept[target].is_symlink() and not path.is_symlink()):
            kept[target] = path
    return sorted(kept.values())


def manpage_files(root: Path | str = "/usr/share/man", sections: Sequence[str] = MAN_SECTIONS) -> list[Path]:
    """English pages directly in ``root/manN`` for each section (the language folders are skipped)."""
    root = Path(root)
    folders = [root / f"man{s}" for s in sections if (root / f"man{s}").is_dir()]
    return unique_files(p for folder in folders for p in folder.iterdir() if p.is_file())


def manpage_id(path: Path) -> str:
    """``man:<section>:<name>`` from a page's file name (``req.1ssl.gz`` is ``man:1ssl:req``)."""
    name, _, section = path.name.removesuffix(".gz").rpartition(".")
    return f"man:{section}:{name}"


# ----------------------------------------------------------------------------------------------- POD

_POD_COMMAND = re.compile(r"=[a-zA-Z]")
_POD_OPEN = re.compile(r"([A-Z])(<+)")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}


def _pod_escape(name: str) -> str:
    if name in _POD_ESCAPES:
        return _POD_ESCAPES[name]
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", name):
        return chr(int(name, 16))
    if re.fullmatch(r"\d+", name):
        return chr(int(name, 8) if name.startswith("0") else int(name))
    entity = html.unescape(f"&{name};")
    return "" if entity == f"&{name};" else entity


def _pod_link(text: str) -> str:
    if "|" in text:
        return text.partition("|")[0]
    if "://" in text or "/" not in text:
        return text
    page, _, section = text.partition("/")
    section = section.strip('"')
    return f'"{section}" in {page}' if page else f'"{section}"'


_POD_RENDER: dict[str, Callable[[str], str]] = {"X": lambda _: "", "Z": lambda _: "", "E": _pod_escape, "L": _pod_link}


def _pod_codes(text: str, start: int, brackets: int) -> tuple[str, int]:
    """Text from ``start`` up to the code's closing (``brackets`` of them; 0 at top level), and the end."""
    closing = re.compile(r">" if brackets == 1 else r"\s+" + ">" * brackets) if brackets else None
    parts, i = [], start
    while i < len(text):
        if closing and (close := closing.match(text, i)):
            return "".join(parts), close.end()
        opening = _POD_OPEN.match(text, i)
        if opening and (len(opening[2]) == 1 or text[opening.end() : opening.end() + 1].isspace()):
            count = len(opening[2])
            inner_start = opening.end() if count == 1 else re.compile(r"\s*").match(text, opening.end()).end()
            inner, i = _pod_codes(text, inner_start, count)
            parts.append(_POD_RENDER.get(opening[1], str)(inner))
            continue
        parts.append(text[i])
        i += 1
    return "".join(parts), i


def pod_text(text: str) -> str:
    """A POD paragraph as plain text: formatting codes (``B<x>``, ``C<< x >>``, ``L<a|b>``, ...) reduced."""
    return _pod_codes(text, 0, 0)[0]


def _pod_blocks(source: str) -> Iterable[list[str]]:
    """The POD paragraphs of a file (lines between blank lines, from a ``=command`` to ``=cut``)."""
    in_pod, block = False, []
    for line in source.splitlines():
        if not in_pod and not _POD_COMMAND.match(line):
            continue
        in_pod = True
        if line.startswith("=cut"):
            in_pod = False
        if line.strip() and in_pod:
            block.append(line)
            continue
        if block:
            yield block
        block = []
    if block:
        yield block


def pod_sections(source: str) -> dict[str, str]:
    """A POD file's ``=head1`` sections (upper-case names) as plain text, paragraphs separated by blank lines.

    Ordinary paragraphs, ``=item`` labels and ``=head2``-``=head4`` titles become text; verbatim
    paragraphs, ``=begin``/``=end`` blocks and ``=for`` paragraphs are skipped. Text right under a
    command line (no blank line between) is read as a paragraph of its own.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    skipping = False
    for block in _pod_blocks(source):
        first, rest = block[0], block[1:]
        command, _, argument = first[1:].partition(" ") if _POD_COMMAND.match(first) else ("", "", "")
        argument = argument.strip()
        if skipping:
            skipping = command != "end"
            continue
        if command in {"begin", "for"}:
            skipping = command == "begin"
            continue
        if command:
            if command == "head1":
                current = sections.setdefault(" ".join(pod_text(argument).split()).upper(), [])
            elif current is not None and command in {"head2", "head3", "head4", "item"}:
                label = pod_text(argument).strip()
                if label and label != "*" and not re.fullmatch(r"\d+\.?", label):
                    current += [label, ""]
            if not rest:
                continue
            block = rest
        if current is not None and not block[0][:1].isspace():
            current += [pod_text(" ".join(block)), ""]
    return _paragraphs(sections)


def pod_entry(source: str) -> Entry | None:
    """``(module, description, document)`` of one POD file, or None when its NAME or DESCRIPTION is unusable."""
    return section_entry(pod_sections(source), min_description=3, min_document=20, fallback=False)


def perl_roots() -> list[Path]:
    """The existing folders of :data:`PERL_ROOTS`, symlinked ones (``5.36 -> 5.36.0``) once."""
    found = {Path(p).resolve() for pattern in PERL_ROOTS for p in Path("/").glob(pattern.lstrip("/"))}
    return sorted(p for p in found if p.is_dir())


def pod_files(roots: Iterable[Path | str] | None = None) -> list[Path]:
    """The ``.pm`` and ``.pod`` files below ``roots`` (default :func:`perl_roots`); symlinked dirs not followed."""
    found = []
    for root in perl_roots() if roots is None else [Path(r) for r in roots]:
        for folder, _, names in os.walk(root):
            found += [Path(folder, n) for n in names if n.endswith((".pm", ".pod"))]
    return unique_files(p for p in found if p.is_file())


def _pod_id(path: Path, names: str) -> str:
    return f"pod:{names.split(',')[0].split()[0]}"


# ------------------------------------------------------------------------------------------- builder


def build_local(
    source: str,
    files: Sequence[Path],
    *,
    read: Callable[[Path], str | None],
    entry: Callable[[str], Entry | None],
    doc_id: Callable[[Path, str], str],
    family: Callable[[str], str],
    empty: str,
    documents: int | None,
    queries: int | None,
    per_family: int | None,
    seed: int,
) -> Collection:
    """One local collection from ``files``: each file's ``entry`` (names, description, document), filtered.

    Files whose description, document or id repeats an earlier file's (in path order) are dropped, so
    every query has one right answer; at most ``per_family`` entries share a ``family`` (of their
    names). The ``documents`` kept and the ``queries`` asked are the first in a seeded hash order of
    the paths, stable for a seed; None keeps all. ``empty`` is the error message when no file gives
    an entry.
    """
    entries, seen_q, seen_d, seen_id = [], set(), set(), set()
    for path in files:
        text = read(path)
        found = entry(text) if text else None
        if found is None:
            continue
        names, description, document = found
        key = doc_id(path, names)
        if description.lower() in seen_q or document in seen_d or key in seen_id:
            continue
        seen_q.add(description.lower())
        seen_d.add(document)
        seen_id.add(key)
        entries.append((str(path), key, names, description, document))
    if not entries:
        raise CollectionError(empty)
    chosen, families = [], {}
    for item in sorted(entries, key=lambda e: seeded_order(e[0], seed)):
        group = family(item[2])
        full = documents is not None and len(chosen) >= documents
        if not full and (per_family is None or families.get(group, 0) < per_family):
            families[group] = families.get(group, 0) + 1
            chosen.append(item)
    asked = chosen if queries is None else chosen[:queries]
    chosen.sort()
    return Collection(
        corpus={key: {"title": names, "text": doc} for _, key, names, _, doc in chosen},
        queries={f"q:{key}": desc for _, key, _, desc, _ in asked},
        qrels={f"q:{key}": {key: 1} for _, key, *_ in asked},
        name=source,
        meta={
            "source": source,
            "builder": BUILDER_VERSION,
            "files_read": len(files),
            "usable_pages": len(entries),
            "files": [path for path, *_ in chosen],
        },
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

    At most ``per_family`` pages share a first name word (one SDK's thousands of ``tool group verb``
    pages would otherwise fill the collection).
    """
    return build_local(
        "manpages",
        manpage_files(root),
        read=read_page,
        entry=manpage_entry,
        doc_id=lambda path, names: manpage_id(path),
        family=lambda names: names.split()[0].rstrip(",").lower(),
        empty=f"no English man pages with a NAME and DESCRIPTION under {root}: install man-db and manpages, "
        "or evaluate on another collection",
        documents=documents,
        queries=queries,
        per_family=per_family,
        seed=seed,
    )


def build_perl_pod(
    roots: Iterable[Path | str] | None = None,
    *,
    documents: int | None = None,
    queries: int | None = None,
    per_family: int | None = None,
    seed: int = 0,
) -> Collection:
    """The Perl POD collection: every usable module page (by default), each asked for by its description."""
    files = pod_files(roots)
    where = ", ".join(map(str, roots)) if roots is not None else ", ".join(PERL_ROOTS)
    return build_local(
        "perl-pod",
        files,
        read=read_text_file,
        entry=pod_entry,
        doc_id=_pod_id,
        family=lambda names: names.split("::")[0].lower(),
        empty=f"no Perl module documentation with a NAME and DESCRIPTION under {where} ({len(files)} .pm/.pod "
        "files read): install perl (perl-modules) or evaluate on another collection",
        documents=documents,
        queries=queries,
        per_family=per_family,
        seed=seed,
    )


_BUILDERS: dict[str, Callable[..., Collection]] = {
    "manpages": lambda **options: build_manpages(**options),
    "perl-pod": lambda **options: build_perl_pod(**options),
}
_FILES: dict[str, Callable[[], list[Path]]] = {"manpages": lambda: manpage_files(), "perl-pod": lambda: pod_files()}


def _check_source(source: str) -> None:
    if source not in LOCAL_SOURCES:
        raise CollectionError(f"unknown local collection {source!r}; choose from {', '.join(LOCAL_SOURCES)}")


def build_local_collection(source: str, **options) -> Collection:
    """One of :data:`LOCAL_SOURCES`, built now."""
    _check_source(source)
    return _BUILDERS[source](**options)


def local_fingerprint(source: str) -> str:
    """Builder version and the names, sizes and modification times of the files a source reads, hashed."""
    _check_source(source)
    stats = ((p, p.stat()) for p in _FILES[source]())
    listing = "\n".join(f"{p}:{s.st_size}:{s.st_mtime_ns}" for p, s in stats)
    return hashlib.sha256(f"{BUILDER_VERSION}|{source}|{listing}".encode()).hexdigest()[:12]


def ensure_local_collection(source: str, force: bool = False) -> Path:
    """Build ``source`` into the cache once (one BEIR folder, split ``test``); returns the folder."""
    from crossedge.core.cache import cache_dir, locked

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
