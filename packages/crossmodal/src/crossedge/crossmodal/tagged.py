"""The package's model files: safetensors whose metadata holds a format tag and JSON fields.

Every saved model of crossmodal (cross-subject models, the SSL speech encoder, the
encoder-decoder ASR, Zipper) is one such file. Writing is atomic (a temporary file beside the
destination replaces it only when complete), so an interrupted save never leaves half a model,
and a file another program wrote is never replaced;
reading refuses, in one line that says what to do, a file that is missing, unreadable, of
another format or whose tensors do not fit the model its metadata describes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def check_writable(path: str | Path, fmt: str, error: type[Exception]) -> None:
    """Refuse a destination that holds a file this format did not write (never replace another's file)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder; give a file path to save to")
    if path.exists():
        try:
            found = format_of(path, error)
        except Exception:  # noqa: BLE001 (unreadable: not ours, so not ours to replace)
            found = None
        if found != fmt:
            raise error(f"{path} exists and was not written as {fmt!r}; choose another place to save to or move it")


def write(
    path: str | Path, state: Mapping[str, torch.Tensor], fmt: str, *, error: type[Exception], **fields: Any
) -> Path:
    """Write ``state`` to ``path`` with ``format`` = ``fmt`` and each field JSON-encoded in the metadata.

    An existing file is replaced only when it is an earlier file of the same format
    (:func:`check_writable`); ``error`` is the exception raised otherwise.
    """
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    path = Path(path)
    check_writable(path, fmt, error)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    metadata = {"format": fmt, **{k: json.dumps(v) for k, v in fields.items()}}
    with atomic_file(path) as handle:
        handle.write(save(tensors, metadata=metadata))
    return path


def format_of(path: str | Path, error: type[Exception]) -> str | None:
    """The format tag of a safetensors file (None when it has none), or ``error`` if it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format")
    except Exception as exc:  # safetensors raises several types for truncated or garbled files
        raise error(f"cannot read {path}: {exc}; save the model again") from exc


def read(
    path: str | Path, fmt: str, what: str, error: type[Exception]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and raw metadata of a :func:`write` file of format ``fmt`` (``what`` names it in errors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; give the path of a saved {what}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as exc:  # safetensors raises several types for truncated or garbled files
        raise error(f"cannot read {what} {path}: {exc}; save it again") from exc
    if meta.get("format") != fmt:
        raise error(f"{path} is not a saved {what} (format {meta.get('format')!r}, not {fmt!r})")
    return tensors, meta


def load_module(
    path: str | Path, fmt: str, what: str, error: type[Exception], build: Callable[[dict[str, Any]], M]
) -> M:
    """Rebuild a module from a :func:`write` file: ``build(fields)`` makes it from the decoded metadata
    fields, then the tensors load strictly; any mismatch is the one-line 'damaged' error."""
    tensors, meta = read(path, fmt, what, error)
    try:
        fields = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        module = build(fields)
        module.load_state_dict(tensors, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise error(f"{what} {path} is damaged ({type(exc).__name__}); save it again") from exc
    return module


def dataclass_config(cls: type, raw: dict[str, Any]) -> Any:
    """``cls(**raw)`` for a dataclass config, refusing (KeyError) keys it does not know."""
    from dataclasses import fields

    unknown = set(raw) - {f.name for f in fields(cls)}
    if unknown:
        raise KeyError(sorted(unknown))
    return cls(**raw)
