"""Saving and loading a Zipper: only what was trained, and the identity of its text tower."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import FORMAT, WEIGHTS, ZipperError
from .fused import ZipperConfig, ZipperModel, tower_identity
from .speech_tower import SpeechTower, SpeechTowerConfig


def check_save_folder(folder: str | Path) -> Path:
    """The weights path of ``folder``, refused in one line when saving there would overwrite what is not a Zipper's."""
    from .. import tagged

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ZipperError(f"{folder} is a file; give a folder to save the Zipper into")
    path = folder / WEIGHTS
    tagged.check_writable(path, FORMAT, ZipperError)
    return path


def save(model: ZipperModel, folder: str | Path) -> Path:
    """Write ``folder/model.safetensors``: speech tower and blocks, format tag, configs and the text tower's identity.

    A ``model.safetensors`` already in the folder is overwritten only when it is a Zipper's.
    """
    from .. import tagged

    folder = Path(folder)
    path = check_save_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trained = {k: v for k, v in model.state_dict().items() if not k.startswith("text.")}
    tagged.write(
        path, trained, FORMAT, error=ZipperError, config=asdict(model.config), speech=asdict(model.speech.config),
        text_tower=model.text_identity,
    )  # fmt: skip
    return folder


def load(folder: str | Path, text_tower: Any = None) -> ZipperModel:
    """The Zipper saved by :func:`save`, in eval mode, zipped into its text tower again.

    ``text_tower`` (a :class:`crossedge.core.sources.LoadedModel`, or anything with ``model``
    and ``tokenizer``) replaces loading the recorded tower by name; either way the tower must
    match the one the Zipper was trained with.
    """
    from .. import tagged

    path = Path(folder) / WEIGHTS
    tensors, meta = tagged.read(path, FORMAT, "Zipper model", ZipperError)
    try:
        config = tagged.dataclass_config(ZipperConfig, json.loads(meta["config"]))
        speech_config = tagged.dataclass_config(SpeechTowerConfig, json.loads(meta["speech"]))
        identity = json.loads(meta["text_tower"])
        name = identity["name"]
    except (KeyError, ValueError, TypeError) as exc:
        raise ZipperError(f"Zipper model {path} is damaged ({type(exc).__name__}); save it again") from exc
    if text_tower is None:
        from crossedge.core.sources import load_model

        text_tower = load_model(name)
    found = tower_identity(text_tower.model, name)
    different = [k for k in ("model_type", "layers", "width", "vocab", "fingerprint") if found[k] != identity.get(k)]
    if different:
        shown = ", ".join(f"{k} {identity.get(k)!r} saved, {found[k]!r} given" for k in different)
        raise ZipperError(f"{path} was zipped into another text tower than {name!r} ({shown}); give the original tower")
    model = ZipperModel(text_tower.model, text_tower.tokenizer, SpeechTower(speech_config), config, name)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.startswith("text.")]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except RuntimeError as exc:
        raise ZipperError(f"Zipper model {path} is damaged ({exc}); save it again") from exc
    return model.eval()
