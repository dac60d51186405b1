"""The masked diffusion LM: a Llama-architecture transformer run with bidirectional attention.

A model folder is a plain transformers Llama folder (``config.json``, ``model.safetensors``,
``tokenizer.json``) plus ``dllm.json``, which says how crossedge uses it: the objective it was
trained with (``diffusion``: bidirectional, predicts masked positions; ``autoregressive``: the
same architecture trained causally, the fair baseline; ``lexical``: the autoregressive model
fine-tuned to also guess the ``span`` tokens after the next one from mask tokens, in the same
forward), the mask token, and the answer canvas
(``gen_length`` positions decoded in blocks of ``block_length``).

LLaDA-style checkpoints (``config.json`` with ``model_type: llada``; tensors named
``model.transformer.blocks.N.q_proj`` ...) are converted on load to the same Llama modules;
every tensor of the model must come from the checkpoint and every checkpoint tensor must be
used, or loading fails naming them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossedge.core.errors import CrossedgeError, ModelSourceError

DLLM_FILE = "dllm.json"
FORMAT_VERSION = 1
OBJECTIVES = ("diffusion", "autoregressive", "lexical")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[EOS]", "[SEP]")


@dataclass
class DLLMInfo:
    """What ``dllm.json`` records: the objective, special ids and the answer canvas."""

    objective: str
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    sep_token_id: int | None = None
    gen_length: int = 24
    block_length: int = 8
    tasks: list[str] = field(default_factory=list)
    trained: dict[str, Any] = field(default_factory=dict)
    #: ``lexical`` models: how many tokens after the next one a forward guesses.
    span: int = 0
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise CrossedgeError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.gen_length < 1 or self.block_length < 1 or self.gen_length % self.block_length:
            raise CrossedgeError(
                f"gen_length {self.gen_length} must be a positive multiple of block_length {self.block_length}"
            )


def build_tokenizer(texts: Iterable[str]) -> Any:
    """A word-level tokenizer over the words of ``texts`` plus crossedge's special tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()} - set(SPECIAL_TOKENS))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        eos_token="[EOS]",
        sep_token="[SEP]",
    )


