"""The saved form of a 4-bit CNN: packed 4-bit codes and float32 scales in safetensors, a versioned JSON beside them.

``model.safetensors`` holds, for each quantized layer, ``<layer>.codes`` (two codes per
uint8, low nibble first, each the two's-complement nibble of a code in -qmax..qmax),
``<layer>.weight_scale`` (float32 per output channel) and a linear's float32 ``bias``; the
batch norms' float32 affine parameters and running statistics. ``cnn4.json`` records the
format and its version, the training config, the network shape, the layer list (each
quantized layer's code shape) and the weight file's size and SHA-256. Loading rebuilds the
integer model (``inference.py``); its outputs equal the trained model's bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core.cache import sha256_file
from crossedge.core.errors import CrossedgeError

from ..serialization import read_format_document, refuse_foreign_files, written_by
from .config import FourBitTrainingConfig, TrainingConfigError
from .inference import KERNELS, IntegerConv2d, IntegerLinear, int_mm_available
from .layers import FourBitConv2d, FourBitLinear, quantize_weight
from .model import CNNShape, SmallCNN

FORMAT = "crossedge.quant.cnn4"
#: Version of the saved form (``cnn4.json`` and the tensors it names).
FORMAT_VERSION = 1
MAP_FILE = "cnn4.json"
WEIGHTS_FILE = "model.safetensors"
#: The files a save writes; ``--force`` replaces only these, and only in a folder a save wrote.
WRITTEN_FILES = (MAP_FILE, WEIGHTS_FILE)
REDO = "re-run 'crossedge quant train-cnn'"


class FourBitFormatError(CrossedgeError):
    """A saved 4-bit CNN folder is missing, damaged, from another version, or not a crossedge folder."""


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit codes (any shape, values -8..7) as uint8, two per byte, low nibble first."""
    flat = codes.reshape(-1).to(torch.int16) & 0xF
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` signed codes in ``packed`` as int8 (inverse of :func:`pack_codes`)."""
    wide = packed.to(torch.int16)
    nibbles = torch.stack([wide & 0xF, wide >> 4], dim=1).reshape(-1)[:count]
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)


def check_out_folder(out: Path, *, force: bool = False) -> Path:
    """The folder a 4-bit CNN may be saved to: new or empty, or with ``force`` one an earlier save wrote.

    With ``force``, a non-empty folder is accepted when it holds none of the names a save
    writes or when an earlier save wrote it; only those files are replaced, others are kept.
    """
    out = Path(out).expanduser()
    refuse_foreign_files(out, out, written=WRITTEN_FILES, ours=written_by(out, MAP_FILE, FORMAT),
                         writer="a 4-bit CNN save", force=force, error=FourBitFormatError)  # fmt: skip
    return out


def save_four_bit(model: SmallCNN, config: FourBitTrainingConfig, folder: Path | str, *, force: bool = False) -> Path:
    """Write a trained 4-bit model's codes, scales and batch norms; returns the folder."""
    from safetensors.torch import save_file

    if model.form != "fourbit":
        raise FourBitFormatError(f"only a 4-bit model can be saved in the 4-bit form, not a {model.form!r} one")
    folder = check_out_folder(Path(folder), force=force)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layers: list[dict[str, Any]] = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (FourBitConv2d, FourBitLinear)):
                codes, scale = quantize_weight(module.weight, module.qmax)
                tensors[f"{name}.codes"] = pack_codes(codes.to(torch.int8))
                tensors[f"{name}.weight_scale"] = scale.contiguous()
                if module.bias is not None:
                    tensors[f"{name}.bias"] = module.bias.detach().clone()
                kind = "conv2d" if isinstance(module, FourBitConv2d) else "linear"
                layers.append({"name": name, "kind": kind, "codes_shape": list(codes.shape), "qmax": module.qmax})
            elif isinstance(module, nn.BatchNorm2d):
                for key in ("weight", "bias", "running_mean", "running_var"):
                    tensors[f"{name}.{key}"] = getattr(module, key).detach().clone()
                layers.append({"name": name, "kind": "batchnorm2d", "channels": module.num_features, "eps": module.eps})
    weights = folder / WEIGHTS_FILE
    save_file(tensors, str(weights), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "shape": model.shape.to_dict(),
        "layers": layers,
        "weights": {"file": WEIGHTS_FILE, "bytes": weights.stat().st_size, "sha256": sha256_file(weights)},
    }
    (folder / MAP_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return folder


def _fail(path: Path, what: str) -> FourBitFormatError:
    return FourBitFormatError(f"{path}: {what}; the folder is damaged or was edited by hand, {REDO}")


def read_map(folder: Path | str) -> dict[str, Any]:
    """The checked ``cnn4.json``: this format and version, a valid config and shape, a layer list."""
    folder = Path(folder)
    path, document = read_format_document(
        folder, MAP_FILE, format_id=FORMAT, version=FORMAT_VERSION,
        written_by_what="a 4-bit CNN folder written by crossedge", redo=REDO, error=FourBitFormatError,
    )  # fmt: skip
    for key in ("config", "shape", "weights"):
        if not isinstance(document.get(key), dict):
            raise _fail(path, f"{key!r} is missing or not an object")
    if not isinstance(document.get("layers"), list):
        raise _fail(path, "'layers' is missing or not a list")
    try:
        document["config"] = FourBitTrainingConfig.from_dict(document["config"])
    except TrainingConfigError as exc:
        raise FourBitFormatError(f"{path}: {exc}") from exc
    try:
        document["shape"] = CNNShape(**document["shape"])
    except TypeError as exc:
        raise _fail(path, f"bad 'shape' ({exc})") from exc
    return document


def _weights_file(folder: Path, info: dict[str, Any]) -> Path:
    name = info.get("file", WEIGHTS_FILE)
    if not isinstance(name, str) or Path(name).name != name:
        raise _fail(folder / MAP_FILE, f"weights file {name!r} must be a file name inside the folder")
    weights = folder / name
    if not weights.is_file():
        raise FourBitFormatError(f"{weights} is missing: copy the whole folder, or {REDO}")
    if weights.stat().st_size != info.get("bytes") or sha256_file(weights) != info.get("sha256"):
        raise FourBitFormatError(
            f"{weights} does not match the size and SHA-256 recorded in {MAP_FILE}: the file is damaged or was "
            f"replaced; {REDO}"
        )
    return weights


def load_four_bit(folder: Path | str, *, kernel: str = "auto") -> SmallCNN:
    """The integer model saved in ``folder``, in eval mode; outputs equal the trained model's bit for bit.

    ``kernel``: ``int_mm`` (int8 codes, ``torch._int_mm``, int32 sums), ``float`` (the codes
    convolved in float32) or ``auto`` (``int_mm`` where activations are 4-bit codes and
    torch has it, else ``float``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if kernel not in ("auto", *KERNELS):
        raise FourBitFormatError(f"kernel must be auto or one of {', '.join(KERNELS)}, got {kernel!r}")
    folder = Path(folder)
    document = read_map(folder)
    config, shape = document["config"], document["shape"]
    weights = _weights_file(folder, document["weights"])
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FourBitFormatError(f"cannot read {weights} ({exc}): the file is damaged; {REDO}") from exc
    try:
        model = SmallCNN(shape, config, "integer")
    except (ValueError, RuntimeError) as exc:
        raise _fail(folder / MAP_FILE, f"cannot build the network from its shape ({exc})") from exc
    if kernel == "auto":
        kernel = "int_mm" if config.act_bits > 0 and int_mm_available() else "float"
    if kernel == "int_mm" and config.act_bits == 0:
        raise FourBitFormatError(
            f"{folder} was trained with float activations (act_bits=0), which the integer kernel cannot take: use "
            "kernel='float'"
        )
    _check_layers(document["layers"], model, folder / MAP_FILE)
    state: dict[str, torch.Tensor] = {}
    expected = model.state_dict()
    used: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, (IntegerConv2d, IntegerLinear)):
            module.kernel = kernel
            count = module.codes.numel()
            key = f"{name}.codes"
            packed = _tensor(tensors, key, ((count + 1) // 2,), torch.uint8, weights)
            codes = unpack_codes(packed, count)
            if int(codes.abs().max()) > config.qmax:
                raise _fail(weights, f"{key} holds codes outside -{config.qmax}..{config.qmax}")
            state[f"{name}.codes"] = codes.view(module.codes.shape)
            used.add(key)
            for extra in ("weight_scale", "bias"):
                if f"{name}.{extra}" in expected:
                    want = expected[f"{name}.{extra}"]
                    state[f"{name}.{extra}"] = _tensor(
                        tensors, f"{name}.{extra}", tuple(want.shape), want.dtype, weights
                    )
                    used.add(f"{name}.{extra}")
        elif isinstance(module, nn.BatchNorm2d):
            for key in ("weight", "bias", "running_mean", "running_var"):
                want = expected[f"{name}.{key}"]
                state[f"{name}.{key}"] = _tensor(tensors, f"{name}.{key}", tuple(want.shape), want.dtype, weights)
                used.add(f"{name}.{key}")
            state[f"{name}.num_batches_tracked"] = expected[f"{name}.num_batches_tracked"]
    extra = sorted(set(tensors) - used)
    if extra:
        raise FourBitFormatError(
            f"{weights} holds tensor(s) {', '.join(extra[:5])} that the network in {MAP_FILE} does not have: the files "
            f"do not belong together; {REDO}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_layers(layers: list[Any], model: SmallCNN, path: Path) -> None:
    """The recorded layer list must be the network's: same names, kinds, code shapes and batch-norm eps."""
    want = []
    for name, module in model.named_modules():
        if isinstance(module, (IntegerConv2d, IntegerLinear)):
            kind = "conv2d" if isinstance(module, IntegerConv2d) else "linear"
            want.append((name, kind, list(module.codes.shape)))
        elif isinstance(module, nn.BatchNorm2d):
            want.append((name, "batchnorm2d", module.num_features))
    try:
        got = [
            (e["name"], e["kind"], e["codes_shape"] if e["kind"] != "batchnorm2d" else e["channels"]) for e in layers
        ]
        eps_ok = all(e["eps"] == 1e-5 for e in layers if e["kind"] == "batchnorm2d")
    except (TypeError, KeyError) as exc:
        raise _fail(path, f"a 'layers' entry lacks {exc}") from exc
    if got != want or not eps_ok:
        raise FourBitFormatError(
            f"{path}: the layer list does not match the network its 'shape' and 'config' describe (first layers "
            f"recorded {got[:2]}, expected {want[:2]}): the file was edited or mixed with another; {REDO}"
        )


def _tensor(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], dtype: torch.dtype, path: Path):
    if key not in tensors:
        raise FourBitFormatError(f"{path} lacks tensor {key!r}: the file is incomplete or from another network; {REDO}")
    tensor = tensors[key]
    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
        raise FourBitFormatError(
            f"tensor {key!r} in {path} is {tuple(tensor.shape)} {tensor.dtype}, but the network in {MAP_FILE} "
            f"expects {shape} {dtype}: the files do not belong together; {REDO}"
        )
    return tensor


def saved_bytes(folder: Path | str) -> int:
    """Bytes of the saved tensors (codes, scales, biases, batch norms) without the file's header."""
    from safetensors.torch import load_file

    return sum(t.numel() * t.element_size() for t in load_file(str(Path(folder) / WEIGHTS_FILE)).values())
