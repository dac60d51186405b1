"""Prompt suites: the bundled ``default`` suite and Spec-Bench ``question.jsonl`` files.

The repository stores only a recipe: our own instruction templates and where to
cut each source text. The source texts are files every Python install (and
Debian) already has: standard-library modules, ``pydoc_data`` topics and
``/usr/share/common-licenses``. The suite is materialized from them at run time
and cached; a missing source file is skipped with a warning that names it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from crossedge.core.datasets import MissingSourceWarning

from .errors import SpecdecError

TASKS = (
    "multi-turn",
    "translation",
    "summarization",
    "question-answering",
    "math-reasoning",
    "retrieval",
    "code-editing",
    "redundant-turn",
)
SUITE_VERSION = 2
LICENSES = Path("/usr/share/common-licenses")


@dataclass(frozen=True)
class SuitePrompt:
    """One benchmark prompt: its task, a stable id, and the user turns in order."""

    task: str
    prompt_id: str
    turns: tuple[str, ...]


# ------------------------------------------------------------------ sources


class MissingSource(Exception):
    """A source named by the recipe is not on this machine."""


def _stdlib(relpath: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / relpath


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MissingSource(str(path)) from exc


def function_source(relpath: str, name: str) -> str:
    """The source of a top-level function in a standard-library module."""
    path = _stdlib(relpath)
    text = _read(path)
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    raise MissingSource(f"{path} (function {name!r})")


def _cut(text: str, paragraph: int, max_chars: int) -> str:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    out = []
    for part in paragraphs[paragraph:]:
        if out and sum(len(p) for p in out) + len(part) > max_chars:
            break
        out.append(part[:max_chars])
    if not out:
        raise MissingSource(f"paragraph {paragraph} (the text has {len(paragraphs)})")
    return "\n\n".join(out)


def pydoc_excerpt(topic: str, paragraph: int = 0, max_chars: int = 1200) -> str:
    """Paragraphs of a ``pydoc_data.topics`` entry starting at ``paragraph``, up to ``max_chars``."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:
        raise MissingSource("pydoc_data.topics") from exc
    if topic not in topics:
        raise MissingSource(f"pydoc_data.topics[{topic!r}]")
    return _cut(topics[topic], paragraph, max_chars)


def license_excerpt(name: str, paragraph: int = 0, max_chars: int = 1200) -> str:
    """Paragraphs of a file under /usr/share/common-licenses."""
    return _cut(_read(LICENSES / name), paragraph, max_chars)


def file_statistics(relpath: str) -> dict[str, int]:
    """Line counts of a standard-library file: the real numbers behind the math prompts."""
    lines = _read(_stdlib(relpath)).splitlines()
    blank = sum(1 for line in lines if not line.strip())
    comment = sum(1 for line in lines if line.strip().startswith("#"))
    return {"lines": len(lines), "blank": blank, "comment": comment, "code": len(lines) - blank - comment}


# ------------------------------------------------------------------- recipe
# Each entry: (prompt id, function returning the user turns). Templates are ours.

