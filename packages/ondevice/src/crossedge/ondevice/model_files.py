"""Safetensors files the ondevice parts write: their metadata, and never writing over a file that is not ours."""

from __future__ import annotations

from pathlib import Path

from crossedge.core import CrossedgeError


def file_metadata(path: Path | str) -> dict[str, str] | None:
    """The safetensors metadata of ``path`` (``{}`` when it has none), or ``None`` if it is no safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # not a safetensors file at all
        return None


def check_writable(path: Path | str, file_format: str, what: str, *, force: bool = False) -> Path:
    """``path`` if a model may be written there: absent, a file of ``file_format`` written by us, or ``force``."""
    path = Path(path)
    if path.is_dir():
        raise CrossedgeError(f"{path} is a folder; give a .safetensors file name")
    if path.exists() and not force and (file_metadata(path) or {}).get("format") != file_format:
        raise CrossedgeError(f"{path} exists and is not {what} written by crossedge; pass --force to replace it")
    return path