def new_config(vocab_size: int, *, hidden: int = 192, layers: int = 4, heads: int = 4, positions: int = 128) -> Any:
    """A small Llama config for a model trained here (tied embeddings, SwiGLU width 3x hidden)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        attn_implementation="sdpa",
    )


class DiffusionLM(torch.nn.Module):
    """A transformer, its tokenizer and :class:`DLLMInfo`; ``forward`` is bidirectional for ``diffusion``."""

    def __init__(self, model: Any, tokenizer: Any, info: DLLMInfo):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.info = info

    @property
    def bidirectional(self) -> bool:
        return self.info.objective == "diffusion"

    def forward(self, ids: torch.Tensor, keep: torch.Tensor | None = None, *, hidden: bool = False) -> Any:
        """Logits (B, L, V) for token ids (B, L); ``keep`` (B, L) marks real tokens (False: padding).

        With ``hidden=True`` returns ``(logits, last_hidden_state)``.
        """
        if self.bidirectional:
            b, n = ids.shape
            keys = torch.ones_like(ids, dtype=torch.bool) if keep is None else keep.bool()
            mask = keys[:, None, None, :].expand(b, 1, n, n)
        else:
            mask = None if keep is None else keep.long()
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden, use_cache=False)
        return (out.logits, out.hidden_states[-1]) if hidden else out.logits

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first end-of-text, special tokens dropped."""
        out = []
        for i in ids:
            if int(i) == self.info.eos_token_id:
                break
            out.append(int(i))
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def save(self, folder: Path | str) -> Path:
        """Write the model as safetensors, its tokenizer and ``dllm.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        (folder / DLLM_FILE).write_text(json.dumps(asdict(self.info), indent=2) + "\n")
        return folder


# ------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"could not read {path} ({exc}); re-save the model folder") from exc


def load_diffusion_lm(name: str, *, dtype: torch.dtype = torch.float32) -> DiffusionLM:
    """Load a diffusion LM from a crossedge folder, a LLaDA-style folder, or a hub id (fetched to the cache)."""
    from crossedge.core.sources import resolve_model

    source = resolve_model(name)
    folder = Path(source.pull())
    if (folder / DLLM_FILE).is_file():
        return _load_crossedge(name, folder, dtype)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if config.get("model_type") == "llada" or "LLaDAModelLM" in config.get("architectures", []):
        return load_llada(folder, dtype=dtype, name=name)
    raise ModelSourceError(
        f"{folder} is not a diffusion LM: it has neither {DLLM_FILE} (written by 'crossedge specdec train-dllm') "
        "nor a LLaDA config.json; train one with 'crossedge specdec train-dllm --out DIR'"
    )


def _load_crossedge(name: str, folder: Path, dtype: torch.dtype) -> DiffusionLM:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from crossedge.core.sources import _quiet_load_report, check_loading_info, check_safetensors

    raw = _read_json(folder / DLLM_FILE)
    if raw.get("format") != FORMAT_VERSION:
        raise ModelSourceError(
            f"{folder / DLLM_FILE} has format {raw.get('format')!r}; this crossedge reads {FORMAT_VERSION}: retrain "
            "or upgrade crossedge-specdec"
        )
    known = set(DLLMInfo.__dataclass_fields__)
    info = DLLMInfo(**{k: v for k, v in raw.items() if k in known})
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelSourceError(f"{folder} has no .safetensors weights; re-save the model folder")
    for path in weights:
        check_safetensors(path)
    import logging

    tp_log = logging.getLogger("transformers.distributed.tensor_parallel")
    tp_level = tp_log.level
    # transformers checks a tensor-parallel plan on every load and warns that a single-process
    # model's norms "were not sharded"; nothing is sharded here, so the line only confuses.
    tp_log.setLevel(logging.ERROR)
    try:
        with _quiet_load_report():
            model, loading = LlamaForCausalLM.from_pretrained(
                folder, dtype=dtype, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True
            )
        check_loading_info(name, folder, loading)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"could not load diffusion LM {name!r} from {folder}: {first}") from exc
    finally:
        tp_log.setLevel(tp_level)
    model.eval()
    return DiffusionLM(model, tokenizer, info)


#: LLaDA block tensor names -> Llama module names (``ff_proj`` is the gated branch, ``ff_out`` the down projection).
LLADA_BLOCK_NAMES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
}


def llada_config(config: dict[str, Any]) -> Any:
    """The Llama config equivalent to a LLaDA ``config.json``."""
    from transformers import LlamaConfig

    if config.get("block_type", "llama") != "llama" or config.get("layer_norm_type", "rms") != "rms":
        raise ModelSourceError(
            f"LLaDA config with block_type {config.get('block_type')!r} / layer_norm_type "
            f"{config.get('layer_norm_type')!r}: crossedge converts only llama blocks with RMS norms"
        )
    try:
        heads = int(config["n_heads"])
        return LlamaConfig(
            vocab_size=int(config.get("embedding_size") or config["vocab_size"]),
            hidden_size=int(config["d_model"]),
            intermediate_size=int(config["mlp_hidden_size"]),
            num_hidden_layers=int(config["n_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("n_kv_heads") or heads),
            max_position_embeddings=int(config.get("max_sequence_length", 4096)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(config.get("weight_tying", False)),
            attention_bias=bool(config.get("include_qkv_bias", False) or config.get("include_bias", False)),
            mlp_bias=bool(config.get("include_bias", False)),
            attn_implementation="sdpa",
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(f"LLaDA config.json lacks or misstates {exc}; it cannot be converted") from exc


def llada_state_dict(tensors: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Rename LLaDA tensors to Llama names; a fused ``att_proj`` is split into q, k, v."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    head_dim = config.hidden_size // config.num_attention_heads
    sizes = [config.num_attention_heads * head_dim, *[config.num_key_value_heads * head_dim] * 2]
    for key, value in tensors.items():
        bare = key.removeprefix("model.")
        parts = bare.split(".")
        if bare.endswith("rotary_emb.inv_freq"):
            continue
        if bare == "transformer.wte.weight":
            out["model.embed_tokens.weight"] = value
        elif bare == "transformer.ln_f.weight":
            out["model.norm.weight"] = value
        elif bare == "transformer.ff_out.weight":
            out["lm_head.weight"] = value
        elif len(parts) == 5 and parts[:2] == ["transformer", "blocks"] and parts[3] == "att_proj":
            for proj, piece in zip(("q_proj", "k_proj", "v_proj"), torch.split(value, sizes, dim=0), strict=True):
                out[f"model.layers.{parts[2]}.self_attn.{proj}.{parts[4]}"] = piece
        elif len(parts) == 5 and parts[:2] == ["transformer", "blocks"] and parts[3] in LLADA_BLOCK_NAMES:
            out[f"model.layers.{parts[2]}.{LLADA_BLOCK_NAMES[parts[3]]}.{parts[4]}"] = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ModelSourceError(f"LLaDA checkpoint has {len(unknown)} tensor(s) crossedge cannot place ({shown})")
    return out


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from crossedge.core.sources import check_safetensors

    index = folder / "model.safetensors.index.json"
    files = sorted(set(_read_json(index)["weight_map"].values())) if index.is_file() else None
    paths = [folder / f for f in files] if files else sorted(folder.glob("*.safetensors"))
    if not paths:
        raise ModelSourceError(f"{folder} has no .safetensors weights (crossedge never loads pickled weights)")
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        if not path.is_file():
            raise ModelSourceError(f"{index} names {path.name}, which is missing; re-download the model")
        check_safetensors(path)
        tensors.update(load_file(path))
    return tensors


def load_llada(folder: Path | str, *, dtype: torch.dtype = torch.float32, name: str | None = None) -> DiffusionLM:
    """Load a LLaDA-style checkpoint folder as a :class:`DiffusionLM` (bidirectional, its own mask token)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(folder)
    raw = _read_json(folder / "config.json")
    config = llada_config(raw)
    state = llada_state_dict(_read_tensors(folder), config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    wrong = sorted(k for k in expected & set(state) if tuple(state[k].shape) != tuple(model.state_dict()[k].shape))
    if missing or extra or wrong:
        raise ModelSourceError(
            f"the LLaDA checkpoint in {folder} does not match its config: missing {missing[:5]}, unused {extra[:5]}, "
            f"wrong shape {wrong[:5]}; crossedge never runs on weights that were not loaded"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    # The rotary frequencies are computed, not stored: build them for real outside the meta device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelSourceError(f"the LLaDA checkpoint in {folder} left {left[:5]} unset; it cannot be run")
    model.eval()
    import logging

    config_log = logging.getLogger("transformers.configuration_utils")
    level = config_log.level
    config_log.setLevel(logging.ERROR)  # the tokenizer reads config.json and warns that llada is not Llama
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    finally:
        config_log.setLevel(level)
    mask_id = raw.get("mask_token_id", tokenizer.mask_token_id)
    if mask_id is None:
        raise ModelSourceError(f"{folder}: config.json gives no mask_token_id and the tokenizer has no mask token")
    eos = raw.get("eos_token_id", tokenizer.eos_token_id)
    pad = raw.get("pad_token_id", eos)
    info = DLLMInfo(
        "diffusion", int(mask_id), int(eos), int(pad if pad is not None else eos), trained={"source": name or "llada"}
    )
    return DiffusionLM(model, tokenizer, info)
