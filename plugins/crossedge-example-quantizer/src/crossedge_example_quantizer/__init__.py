"""Example crossedge plugin: the ``absmax8`` int8 weight quantizer and the format that loads its folders.

It uses only crossedge-core's public contracts (:mod:`crossedge.core.contracts.quantizer`
and :mod:`crossedge.core.contracts.model_format`), as a third-party plugin would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from crossedge.core.contracts.model_format import ModelFormat
from crossedge.core.contracts.quantizer import Quantizer, QuantizerConfig, QuantizeResult
from crossedge.core.errors import ModelSourceError
from crossedge.core.hookspecs import hookimpl

FORMAT = "crossedge-example-quantizer"
FORMAT_VERSION = 1
MARKER = "absmax8.json"
WEIGHTS = "model.safetensors"
KIND = "absmax8_linear"


@dataclass(kw_only=True)
class Absmax8Config(QuantizerConfig):
    """Options of ``absmax8``: one scale per output row (default) or per tensor."""

    method: ClassVar[str] = "absmax8"

    per_row: bool = True


def absmax8_linear(in_features: int, out_features: int, bias: bool) -> Any:
    """An empty int8 linear layer of the given shape (buffers filled by ``load_state_dict``)."""
    import torch

    class Absmax8Linear(torch.nn.Module):
        """int8 weight rows with float scales, dequantized at each call."""

        kind = KIND

        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(out_features, 1))
            self.register_buffer("bias", torch.zeros(out_features) if bias else None)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, (self.qweight.float() * self.scale).to(x.dtype), self.bias)

    return Absmax8Linear()


class Absmax8Quantizer(Quantizer):
    """Symmetric int8 weights with absolute-maximum scales; no calibration."""

    name = "absmax8"
    description = "example plugin: int8 weights, absmax scale per row (dequantized in the forward)"
    config_class = Absmax8Config

    def quantize(self, model, config, *, calibration=None, filter_fn=None) -> QuantizeResult:
        """Replace every float ``nn.Linear`` except the output head."""
        import torch

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        chosen = {
            name: module
            for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and module is not head and (filter_fn is None or filter_fn(module, name))
        }
        for name, linear in chosen.items():
            weight = linear.weight.detach().float()
            amax = weight.abs().amax(dim=1, keepdim=True) if config.per_row else weight.abs().amax().reshape(1, 1)
            scale = (amax.expand(weight.shape[0], 1) / 127.0).clamp(min=1e-12)
            new = absmax8_linear(linear.in_features, linear.out_features, linear.bias is not None)
            new.qweight.copy_(torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
            new.scale.copy_(scale)
            if linear.bias is not None:
                new.bias.copy_(linear.bias.detach().float())
            model.set_submodule(name, new)
        model.example_quantization = {"config": config.to_dict(), "modules": sorted(chosen)}
        return QuantizeResult(model, config, dict.fromkeys(chosen, KIND), {"layers": len(chosen)})

    def save(self, model, folder, tokenizer=None) -> Path:
        """safetensors weights, ``absmax8.json`` naming the config and layers, config and tokenizer."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, str(folder / WEIGHTS), metadata={"format": "pt"})
        document = {"format": FORMAT, "version": FORMAT_VERSION, **model.example_quantization}
        (folder / MARKER).write_text(json.dumps(document, indent=2) + "\n")
        model.config.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return folder


class Absmax8Format(ModelFormat):
    """Folders written by :class:`Absmax8Quantizer` (marked by ``absmax8.json``)."""

    name = "example-absmax8"
    description = "example plugin: absmax8 int8 folders"
    marker = MARKER

    def load(self, folder: Path, *, name: str, source: Any, task: str = "causal-lm", **kwargs: Any) -> Any:
        """The model with its saved int8 layers; every tensor must be in the file."""
        import torch
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from crossedge.core.sources import LoadedModel

        try:
            document = json.loads((folder / MARKER).read_text())
            config = QuantizerConfig.from_dict(document["config"])
            names = list(document["modules"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelSourceError(f"{folder / MARKER} is damaged ({exc}): re-run the export") from exc
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
        for module_name in names:
            linear = model.get_submodule(module_name)
            model.set_submodule(
                module_name, absmax8_linear(linear.in_features, linear.out_features, linear.bias is not None)
            )
        missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
        if missing or unexpected:
            raise ModelSourceError(
                f"{folder / WEIGHTS} does not match its model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        model.eval()
        model.example_quantization = {"config": config.to_dict(), "modules": names}
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        return LoadedModel(name=name, model=model, tokenizer=tokenizer, path=folder, source=source)


@hookimpl
def register_quantizers(register):
    register(Absmax8Quantizer)


@hookimpl
def register_model_formats(register):
    register(Absmax8Format())
