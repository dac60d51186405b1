"""ParallelBench-style tasks, generated at run time: waiting-line list operations, puzzles, words to a sentence.

The list tasks follow ParallelBench's waiting line (3-6 people; copy, insert / remove / replace
by index and at a random position, reverse, shuffle, sort by last name). Names come from the
``faker`` wheel's en_US person lists; the sentences of ``words_to_sentence`` from the license
texts under ``/usr/share/common-licenses``. Nothing is stored in the repository: every example is
made from a seed.

Every example is plain whitespace-separated words, so a word-level tokenizer covers it: list
items are separated by ``,``, puzzle rows by ``;``. A task's ``score`` reads the model's output
text and returns 1.0 for a valid answer and less for a wrong one; ParallelBench's rules for the
tasks with many right answers (a shuffle must be a permutation that is not the input; a random
insertion must keep the others in order) are spelled out in each scorer.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from crossedge.core.errors import CrossedgeError

LICENSES = Path("/usr/share/common-licenses")
ITEM_SEP = ","
ROW_SEP = ";"
SYMBOLS = ("A", "B", "C", "D")
#: How many first and last names the waiting lines draw from (the most common ones).
NAME_POOL = 40


@dataclass(frozen=True)
class TaskExample:
    """One prompt with one reference answer; ``reference`` holds what the scorer needs."""

    task: str
    prompt: str
    answer: str
    reference: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A task: ``make(rng)`` draws one example, ``score(example, output)`` grades an output in [0, 1]."""

    name: str
    make: Callable[[random.Random], TaskExample]
    score: Callable[[TaskExample, str], float]
    #: Whether more than one answer is right (the answer in the example is one of them).
    open_answer: bool = False


# ----------------------------------------------------------------------------- names


@lru_cache(maxsize=1)
def names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``NAME_POOL`` most common first and last names of faker's en_US provider."""
    try:
        from faker.providers.person.en_US import Provider
    except ImportError as exc:
        raise CrossedgeError(
            "the waiting-line tasks take their names from the faker wheel: pip install 'crossedge-specdec[parallel]'"
        ) from exc

    def top(weights: dict[str, float]) -> tuple[str, ...]:
        ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
        return tuple(name for name, _ in ranked if name.isalpha())[:NAME_POOL]

    firsts = {**Provider.first_names_male, **Provider.first_names_female}
    return top(firsts), top(Provider.last_names)


def _people(rng: random.Random, n: int) -> list[str]:
    """``n`` people with distinct last names (so sorting by last name has one answer)."""
    firsts, lasts = names()
    return [f"{rng.choice(firsts)} {last}" for last in rng.sample(lasts, n)]


def _newcomer(rng: random.Random, line: list[str]) -> str:
    taken = {person.split()[1] for person in line}
    firsts, lasts = names()
    return f"{rng.choice(firsts)} {rng.choice([x for x in lasts if x not in taken])}"


def format_line(line: Iterable[str]) -> str:
    """``Ann Lee , Bo Park``: people separated by a comma word."""
    return f" {ITEM_SEP} ".join(line)


def parse_line(text: str) -> list[str]:
    """The people of an output line (empty items dropped, whitespace normalized)."""
    items = [" ".join(part.split()) for part in text.split(ITEM_SEP)]
    return [item for item in items if item]


def _line_prompt(instruction: str, line: list[str], extra: str = "") -> str:
    return f"{instruction}{extra} . line : {format_line(line)}"


def _length(rng: random.Random) -> int:
    return rng.randint(3, 6)


# ---------------------------------------------------------------------- list scorers


def exact_line_score(example: TaskExample, output: str) -> float:
    """1.0 when the output line equals the reference line, item for item."""
    return float(parse_line(output) == example.reference["expected"])


def random_insert_score(example: TaskExample, output: str) -> float:
    """Valid when the newcomer appears once and the others keep their order."""
    out, line, new = parse_line(output), example.reference["line"], example.reference["new"]
    if len(out) != len(line) + 1 or out.count(new) != 1:
        return 0.0
    return float([p for p in out if p != new] == line)


def random_remove_score(example: TaskExample, output: str) -> float:
    """Valid when exactly one person is gone and the rest keep their order."""
    out, line = parse_line(output), example.reference["line"]
    if len(out) != len(line) - 1:
        return 0.0
    return float(any(line[:i] + line[i + 1 :] == out for i in range(len(line))))