CODE_FUNCTIONS = [
    ("textwrap.py", "indent"),
    ("shlex.py", "quote"),
    ("posixpath.py", "join"),
    ("genericpath.py", "commonprefix"),
    ("fnmatch.py", "filter"),
    ("string.py", "capwords"),
    ("colorsys.py", "rgb_to_hls"),
    ("heapq.py", "_siftdown"),
    ("bisect.py", "insort_right"),
    ("html/__init__.py", "escape"),
]
CODE_INSTRUCTIONS = [
    "Rename the function `{name}` to `{name}_v2` and update any reference to it. Reply with the complete code.",
    "Add type hints to every parameter and to the return value of this function. Reply with the full function.",
    "Add a one-line docstring to this function and change nothing else. Reply with the complete function.",
    "Rename the first parameter of this function to `value` everywhere it is used. Show the whole function.",
    "Insert a comment above every `if` statement explaining the condition. Reply with the complete code.",
]
REDUNDANT_FUNCTIONS = [
    ("textwrap.py", "shorten"),
    ("shlex.py", "split"),
    ("posixpath.py", "splitext"),
    ("glob.py", "escape"),
    ("colorsys.py", "hls_to_rgb"),
    ("calendar.py", "monthrange"),
    ("quopri.py", "needsquoting"),
    ("base64.py", "b64encode"),
]
REDUNDANT_FIRST = (
    "Explain briefly what this function does, then show it again with a comment on each line:\n\n```python\n{code}\n```"
)
# MT-Redundant asks for the previous answer again with a small variation, so most of the second
# answer repeats the first. Suite version 1 asked for variations that rewrite most lines (every local
# variable renamed, every comment reworded); version 2 asks for one local change.
REDUNDANT_SECOND = [
    "Show your commented version of the function again, but rename the function to `{name}_v2`.",
    "Show your commented version of the function again, with a one-line docstring added at the top.",
]
TOPICS = ["assert", "break", "del", "global", "pass", "raise", "return", "with", "yield", "import"]
MULTI_TURN_SECOND = [
    "Give a short code example that uses it, and explain the example in one sentence.",
    "What is a common mistake people make with it? Show the fix.",
]
PROSE = [
    ("pydoc", "for", 0),
    ("pydoc", "while", 0),
    ("pydoc", "try", 0),
    ("pydoc", "lambda", 0),
    ("pydoc", "truth", 0),
    ("pydoc", "naming", 1),
    ("license", "Apache-2.0", 2),
    ("license", "MPL-2.0", 3),
    ("license", "GPL-3", 3),
    ("license", "Artistic", 2),
]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "French", "German"]
RAG_QUESTIONS = [
    ("for", "When is the `else` clause of a `for` loop executed?"),
    ("while", "What happens when a `break` statement runs inside the loop?"),
    ("try", "What does the `finally` clause guarantee?"),
    ("with", "Which methods of the context manager are called, and when?"),
    ("import", "What are the two steps of a basic import statement?"),
    ("lambda", "What kind of expressions can a lambda contain?"),
    ("truth", "Which values are considered false?"),
    ("raise", "What does `raise` do without an expression?"),
]
MATH_FILES = [
    "textwrap.py",
    "shlex.py",
    "fnmatch.py",
    "colorsys.py",
    "bisect.py",
    "glob.py",
    "string.py",
    "heapq.py",
]


def _prose(kind: str, name: str, paragraph: int, max_chars: int) -> str:
    if kind == "pydoc":
        return pydoc_excerpt(name, paragraph, max_chars)
    return license_excerpt(name, paragraph, max_chars)


def _about(topic: str, *turns: str) -> tuple[str, ...]:
    # Questions about a language topic are only asked where its reference text exists on this machine.
    pydoc_excerpt(topic)
    return turns


def _recipe() -> list[tuple[str, str, Callable[[], tuple[str, ...]]]]:
    entries: list[tuple[str, str, Callable[[], tuple[str, ...]]]] = []

    for i, topic in enumerate(TOPICS[:8]):
        first = f"In Python, what is the `{topic}` statement for? Answer in a short paragraph."
        second = MULTI_TURN_SECOND[i % 2]
        entries.append(("multi-turn", f"topic-{topic}", lambda t=topic, f=first, s=second: _about(t, f, s)))

    for i, (kind, name, paragraph) in enumerate(PROSE[:8]):
        language = LANGUAGES[i]
        entries.append(
            (
                "translation",
                f"{kind}-{name}-{language.lower()}",
                lambda k=kind, n=name, p=paragraph, lang=language: (
                    f"Translate the following text into {lang}:\n\n{_prose(k, n, p, 500)}",
                ),
            )
        )
    for kind, name, paragraph in PROSE[2:10]:
        entries.append(
            (
                "summarization",
                f"{kind}-{name}",
                lambda k=kind, n=name, p=paragraph: (
                    f"Summarize the following text in three sentences:\n\n{_prose(k, n, p, 1400)}",
                ),
            )
        )
    for topic in TOPICS[:8]:
        entries.append(
            (
                "question-answering",
                f"topic-{topic}",
                lambda t=topic: _about(t, f"What does the Python `{t}` statement do, and when would you use it?"),
            )
        )
    for relpath in MATH_FILES:

        def math_turns(r: str = relpath) -> tuple[str, ...]:
            s = file_statistics(r)
            return (
                f"The Python file `{r}` has {s['lines']} lines. {s['blank']} of them are blank and "
                f"{s['comment']} are comment lines. How many lines contain code, and what percentage of all "
                f"lines is that? Think step by step.",
            )

        entries.append(("math-reasoning", f"lines-{relpath.replace('/', '-')}", math_turns))
    for topic, question in RAG_QUESTIONS:
        entries.append(
            (
                "retrieval",
                f"topic-{topic}",
                lambda t=topic, q=question: (
                    "Answer the question using only the reference text, quoting it where you can.\n\n"
                    f"Reference:\n{pydoc_excerpt(t, 0, 1500)}\n\nQuestion: {q}",
                ),
            )
        )
    for i, (relpath, name) in enumerate(CODE_FUNCTIONS[:8]):
        instruction = CODE_INSTRUCTIONS[i % len(CODE_INSTRUCTIONS)]
        entries.append(
            (
                "code-editing",
                f"{relpath.replace('/', '-')}-{name}",
                lambda r=relpath, n=name, ins=instruction: (
                    f"{ins.format(name=n)}\n\n```python\n{function_source(r, n)}\n```",
                ),
            )
        )
    for i, (relpath, name) in enumerate(REDUNDANT_FUNCTIONS):
        entries.append(
            (
                "redundant-turn",
                f"{relpath.replace('/', '-')}-{name}",
                lambda r=relpath, n=name, second=REDUNDANT_SECOND[i % 2]: (
                    REDUNDANT_FIRST.format(code=function_source(r, n)),
                    second.format(name=n),
                ),
            )
        )
    return entries


