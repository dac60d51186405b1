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


class IndexCorruptedError(CrossedgeError):
    """An index folder is missing, damaged, or does not match what is asked of it."""


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
        if manifest.get("format") != INDEX_FORMAT:
            raise IndexCorruptedError(f"{manifest_path} is not a crossedge retrieval index manifest; {rebuild}")
        if manifest.get("version") != INDEX_VERSION:
            raise IndexCorruptedError(
                f"index {folder} has format version {manifest.get('version')!r}, this crossedge-retrieval reads "
                f"version {INDEX_VERSION}; {rebuild}"
            )
        for name, expected in manifest.get("files", {}).items():
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
        with open(folder / DOCUMENTS, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise IndexCorruptedError(f"{folder / DOCUMENTS} line {line_no} is not JSON; {rebuild}") from exc
                ids.append(record.pop("id"))
                documents.append(record)
        if tuple(embeddings.shape) != (manifest["count"], manifest["dim"]) or len(ids) != manifest["count"]:
            raise IndexCorruptedError(
                f"index {folder} holds {len(ids)} documents and embeddings of shape {tuple(embeddings.shape)}, "
                f"but its manifest says {manifest['count']} x {manifest['dim']}; {rebuild}"
            )
        return cls(embeddings, ids, documents, model=manifest.get("model", ""), info=manifest.get("info", {}))


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