def random_replace_score(example: TaskExample, output: str) -> float:
    """Valid when exactly one position changed, and it changed to the newcomer."""
    out, line, new = parse_line(output), example.reference["line"], example.reference["new"]
    if len(out) != len(line):
        return 0.0
    changed = [i for i, (a, b) in enumerate(zip(out, line, strict=True)) if a != b]
    return float(len(changed) == 1 and out[changed[0]] == new)


def shuffle_score(example: TaskExample, output: str) -> float:
    """Valid when the output holds the same people (as a multiset) in a different order."""
    out, line = parse_line(output), example.reference["line"]
    return float(sorted(out) == sorted(line) and out != line)


# --------------------------------------------------------------------- list makers


def _copy(rng: random.Random) -> TaskExample:
    line = _people(rng, _length(rng))
    return TaskExample("copy", _line_prompt("copy the waiting line", line), format_line(line), {"expected": line})


def _reverse(rng: random.Random) -> TaskExample:
    line = _people(rng, _length(rng))
    out = line[::-1]
    return TaskExample("reverse", _line_prompt("reverse the waiting line", line), format_line(out), {"expected": out})


def _sort(rng: random.Random) -> TaskExample:
    line = _people(rng, _length(rng))
    out = sorted(line, key=lambda p: p.split()[1])
    prompt = _line_prompt("sort the waiting line by last name", line)
    return TaskExample("sort", prompt, format_line(out), {"expected": out})


def _shuffle(rng: random.Random) -> TaskExample:
    line = _people(rng, _length(rng))
    out = line[:]
    while out == line:
        rng.shuffle(out)
    prompt = _line_prompt("shuffle the waiting line into a new order", line)
    return TaskExample("shuffle", prompt, format_line(out), {"line": line})


def _insert(random_index: bool) -> Callable[[random.Random], TaskExample]:
    def make(rng: random.Random) -> TaskExample:
        line = _people(rng, _length(rng))
        new = _newcomer(rng, line)
        at = rng.randint(0, len(line))
        out = line[:at] + [new] + line[at:]
        if random_index:
            task, prompt = "insert_random", _line_prompt(f"insert {new} anywhere in the waiting line", line)
            return TaskExample(task, prompt, format_line(out), {"line": line, "new": new})
        prompt = _line_prompt(f"insert {new} at position {at + 1} of the waiting line", line)
        return TaskExample("insert_index", prompt, format_line(out), {"expected": out})

    return make


def _remove(random_index: bool) -> Callable[[random.Random], TaskExample]:
    def make(rng: random.Random) -> TaskExample:
        line = _people(rng, _length(rng))
        at = rng.randrange(len(line))
        out = line[:at] + line[at + 1 :]
        if random_index:
            prompt = _line_prompt("one person left the waiting line , remove anyone", line)
            return TaskExample("remove_random", prompt, format_line(out), {"line": line})
        prompt = _line_prompt(f"remove position {at + 1} from the waiting line", line)
        return TaskExample("remove_index", prompt, format_line(out), {"expected": out})

    return make


def _replace(random_index: bool) -> Callable[[random.Random], TaskExample]:
    def make(rng: random.Random) -> TaskExample:
        line = _people(rng, _length(rng))
        new = _newcomer(rng, line)
        at = rng.randrange(len(line))
        out = line[:at] + [new] + line[at + 1 :]
        if random_index:
            prompt = _line_prompt(f"replace anyone in the waiting line with {new}", line)
            return TaskExample("replace_random", prompt, format_line(out), {"line": line, "new": new})
        prompt = _line_prompt(f"replace position {at + 1} of the waiting line with {new}", line)
        return TaskExample("replace_index", prompt, format_line(out), {"expected": out})

    return make


# --------------------------------------------------------------------------- puzzles


def format_grid(grid: Iterable[Iterable[Any]]) -> str:
    """Rows of cells separated by ``;``: ``A B C D ; B A D C ; ...``."""
    return f" {ROW_SEP} ".join(" ".join(str(c) for c in row) for row in grid)


def parse_grid(text: str) -> list[list[str]]:
    """The rows of an output grid, each a list of cell words."""
    return [row.split() for row in text.split(ROW_SEP) if row.split()]


