"""Split a folder's text and code files into chunks that follow the files' structure."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

TEXT_SUFFIXES = {".md", ".txt", ".rst", ".adoc", ".org", ""}
CODE_SUFFIXES = {
    ".py", ".pyi", ".js", ".ts", ".tsx", ".jsx", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java",
    ".kt", ".rb", ".sh", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini", ".sql", ".html", ".css",
}  # fmt: skip
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".nox", "build", "dist"}
MAX_FILE_BYTES = 1_000_000


@dataclass
class Chunk:
    """A piece of one file: its text, lines and what kind of unit it is."""

    path: str
    start_line: int
    end_line: int
    kind: str
    text: str

    def to_dict(self) -> dict[str, object]:
        """JSON-able form stored beside the index."""
        return asdict(self)


def iter_files(paths: Sequence[Path | str]) -> list[Path]:
    """Text and code files under the given files or folders, skipping VCS, caches and large files."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        candidates: Iterable[Path] = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            # Only folders below the one given are skipped: a collection may itself live under build/ or .nox/.
            inside = file.relative_to(path).parts if path.is_dir() else ()
            if not file.is_file() or any(part in SKIP_DIRS for part in inside):
                continue
            if file.suffix.lower() not in TEXT_SUFFIXES | CODE_SUFFIXES:
                continue
            if file.stat().st_size > MAX_FILE_BYTES:
                continue
            out.append(file)
    return out


def _python_chunks(path: str, source: str) -> list[Chunk]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return _block_chunks(path, source, "code")
    lines = source.splitlines()
    chunks: list[Chunk] = []
    covered: set[int] = set()

    def take(node: ast.AST, kind: str, prefix: str = "") -> None:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        end = node.end_lineno or node.lineno
        body = "\n".join(lines[start - 1 : end])
        chunks.append(Chunk(path, start, end, kind, prefix + body))
        covered.update(range(start, end + 1))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            take(node, "function")
        elif isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            span = (node.end_lineno or node.lineno) - node.lineno
            if not methods or span < 60:
                take(node, "class")
                continue
            # Long classes: each method is a chunk, prefixed with the class line for context.
            header_end = methods[0].lineno - 1
            header = "\n".join(lines[node.lineno - 1 : header_end])
            chunks.append(Chunk(path, node.lineno, header_end, "class", header))
            covered.update(range(node.lineno, header_end + 1))
            for method in methods:
                take(method, "method", prefix=f"class {node.name}:\n")
    rest = [(i + 1, line) for i, line in enumerate(lines) if i + 1 not in covered]
    block: list[tuple[int, str]] = []
    for number, line in [*rest, (0, "")]:
        if number == 0 or (block and number != block[-1][0] + 1):
            text = "\n".join(t for _, t in block).strip()
            if text:
                chunks.append(Chunk(path, block[0][0], block[-1][0], "module", text))
            block = []
        if number:
            block.append((number, line))
    return sorted(chunks, key=lambda c: c.start_line)


def _block_chunks(path: str, text: str, kind: str, max_chars: int = 1200) -> list[Chunk]:
    """Blank-line separated blocks (paragraphs), merged up to ``max_chars``; headings start a new chunk."""
    lines = text.splitlines()
    paragraphs: list[tuple[int, int, str]] = []
    start, buf = None, []
    for i, line in enumerate([*lines, ""], 1):
        if line.strip():
            if start is None:
                start = i
            buf.append(line)
        elif buf:
            paragraphs.append((start, i - 1, "\n".join(buf)))
            start, buf = None, []
    chunks: list[Chunk] = []
    for p_start, p_end, p_text in paragraphs:
        heading = p_text.lstrip().startswith("#") and kind == "text"
        if chunks and not heading and len(chunks[-1].text) + len(p_text) < max_chars:
            last = chunks[-1]
            chunks[-1] = Chunk(path, last.start_line, p_end, kind, last.text + "\n\n" + p_text)
        else:
            chunks.append(Chunk(path, p_start, p_end, kind, p_text))
    return chunks


def chunk_file(path: Path, root: Path | None = None) -> list[Chunk]:
    """Chunks of one file: Python by top-level function/class (methods of long classes), others by paragraph."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    if path.suffix in (".py", ".pyi"):
        return _python_chunks(name, text)
    kind = "text" if path.suffix.lower() in TEXT_SUFFIXES else "code"
    return _block_chunks(name, text, kind)


def chunk_paths(paths: Sequence[Path | str]) -> list[Chunk]:
    """Chunks of every text and code file under ``paths``."""
    chunks = []
    for path in paths:
        base = Path(path)
        root = base if base.is_dir() else base.parent
        for file in iter_files([base]):
            chunks.extend(chunk_file(file, root))
    return chunks
