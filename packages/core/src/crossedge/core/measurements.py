"""Measurements kept on disk per machine: kernel timings and verification costs.

Some choices rest on timing the hardware: which int8 kernel is fastest for a layer shape,
how long a target's forward takes for ``n`` verified tokens. They are slow to take, they
add noise (two runs could choose differently), and they only change with the CPU, the
thread count, the torch build and the model. So they are measured once and kept as small
JSON files under ``$CROSSEDGE_MEASUREMENTS`` (else ``<cache>/measurements``), one per key.

A key is a plain dict (what was measured, on which model); :func:`machine` adds the facts
about this machine, so a cache copied to another computer or read with another thread
count simply misses. A file that cannot be read is reported once and measured again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache import atomic_file, cache_dir

__all__ = ["MEASUREMENTS_ENV", "MeasurementCache", "machine", "measurements_dir", "module_fingerprint"]

MEASUREMENTS_ENV = "CROSSEDGE_MEASUREMENTS"
FORMAT_VERSION = 1


def measurements_dir() -> Path:
    """``$CROSSEDGE_MEASUREMENTS``, else ``measurements`` under crossedge's cache folder."""
    explicit = os.environ.get(MEASUREMENTS_ENV)
    return Path(explicit).expanduser() if explicit else cache_dir() / "measurements"


@functools.cache
def _processor() -> tuple[tuple[str, Any], ...]:
    """The facts that cannot change while the process runs (read from /proc/cpuinfo once)."""
    import torch

    from .bench import cpu_flags, cpu_model, instruction_caps

    return (
        ("cpu", cpu_model()),
        ("cpu_flags", cpu_flags()),
        # ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA change the kernels a CPU runs without changing its flags.
        *instruction_caps().items(),
        ("torch", torch.__version__),
    )


def machine() -> dict[str, Any]:
    """What makes a timing on this process differ from one elsewhere: CPU, its kernel flags, threads, torch."""
    import torch

    return {**dict(_processor()), "threads": torch.get_num_threads()}


def module_fingerprint(module: Any) -> str:
    """A digest of a model's structure: its config, module classes, tensor names, shapes and dtypes.

    Two loads of one checkpoint, quantized and prepared the same way, share it; another
    quantization, backend preparation, dtype or architecture does not. Weight values are not
    read (they do not change a kernel's speed).
    """
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        # The checkpoint's folder is where it was loaded from, not what it is.
        settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, child in module.named_modules():
        digest.update(f"{name}:{type(child).__module__}.{type(child).__qualname__};".encode())
    for kind, tensors in (("p", module.named_parameters()), ("b", module.named_buffers())):
        for name, tensor in tensors:
            digest.update(f"{kind}:{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()


class MeasurementCache:
    """JSON files of one kind of measurement (``kernels``, ``verification-cost``), one per key."""

    def __init__(self, kind: str, root: Path | str | None = None):
        self.kind = kind
        self.root = Path(root) if root is not None else measurements_dir()

    def full_key(self, key: dict[str, Any]) -> dict[str, Any]:
        """``key`` plus this machine's facts and the format version."""
        return {"version": FORMAT_VERSION, "kind": self.kind, "machine": machine(), **key}

    def path(self, key: dict[str, Any]) -> Path:
        """The file that holds (or would hold) the measurement under ``key``."""
        return self._path(json.dumps(self.full_key(key), sort_keys=True, default=str))

    def _path(self, full_key_text: str) -> Path:
        return self.root / self.kind / f"{hashlib.sha256(full_key_text.encode()).hexdigest()[:32]}.json"

    def get(self, key: dict[str, Any]) -> Any | None:
        """The stored value, or None when nothing (readable) is stored under ``key``."""
        text = json.dumps(self.full_key(key), sort_keys=True, default=str)
        path = self._path(text)
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as error:
            warnings.warn(f"ignoring unreadable measurement file {path} ({error}); measuring again", stacklevel=2)
            return None
        if not isinstance(data, dict) or data.get("key") != json.loads(text) or "value" not in data:
            warnings.warn(
                f"ignoring measurement file {path}: it is not the one for this key; measuring again", stacklevel=2
            )
            return None
        return data["value"]

    def put(self, key: dict[str, Any], value: Any) -> Path | None:
        """Store ``value`` (JSON-ready) under ``key``, atomically; None when the folder cannot be written."""
        path = self.path(key)
        record = {"key": self.full_key(key), "value": value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            with atomic_file(path) as handle:
                handle.write(json.dumps(record, sort_keys=True, indent=1, default=str).encode())
        except OSError as error:
            warnings.warn(
                f"could not keep the measurement in {path} ({error}); it will be measured again next time", stacklevel=2
            )
            return None
        return path

    def get_or_measure(self, key: dict[str, Any], measure: Callable[[], Any], *, again: bool = False) -> Any:
        """The stored value under ``key``, else ``measure()`` stored; ``again`` measures and replaces it."""
        if not again:
            value = self.get(key)
            if value is not None:
                return value
        value = measure()
        self.put(key, value)
        return value