def source_documents() -> frozenset[str]:
    """Ids (as in the ``pydoc-topics`` and ``common-licenses`` datasets) of the documents the
    default suite's prompts read or ask about (every topic the recipe lists), for training recipes
    that must leave them out."""
    topics = set(TOPICS) | {topic for topic, _ in RAG_QUESTIONS}
    ids = {f"pydoc-topics/{topic}" for topic in topics}
    for kind, name, _ in PROSE:
        ids.add(f"pydoc-topics/{name}" if kind == "pydoc" else f"common-licenses/{name}")
    return frozenset(ids)


def _recipe_hash() -> str:
    material = json.dumps(
        [
            SUITE_VERSION,
            CODE_FUNCTIONS,
            CODE_INSTRUCTIONS,
            REDUNDANT_FUNCTIONS,
            REDUNDANT_FIRST,
            REDUNDANT_SECOND,
            MULTI_TURN_SECOND,
            TOPICS,
            PROSE,
            RAG_QUESTIONS,
            MATH_FILES,
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def materialize_default_suite() -> list[SuitePrompt]:
    """Build the default suite from local files; missing sources are skipped with a warning."""
    prompts = []
    for task, prompt_id, build in _recipe():
        try:
            turns = build()
        except MissingSource as exc:
            warnings.warn(
                f"suite prompt {task}/{prompt_id} skipped: {exc} is missing", MissingSourceWarning, stacklevel=2
            )
            continue
        prompts.append(SuitePrompt(task, prompt_id, tuple(turns)))
    if not prompts:
        raise SpecdecError("none of the default suite's source texts are on this machine")
    return prompts


def default_suite(cache: bool = True) -> list[SuitePrompt]:
    """The default suite, read from crossedge's cache when this recipe was materialized before."""
    from crossedge.core.cache import cache_dir

    path = cache_dir() / "specdec" / f"suite-default-{_recipe_hash()}.json"
    if cache and path.exists():
        try:
            return [SuitePrompt(d["task"], d["prompt_id"], tuple(d["turns"])) for d in json.loads(path.read_text())]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
    prompts = materialize_default_suite()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(p) for p in prompts], indent=1))
        tmp.replace(path)
    return prompts


def read_spec_bench(path: Path | str) -> list[SuitePrompt]:
    """Prompts from a Spec-Bench ``question.jsonl`` (``question_id``, ``category``, ``turns``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecdecError(f"cannot read prompts file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SpecdecError(
            f"prompts file {path} is not UTF-8 text (byte {exc.start} cannot be decoded): "
            f"give a Spec-Bench question.jsonl, one JSON object per line"
        ) from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            turns = record["turns"]
            if isinstance(turns, str):
                turns = [turns]
            prompt = SuitePrompt(str(record["category"]), str(record["question_id"]), tuple(turns))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecdecError(
                f"{path}:{number} is not a Spec-Bench question line "
                f"(needs question_id, category and turns): {type(exc).__name__}: {exc}"
            ) from exc
        # A question without turns would run nothing and count as a prompt; a non-text turn is a broken file.
        if not prompt.turns or not all(isinstance(t, str) and t.strip() for t in prompt.turns):
            raise SpecdecError(
                f"{path}:{number}: question {prompt.prompt_id!r} needs 'turns' to be a non-empty list of "
                f"non-empty strings, got {json.dumps(turns)[:80]}"
            )
        prompts.append(prompt)
    if not prompts:
        raise SpecdecError(f"{path} holds no questions")
    return prompts


def limit_per_task(prompts: list[SuitePrompt], limit: int | None) -> list[SuitePrompt]:
    """Keep the first ``limit`` prompts of each task, preserving order."""
    if limit is None:
        return prompts
    if limit < 1:
        raise SpecdecError(f"--limit-per-task must be at least 1, got {limit}")
    seen: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        seen[prompt.task] = seen.get(prompt.task, 0) + 1
        if seen[prompt.task] <= limit:
            kept.append(prompt)
    return kept