def _fill(grid: list[list[Any]], symbols: list[Any], ok: Callable[[list[list[Any]], int, int, Any], bool], rng) -> bool:
    for r, c in itertools.product(range(4), range(4)):
        if grid[r][c] is None:
            for s in rng.sample(symbols, len(symbols)):
                if ok(grid, r, c, s):
                    grid[r][c] = s
                    if _fill(grid, symbols, ok, rng):
                        return True
                    grid[r][c] = None
            return False
    return True


def _latin_ok(grid, r, c, s) -> bool:
    return s not in grid[r] and all(grid[i][c] != s for i in range(4))


def _sudoku_ok(grid, r, c, s) -> bool:
    br, bc = 2 * (r // 2), 2 * (c // 2)
    box = {grid[i][j] for i in range(br, br + 2) for j in range(bc, bc + 2)}
    return _latin_ok(grid, r, c, s) and s not in box


def _random_grid(rng: random.Random, symbols: list[Any], ok) -> list[list[Any]]:
    grid: list[list[Any]] = [[None] * 4 for _ in range(4)]
    if not _fill(grid, symbols, ok, rng):  # pragma: no cover - a 4x4 grid always fills
        raise RuntimeError("no grid")
    return grid


def _valid_latin(rows: list[list[str]], symbols: list[str]) -> bool:
    if len(rows) != 4 or any(len(row) != 4 for row in rows):
        return False
    want = sorted(symbols)
    return all(sorted(row) == want for row in rows) and all(sorted(col) == want for col in zip(*rows, strict=True))


def latin_square_score(example: TaskExample, output: str) -> float:
    """Valid when the output is 4 rows of 4 symbols and every row and column holds each symbol once."""
    return float(_valid_latin(parse_grid(output), list(example.reference["symbols"])))


def sudoku_score(example: TaskExample, output: str) -> float:
    """Valid when the grid is a solved 4x4 sudoku (rows, columns, 2x2 boxes) that keeps every given digit."""
    rows = parse_grid(output)
    if not _valid_latin(rows, ["1", "2", "3", "4"]):
        return 0.0
    boxes = [[rows[r][c] for r in range(br, br + 2) for c in range(bc, bc + 2)] for br in (0, 2) for bc in (0, 2)]
    if any(sorted(box) != ["1", "2", "3", "4"] for box in boxes):
        return 0.0
    given = example.reference["puzzle"]
    return float(all(g == "0" or g == rows[r][c] for r, row in enumerate(given) for c, g in enumerate(row)))


def _latin(rng: random.Random) -> TaskExample:
    symbols = list(SYMBOLS)
    grid = _random_grid(rng, symbols, _latin_ok)
    prompt = f"write a latin square of size 4 with the symbols {' '.join(symbols)}"
    return TaskExample("latin_square", prompt, format_grid(grid), {"symbols": symbols})


def _solutions(grid: list[list[Any]], limit: int = 2) -> int:
    for r, c in itertools.product(range(4), range(4)):
        if grid[r][c] is None:
            count = 0
            for s in (1, 2, 3, 4):
                if _sudoku_ok(grid, r, c, s):
                    grid[r][c] = s
                    count += _solutions(grid, limit - count)
                    grid[r][c] = None
                    if count >= limit:
                        break
            return count
    return 1


def _sudoku(rng: random.Random) -> TaskExample:
    solved = _random_grid(rng, [1, 2, 3, 4], _sudoku_ok)
    while True:  # four blanks whose solution is unique (ParallelBench's 12-given 4x4)
        blanks = rng.sample(range(16), 4)
        puzzle = [[None if 4 * r + c in blanks else solved[r][c] for c in range(4)] for r in range(4)]
        if _solutions([row[:] for row in puzzle]) == 1:
            break
    shown = [["0" if v is None else str(v) for v in row] for row in puzzle]
    prompt = f"solve the sudoku , 0 is blank . grid : {format_grid(shown)}"
    return TaskExample("sudoku", prompt, format_grid(solved), {"puzzle": shown})


# ------------------------------------------------------------------ words to sentence

_STOP = frozenset(
    {
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "by",
        "with",
        "is",
        "are",
        "be",
        "as",
        "at",
        "it",
        "this",
        "that",
        "from",
        "not",
        "any",
        "you",
        "your",
        "such",
        "which",
        "may",
        "all",
        "other",
        "its",
        "if",
        "no",
        "under",
        "will",
        "shall",
        "can",
    }
)


@lru_cache(maxsize=1)
def license_sentences() -> tuple[str, ...]:
    """Sentences of 6-16 lowercase words from the license texts on this machine, each once."""
    if not LICENSES.is_dir():
        raise CrossedgeError(f"words_to_sentence needs the license texts under {LICENSES}; install base-files")
    seen: dict[str, None] = {}
    for path in sorted(LICENSES.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(errors="replace")
        for raw in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = re.findall(r"[a-z]+", raw.lower())
            if 6 <= len(words) <= 16:
                seen.setdefault(" ".join(words))
    if not seen:
        raise CrossedgeError(f"no sentences found under {LICENSES}")
    return tuple(seen)


def sentence_split(sentence: str) -> str:
    """``train`` or ``test``: a fixed hash of the sentence, so held-out sentences are never trained on."""
    return "test" if hashlib.sha256(sentence.encode()).digest()[0] < 26 else "train"


def words_score(example: TaskExample, output: str) -> float:
    """The fraction of the required words the output uses (1.0 when it uses them all)."""
    words, used = example.reference["words"], set(output.split())
    return sum(w in used for w in words) / len(words)


def _words_maker(split: str) -> Callable[[random.Random], TaskExample]:
    def make(rng: random.Random) -> TaskExample:
        pool = [s for s in license_sentences() if sentence_split(s) == split]
        sentence = rng.choice(pool)
        content = sorted({w for w in sentence.split() if w not in _STOP and len(w) > 2})
        words = rng.sample(content, min(3, len(content)))
        prompt = f"write a sentence that uses the words {' '.join(words)}"
        return TaskExample("words_to_sentence", prompt, sentence, {"words": words})

    return make


# -------------------------------------------------------------------------- registry


def _tasks(split: str) -> dict[str, Task]:
    rows = [
        Task("copy", _copy, exact_line_score),
        Task("insert_index", _insert(False), exact_line_score),
        Task("insert_random", _insert(True), random_insert_score, open_answer=True),
        Task("remove_index", _remove(False), exact_line_score),
        Task("remove_random", _remove(True), random_remove_score, open_answer=True),
        Task("replace_index", _replace(False), exact_line_score),
        Task("replace_random", _replace(True), random_replace_score, open_answer=True),
        Task("reverse", _reverse, exact_line_score),
        Task("shuffle", _shuffle, shuffle_score, open_answer=True),
        Task("sort", _sort, exact_line_score),
        Task("latin_square", _latin, latin_square_score, open_answer=True),
        Task("sudoku", _sudoku, sudoku_score),
        Task("words_to_sentence", _words_maker(split), words_score, open_answer=True),
    ]
    return {task.name: task for task in rows}


TASKS: dict[str, Task] = _tasks("train")
#: Named groups of tasks, usable wherever task names are.
GROUPS: dict[str, tuple[str, ...]] = {
    "parallelbench": tuple(TASKS),
    "waiting-line": tuple(name for name in TASKS if name not in ("latin_square", "sudoku", "words_to_sentence")),
    "puzzles": ("latin_square", "sudoku"),
}


def resolve_tasks(spec: str | Iterable[str]) -> list[str]:
    """Task names from a comma list of tasks and groups (``parallelbench``, ``copy,sort``)."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    out: list[str] = []
    for item in filter(None, items):
        if item in GROUPS:
            out.extend(GROUPS[item])
        elif item in TASKS:
            out.append(item)
        else:
            valid = ", ".join([*GROUPS, *TASKS])
            raise CrossedgeError(f"unknown parallel-decoding task {item!r}; valid: {valid}")
    if not out:
        raise CrossedgeError("no tasks given: name tasks or a group such as 'parallelbench'")
    return list(dict.fromkeys(out))


def make_examples(tasks: Iterable[str], per_task: int, *, seed: int, split: str = "train") -> list[TaskExample]:
    """``per_task`` examples of each task, drawn from ``seed``; ``split`` picks held-out sentences for ``test``."""
    if split not in ("train", "test"):
        raise CrossedgeError(f"split must be 'train' or 'test', not {split!r}")
    table = _tasks(split)
    out = []
    for name in tasks:
        rng = random.Random(f"{seed}:{split}:{name}")
        out.extend(table[name].make(rng) for _ in range(per_task))
    return out


def score(example: TaskExample, output: str) -> float:
    """Grade ``output`` for ``example`` with its task's scorer."""
    return TASKS[example.task].score(example, output)
