"""Safetensors files the ondevice parts write: their metadata, and never writing over a file that is not ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossedge.core import CrossedgeError

if TYPE_CHECKING:
    from torch import nn


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


def saved_config(path: Path | str, file_format: str, what: str, train_command: str) -> dict[str, Any]:
    """The ``config`` metadata of a model file of ``file_format``; a missing or foreign file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CrossedgeError(f"no model file at {path}: train one with `{train_command} --out {path}`")
    metadata = file_metadata(path) or {}
    if metadata.get("format") != file_format or "config" not in metadata:
        raise CrossedgeError(f"{path} is not {what} (no {file_format!r} metadata); train one with `{train_command}`")
    return json.loads(metadata["config"])


def saved_extra(path: Path | str) -> dict[str, Any]:
    """The ``extra`` metadata a model file was saved with (its training record), or {}."""
    raw = (file_metadata(path) or {}).get("extra")
    return json.loads(raw) if raw else {}


def load_state_checked(network: nn.Module, path: Path | str) -> nn.Module:
    """Load ``path``'s tensors into ``network`` after checking names and shapes match; returns it in eval mode."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    expected = network.state_dict()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    wrong = [k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        raise CrossedgeError(
            f"{path} does not match its own config (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}, wrong shape {sorted(wrong)[:3]}); retrain it"
        )
    network.load_state_dict(tensors)
    return network.eval()


def save_with_config(
    network: nn.Module, path: Path | str, file_format: str, what: str, *, force: bool = False, extra: dict | None = None
) -> Path:
    """Write ``network``'s tensors as safetensors with ``file_format``, its ``config`` and ``extra`` as metadata.

    An existing file is replaced only when it is ``what`` written here, or with ``force``.
    """
    from safetensors.torch import save_file

    path = check_writable(path, file_format, what, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    metadata = {"format": file_format, "config": json.dumps(network.config.to_dict())}
    if extra:
        metadata["extra"] = json.dumps(extra)
    save_file(tensors, str(path), metadata=metadata)
    return path
