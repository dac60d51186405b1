"""A dense index on disk: embeddings in safetensors, documents in JSON lines, a checksummed manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossedge.core import CrossedgeError
from crossedge.core.cache import sha256_file

INDEX_FORMAT = "crossedge.retrieval.index"
INDEX_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.safetensors"
DOCUMENTS = "documents.jsonl"


_MANIFEST_START = json.dumps({"format": INDEX_FORMAT}, indent=2)[:-2]  # '{\n  "format": "crossedge.retrieval.index"'

#: Folders an index may hold beside its files: the bi-encoder it was built with, trained rerankers.
OWN_FOLDERS = ("model", "cross-encoder", "uni-encoder")


class IndexCorruptedError(CrossedgeError):
    """An index folder is missing, damaged, or does not match what is asked of it."""


class IndexOutputError(CrossedgeError):
    """An index would be written where it could overwrite files crossedge did not write."""


def is_index_folder(folder: Path | str) -> bool:
    """True when ``folder`` holds a manifest written by :meth:`DenseIndex.save` (whatever state the rest is in).

    A truncated manifest still counts when it starts the way :meth:`DenseIndex.save` writes one, so a
    damaged index can be rebuilt in place as its error message says.
    """
    try:
        text = (Path(folder) / MANIFEST).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    if text.startswith(_MANIFEST_START):
        return True
    try:
        manifest = json.loads(text)
    except ValueError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == INDEX_FORMAT


def prepare_index_folder(folder: Path | str, *, inputs: Sequence[Path | str] = (), force: bool = False) -> bool:
    """Check that an index may be written to ``folder``; returns True when it replaces an index already there.

    Refused: a folder that is one of ``inputs``, a file, and a folder holding files crossedge
    did not write (unless ``force``). Even with ``force`` a file we did not write is never
    replaced: a ``manifest.json`` that is not an index manifest stays, and the index goes elsewhere.
    """
    folder = Path(folder)
    target = folder.resolve()
    for path in inputs:
        if Path(path).resolve() == target:
            raise IndexOutputError(
                f"--out {folder} is also an input folder: the index would be written among the files it indexes; "
                f"choose an --out outside the inputs (e.g. --out {folder}.index)"
            )
    if folder.exists() and not folder.is_dir():
        raise IndexOutputError(f"--out {folder} is a file, not a folder; choose another --out")
    if not folder.exists():
        return False
    entries = sorted(p.name for p in folder.iterdir())
    ours = is_index_folder(folder)
    if not ours:
        clashes = [n for n in entries if n in (MANIFEST, EMBEDDINGS, DOCUMENTS, "model")]
        if clashes:
            raise IndexOutputError(
                f"{folder / clashes[0]} was not written by crossedge retrieval index; it is never overwritten, "
                "not even with --force: choose another --out"
            )
    foreign = [n for n in entries if not (ours and n in (MANIFEST, EMBEDDINGS, DOCUMENTS, *OWN_FOLDERS))]
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise IndexOutputError(
            f"--out {folder} holds files crossedge did not write ({shown}); choose an empty or new folder, "
            "or pass --force to write the index beside them (only the index's own files are replaced)"
        )
    return ours


@dataclass
class DenseIndex:
    """Normalized document embeddings with ids and metadata, searched by brute-force dot product."""

    embeddings: torch.Tensor
    ids: list[str]
    documents: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.ids):
            raise IndexCorruptedError(
                f"index needs one embedding row per id: got shape {tuple(self.embeddings.shape)} "
                f"for {len(self.ids)} ids"
            )
        if self.documents and len(self.documents) != len(self.ids):
            raise IndexCorruptedError(f"index has {len(self.documents)} documents for {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.embeddings.shape[1])

    def search(self, queries: torch.Tensor, k: int = 10, chunk: int = 256) -> list[list[tuple[int, float]]]:
        """Top ``k`` (row, score) per query embedding, best first, computed in query chunks."""
        if queries.ndim == 1:
            queries = queries.unsqueeze(0)
        if queries.shape[1] != self.dim:
            raise IndexCorruptedError(
                f"query embeddings have width {queries.shape[1]} but the index was built with width {self.dim} "
                f"(model {self.model!r}); search with the model that built the index"
            )
        k = min(k, len(self))
        results = []
        matrix = self.embeddings.float()
        for start in range(0, queries.shape[0], chunk):
            scores = queries[start : start + chunk].float() @ matrix.T
            top = torch.topk(scores, k, dim=1)
            for vals, rows in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append(list(zip(rows, vals, strict=True)))
        return results

    def save(self, folder: Path | str) -> Path:
        """Write the index; the manifest records version, shapes and a SHA-256 per file."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if (folder / MANIFEST).exists() and not is_index_folder(folder):
            raise IndexOutputError(f"{folder / MANIFEST} was not written by crossedge: refusing to overwrite it")
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings.contiguous().float()}, str(folder / EMBEDDINGS))
        with open(folder / DOCUMENTS, "w", encoding="utf-8") as handle:
            for i, doc_id in enumerate(self.ids):
                record = {"id": doc_id, **(self.documents[i] if self.documents else {})}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        manifest = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "model": self.model,
            "count": len(self),
            "dim": self.dim,
            "info": self.info,
            "files": {
                name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
                for name in (EMBEDDINGS, DOCUMENTS)
            },
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: Path | str, *, verify: bool = True) -> DenseIndex:
        """Read an index, checking its manifest, file sizes, checksums and shapes."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        rebuild = f"rebuild it with `crossedge retrieval index PATH... --out {folder}`"
        manifest_path = folder / MANIFEST
        if not manifest_path.exists():
            raise IndexCorruptedError(f"{folder} is not a crossedge index (no {MANIFEST}); {rebuild}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise IndexCorruptedError(f"index manifest {manifest_path} is not valid JSON ({exc}); {rebuild}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
            raise IndexCorruptedError(f"{manifest_path} is not a crossedge retrieval index manifest; {rebuild}")
        if manifest.get("version") != INDEX_VERSION:
            raise IndexCorruptedError(
                f"index {folder} has format version {manifest.get('version')!r}, this crossedge-retrieval reads "
                f"version {INDEX_VERSION}; {rebuild}"
            )
        files, count, dim = _manifest_structure(manifest, manifest_path, rebuild)
        for name in (EMBEDDINGS, DOCUMENTS):
            expected = files[name]
            path = folder / name
            if not path.exists():
                raise IndexCorruptedError(f"index file {path} is missing; {rebuild}")
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise IndexCorruptedError(
                    f"index file {path} has {size} bytes, the manifest says {expected['bytes']} "
                    f"(truncated or modified); {rebuild}"
                )
            if verify and sha256_file(path) != expected["sha256"]:
                raise IndexCorruptedError(
                    f"index file {path} fails its SHA-256 check (corrupted or modified); {rebuild}"
                )
        try:
            embeddings = load_file(str(folder / EMBEDDINGS))["embeddings"]
        except (SafetensorError, KeyError, OSError) as exc:
            raise IndexCorruptedError(f"cannot read embeddings from {folder / EMBEDDINGS}: {exc}; {rebuild}") from exc
        ids, documents = [], []
        with open(folder / DOCUMENTS, encoding="utf-8", errors="strict") as handle:
            try:
                lines = list(handle)
            except UnicodeDecodeError as exc:
                raise IndexCorruptedError(f"{folder / DOCUMENTS} is not UTF-8 text; {rebuild}") from exc
        for line_no, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise IndexCorruptedError(f"{folder / DOCUMENTS} line {line_no} is not JSON; {rebuild}") from exc
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise IndexCorruptedError(
                    f'{folder / DOCUMENTS} line {line_no} is not an object with a string "id"; {rebuild}'
                )
            ids.append(record.pop("id"))
            documents.append(record)
        if tuple(embeddings.shape) != (count, dim) or len(ids) != count:
            raise IndexCorruptedError(
                f"index {folder} holds {len(ids)} documents and embeddings of shape {tuple(embeddings.shape)}, "
                f"but its manifest says {count} x {dim}; {rebuild}"
            )
        info = manifest.get("info", {})
        model = manifest.get("model", "")
        if not isinstance(info, dict) or not isinstance(model, str):
            raise IndexCorruptedError(f"{manifest_path} has a malformed 'model' or 'info' entry; {rebuild}")
        return cls(embeddings, ids, documents, model=model, info=info)


def _manifest_structure(manifest: dict, path: Path, rebuild: str) -> tuple[dict[str, dict], int, int]:
    """The manifest's file entries, count and dim, each checked for its type (a hand-edited manifest gets a message)."""
    files = manifest.get("files")
    problems = []
    if not isinstance(files, dict):
        problems.append("'files' is not an object")
        files = {}
    for name in (EMBEDDINGS, DOCUMENTS):
        entry = files.get(name)
        if not isinstance(entry, dict):
            problems.append(f"'files' has no entry for {name}")
        elif not isinstance(entry.get("sha256"), str) or type(entry.get("bytes")) is not int:
            problems.append(f"'files'/{name} needs a 'sha256' string and a 'bytes' integer")
    count, dim = manifest.get("count"), manifest.get("dim")
    for key, value in (("count", count), ("dim", dim)):
        if type(value) is not int or value < 0:
            problems.append(f"{key!r} is {value!r}, not a non-negative integer")
    if problems:
        raise IndexCorruptedError(f"index manifest {path} is malformed: {'; '.join(problems)}; {rebuild}")
    return files, count, dim


def build_index(
    encoder: Any,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    documents: Sequence[dict[str, Any]] | None = None,
    model: str = "",
    batch_size: int = 32,
    progress: bool = False,
) -> DenseIndex:
    """Embed texts with a :class:`BiEncoder` and return the index (not yet saved)."""
    embeddings = encoder.encode(texts, batch_size=batch_size, progress=progress)
    return DenseIndex(embeddings, list(ids), list(documents or []), model=model)
