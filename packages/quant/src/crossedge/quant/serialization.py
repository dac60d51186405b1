"""Save a quantized model as safetensors plus a versioned JSON quantization map, and load it back exactly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core.cache import sha256_file
from crossedge.core.contracts.model_format import ModelFormat
from crossedge.core.errors import CrossedgeError, ModelSourceError

from .api import MAP_ATTRIBUTE, Quantizer, keep_rows_invariant, quantization_map, relink_tied
from .config import config_from_dict

FORMAT = "crossedge.quant"
#: Version of the quantization map format (``quantization.json``).
FORMAT_VERSION = 1
MAP_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"


class QuantFormatError(CrossedgeError):
    """A quantized model folder is missing, damaged, from another version, or does not match its model."""


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors with one name per storage, and alias -> kept name for tied ones (safetensors refuses sharing)."""
    kept: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tensors, tied = {}, {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in kept:
            tied[name] = kept[key]
            continue
        kept[key] = name
        tensors[name] = tensor.detach().contiguous().clone()
    return tensors, tied


def save_quantized(model: nn.Module, folder: Path | str, tokenizer: Any = None) -> Path:
    """Write ``model.safetensors``, ``quantization.json`` and, for transformers models, config and tokenizer."""
    from safetensors.torch import save_file

    qmap = quantization_map(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, tied = _dedupe(model.state_dict())
    weights = folder / WEIGHTS_FILE
    save_file(tensors, str(weights), metadata={"format": "pt", "producer": FORMAT})
    is_transformers = hasattr(model, "config") and hasattr(model.config, "save_pretrained")
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": qmap["config"],
        "modules": qmap["modules"],
        "details": qmap.get("details", {}),
        "tied": tied,
        "weights": {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size, "sha256": sha256_file(weights)},
        "model": {"library": "transformers" if is_transformers else "torch", "class": type(model).__name__},
    }
    (folder / MAP_FILE).write_text(json.dumps(document, indent=2) + "\n")
    if is_transformers:
        model.config.save_pretrained(folder)
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def written_by(folder: Path, map_file: str, format_id: str) -> bool:
    """Whether ``folder`` holds a ``map_file`` that crossedge wrote with format ``format_id``."""
    try:
        document = json.loads((folder / map_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == format_id


def refuse_foreign_files(
    out: Path,
    shown: Path | str,
    *,
    written: Sequence[str],
    ours: bool,
    writer: str,
    force: bool,
    error: type[CrossedgeError] = CrossedgeError,
) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder without ``force``, or one whose files we did not write.

    ``written`` are the names the writer creates; ``ours`` says whether an earlier run of it
    wrote the folder. With ``force`` only those names are replaced, and other files are kept.
    """
    if out.exists() and not out.is_dir():
        raise error(f"--out {shown} is a file, not a folder; choose a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not force:
        raise error(
            f"--out {shown} is not empty: choose a new or empty folder, or pass --force to replace the files "
            f"{writer} writes there ({', '.join(written)}; other files are kept)"
        )
    clashes = [name for name in written if (out / name).exists()]
    if clashes and not ours:
        raise error(
            f"--out {shown} holds {', '.join(clashes)} that {writer} did not write; even with --force crossedge "
            "never writes over files it did not create: choose another folder"
        )


def read_format_document(
    folder: Path | str,
    map_file: str,
    *,
    format_id: str,
    version: int,
    written_by_what: str,
    redo: str,
    error: type[CrossedgeError],
) -> tuple[Path, dict[str, Any]]:
    """``folder/map_file`` read as JSON and checked to be ``format_id`` at ``version``; returns its path and dict.

    ``written_by_what`` finishes "it is not ..." when the file is missing; ``redo`` says how to
    write the folder again. Every failure is one ``error`` line.
    """
    path = Path(folder) / map_file
    if not path.is_file():
        raise error(f"{folder} has no {map_file}: it is not {written_by_what}; {redo}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}): the file is damaged; {redo}") from exc
    if not isinstance(document, dict) or document.get("format") != format_id:
        raise error(f"{path} is not a {format_id} file: it was not written by crossedge-quant; {redo}")
    found = document.get("version")
    if found != version:
        raise error(
            f"{path} has format version {found!r}, but this crossedge-quant reads version {version}: "
            f"install the crossedge-quant release that wrote it, or {redo}"
        )
    return path, document


def _expect(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise QuantFormatError(
            f"{path}: {what}; the file is damaged or was edited by hand, re-run 'crossedge quant run'"
        )


def read_quantization_map(folder: Path | str) -> dict[str, Any]:
    """The checked contents of ``quantization.json``: known format and version, its method's module kinds.

    The method is looked up in the quantizer registry (after plugins load), and the module
    kinds are the ones that method produces, so a third-party method's file loads too.
    Structural damage (a missing section, a wrong type) is one :class:`QuantFormatError`.
    """
    path, document = read_format_document(
        folder, MAP_FILE, format_id=FORMAT, version=FORMAT_VERSION,
        written_by_what="a folder written by 'crossedge quant run'", redo="re-run 'crossedge quant run'",
        error=QuantFormatError,
    )  # fmt: skip
    _expect(isinstance(document.get("config"), dict), path, "'config' is missing or not an object")
    _expect(isinstance(document.get("modules"), dict), path, "'modules' is missing or not an object")
    for key in ("tied", "weights", "details"):
        _expect(isinstance(document.get(key, {}), dict), path, f"{key!r} is not an object")
    _expect(
        all(isinstance(k, str) and isinstance(v, str) for k, v in document.get("tied", {}).items()),
        path,
        "'tied' must map tensor names to tensor names",
    )
    config = config_from_dict(document["config"])  # refuses unknown methods and config versions with its own message
    quantizer = _quantizer_class(config.method, path)
    kinds = quantizer.module_classes()
    for name, entry in document["modules"].items():
        _expect(
            isinstance(entry, dict) and isinstance(entry.get("spec"), dict),
            path,
            f"module {name!r} must be an object with 'kind' and 'spec'",
        )
        if entry.get("kind") not in kinds:
            raise QuantFormatError(
                f"{path}: module {name!r} has kind {entry.get('kind')!r}, which method {config.method!r} does not "
                f"produce (it produces {', '.join(sorted(kinds))})"
            )
    return document


def _quantizer_class(method: str, path: Path) -> type[Quantizer]:
    from crossedge.core.contracts.quantizer import quantizer_class

    cls = quantizer_class(method)
    if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
        raise QuantFormatError(
            f"{path}: method {method!r} is not a crossedge-quant method, so crossedge-quant cannot rebuild its modules"
        )
    return cls


def _check_weights_file(folder: Path, document: dict[str, Any]) -> Path:
    info = document.get("weights", {})
    name = info.get("file", WEIGHTS_FILE)
    if not isinstance(name, str) or Path(name).name != name:
        raise QuantFormatError(f"{folder / MAP_FILE}: weights file {name!r} must be a file name inside the folder")
    weights = folder / name
    if not weights.is_file():
        raise QuantFormatError(f"{weights} is missing: copy the whole folder or re-run 'crossedge quant run'")
    size = weights.stat().st_size
    if "bytes" in info and size != info["bytes"]:
        raise QuantFormatError(
            f"{weights} is {size} bytes but {MAP_FILE} records {info['bytes']}: the file is truncated or was "
            "replaced; re-run 'crossedge quant run'"
        )
    if "sha256" in info and sha256_file(weights) != info["sha256"]:
        raise QuantFormatError(
            f"{weights} does not match the SHA-256 recorded in {MAP_FILE}: the file is damaged; re-export the model"
        )
    return weights


def _skeleton(folder: Path) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise QuantFormatError(
            f"{folder} has no config.json, so the model architecture is unknown: pass model=<a fresh float instance>"
        )
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = folder / "generation_config.json"
    if gen.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def load_quantized(folder: Path | str, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_quantized`; its outputs match the saved model bit for bit.

    For transformers models the architecture comes from ``config.json``; for plain
    ``torch.nn`` models pass ``model``, a fresh float instance of the same class.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    document = read_quantization_map(folder)
    weights = _check_weights_file(folder, document)
    if model is None:
        model = _skeleton(folder)
    kinds = _quantizer_class(document["config"]["method"], folder / MAP_FILE).module_classes()
    for name, entry in document["modules"].items():
        try:
            model.get_submodule(name)
        except AttributeError as exc:
            raise QuantFormatError(f"the model has no module {name!r} named in {MAP_FILE}: wrong architecture") from exc
        try:
            module = kinds[entry["kind"]].from_spec(entry["spec"])
        except (TypeError, ValueError, KeyError) as exc:
            raise QuantFormatError(
                f"{folder / MAP_FILE}: module {name!r} has a bad spec {entry['spec']!r} ({exc}); re-run the export"
            ) from exc
        model.set_submodule(name, module)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QuantFormatError(f"cannot read {weights}: {exc}; the file is damaged, re-export the model") from exc
    expected = model.state_dict()
    for name, tensor in tensors.items():
        if name not in expected:
            raise QuantFormatError(f"{weights} holds tensor {name!r} that the model does not have: wrong architecture")
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape) or tensor.dtype != want.dtype:
            raise QuantFormatError(
                f"tensor {name!r} in {weights} has shape {tuple(tensor.shape)} {tensor.dtype}, but the model expects "
                f"{tuple(want.shape)} {want.dtype}: the file does not belong to this model or {MAP_FILE}"
            )
    tied = document.get("tied", {})
    missing = [n for n in expected if n not in tensors and n not in tied]
    if missing:
        raise QuantFormatError(f"{weights} lacks tensor(s) {', '.join(missing[:5])}: the file is incomplete")
    for alias, kept in tied.items():
        tensors[alias] = tensors[kept]
    model.load_state_dict(tensors, strict=True)
    relink_tied(model)
    model.eval()
    qmap = {"config": document["config"], "modules": document["modules"]}
    if document.get("details"):
        qmap["details"] = document["details"]
    setattr(model, MAP_ATTRIBUTE, qmap)
    keep_rows_invariant(model)
    return model


class QuantizedFolderFormat(ModelFormat):
    """Folders written by ``crossedge quant run`` (``quantization.json`` beside the weights) as model sources.

    Registered as a model format, so every ``--model`` loads such a folder through
    :func:`load_quantized`, with its int8/int4 modules and kernels.
    """

    name = "crossedge-quant"
    description = "quantized model folder written by 'crossedge quant run' (safetensors + quantization.json)"
    marker = MAP_FILE

    def load(self, folder: Path, *, name: str, source: Any, task: str = "causal-lm", **kwargs: Any) -> Any:
        """The quantized model with its saved integer weights and the folder's tokenizer."""
        from crossedge.core.sources import LoadedModel

        if task != "causal-lm":
            raise ModelSourceError(f"{folder} is a quantized causal LM; it cannot be loaded as a {task!r} model")
        dtype = kwargs.pop("dtype", None)
        kwargs.pop("trust_remote_code", None)
        if dtype not in (None, torch.float32):
            raise ModelSourceError(f"{folder} is quantized; it loads as saved, not as dtype {dtype}")
        if kwargs:
            raise ModelSourceError(f"a quantized folder takes no loading options; got {', '.join(sorted(kwargs))}")
        model = load_quantized(folder)
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except OSError as exc:
            raise QuantFormatError(f"{folder} has no usable tokenizer ({exc}): re-run 'crossedge quant run'") from exc
        return LoadedModel(name=name, model=model, tokenizer=tokenizer, path=folder, source=source)
