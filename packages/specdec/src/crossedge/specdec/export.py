"""Serving configs that carry a crossedge drafter choice to vLLM and SGLang (``crossedge specdec export``).

Only the option names below are emitted; ``tests/test_export.py`` checks each against the option names of
the pinned version, transcribed from its source. Nothing here imports vllm or sglang.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from crossedge.core.specs import Chain, parse_chain

from .errors import SpecdecError

#: The versions whose option names we emit (vllm/config/speculative.py, python/sglang/srt/server_args.py).
VLLM_VERSION = "0.33.0"
SGLANG_VERSION = "0.5.23"
FORMATS = ("vllm", "sglang")
GENERATED_BY = "crossedge specdec export"

#: Draft length when the spec's policy is not constant and no bench results say otherwise: the constant policy's k.
DEFAULT_NUM_TOKENS = 5
#: vLLM's ngram proposer tries match windows from prompt_lookup_max down to prompt_lookup_min; our copy
#: drafter takes the longest match of any length, so the top of the window is a choice, not a translation.
DEFAULT_PROMPT_LOOKUP_MAX = 5

#: Keys of vLLM's SpeculativeConfig that we write.
VLLM_KEYS = ("method", "model", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max")
#: SGLang ServerArgs fields that we write (flags are ``--`` plus the name with dashes).
SGLANG_KEYS = (
    "model_path",
    "speculative_algorithm",
    "speculative_draft_model_path",
    "speculative_num_steps",
    "speculative_eagle_topk",
    "speculative_num_draft_tokens",
    "speculative_ngram_min_bfs_breadth",
    "speculative_ngram_max_bfs_breadth",
)


def _canonical(name: str) -> str:
    """A drafter's registered name for a name or alias (the drafter registry is the one table of aliases)."""
    from crossedge.core import get_registry

    return get_registry("drafter").entry(name).name


#: Drafters with no honest mapping, and why (one line each).
_UNMAPPED = {
    **{
        kind: f"crossedge's {kind} heads are not in {{engine}}'s checkpoint format and no converter exists; "
        "train heads for {engine} or export draft-model/copy instead"
        for kind in ("medusa", "hidden-transfer", "clover", "ppd")
    },
    "cross-vocab": "{engine} is not given crossedge's text bridge between tokenizers; use draft-model:model=NAME "
    "with a draft model that shares the target's tokenizer",
    "early-exit": "{engine} has no self-speculative early-exit drafting for ordinary checkpoints",
    "lora-drop": "{engine} cannot run crossedge's layer-dropped LoRA drafter",
}


def _names(chain: Chain) -> list[str]:
    return [_canonical(s.name) for s in chain.specs]


def _drafters(chain: Chain) -> list[tuple[str, dict[str, str]]]:
    """The chain's drafters with their options, policy left out: what a bench method must share to count."""
    return [(_canonical(s.name), {k: str(v) for k, v in s.options.items()}) for s in chain.specs]


def num_tokens_from_bench(path: str | Path, drafter: str) -> int:
    """Draft length from a ``specdec bench --json`` file: ceil of the fastest method with the same drafters."""
    try:
        summary = json.loads(Path(path).read_text())["summary"]
        overall = summary["overall"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecdecError(f"--from-bench {path}: not a 'specdec bench --json' results file ({exc})") from None
    wanted = _drafters(parse_chain(drafter, kind="drafter"))
    measured = []
    for method, cell in overall.items():
        try:
            found = _drafters(parse_chain(method, kind="drafter"))
        except Exception:  # baselines and hf-* methods are not drafter specs
            continue
        if found == wanted and cell.get("mean_accepted") and cell.get("speedup") is not None:
            measured.append((cell["speedup"], cell["mean_accepted"], method))
    if not measured:
        raise SpecdecError(f"--from-bench {path}: no measured method with the drafters of {drafter!r} (policy aside)")
    _, accepted, _ = max(measured)
    # mean accepted counts tokens per target forward (the bonus token too): a draft this long covers it.
    return max(1, math.ceil(accepted))


def num_tokens_for(chain: Chain, from_bench: str | Path | None = None, drafter: str = "") -> tuple[int, str]:
    """The number of speculative tokens and where it came from."""
    if chain.policy is not None and chain.policy.name == "constant":
        return int(chain.policy.options.get("k", DEFAULT_NUM_TOKENS)), "the spec's constant policy"
    if from_bench is not None:
        return num_tokens_from_bench(from_bench, drafter), f"mean accepted length in {from_bench}"
    return DEFAULT_NUM_TOKENS, "the default (policy not constant, no --from-bench)"


def _refuse(name: str, engine: str) -> SpecdecError:
    if name in _UNMAPPED:
        return SpecdecError(f"drafter {name!r} has no {engine} mapping: " + _UNMAPPED[name].format(engine=engine))
    return SpecdecError(
        f"drafter {name!r} has no {engine} mapping (exportable: copy, history, copy,history, draft-model)"
    )


def _vllm(chain: Chain, k: int) -> tuple[dict[str, Any], list[str]]:
    names = _names(chain)
    first = chain.specs[0]
    if names == ["copy"]:
        low = int(first.options.get("min_match", 2))
        k = min(k, int(first.options.get("max_copy", 16)))
        config = {
            "method": "ngram",
            "num_speculative_tokens": k,
            "prompt_lookup_min": low,
            "prompt_lookup_max": max(low, DEFAULT_PROMPT_LOOKUP_MAX),
        }
        notes = ["vLLM's ngram matches windows of prompt_lookup_min..max tokens in the prompt and output only"]
        return config, notes
    if names in (["history"], ["copy", "history"]):
        notes = [
            "vLLM's suffix decoding (needs arctic-inference) keeps one suffix tree over past responses of all "
            "requests plus one per prompt: it is not isolated per user, and our max_tokens/min_match do not map",
        ]
        return {"method": "suffix", "num_speculative_tokens": k}, notes
    if names == ["draft-model"]:
        if "model" not in first.options:
            raise SpecdecError("draft-model needs model=NAME to export: the engine loads the draft model by name")
        return {"method": "draft_model", "model": str(first.options["model"]), "num_speculative_tokens": k}, []
    raise _refuse(next((n for n in names if n not in ("copy", "history", "draft-model")), ",".join(names)), "vLLM")


def _sglang(chain: Chain, k: int) -> tuple[dict[str, Any], list[str]]:
    names = _names(chain)
    first = chain.specs[0]
    if names in (["copy"], ["history"], ["copy", "history"]):
        k = min(k, int(first.options.get("max_copy", 16)))
        # breadth 1 keeps SGLang's draft a chain, as ours is; the draft tokens count the verified root too.
        args = {
            "speculative_algorithm": "NGRAM",
            "speculative_num_draft_tokens": k + 1,
            "speculative_ngram_min_bfs_breadth": 1,
            "speculative_ngram_max_bfs_breadth": 1,
        }
        notes = [
            "SGLang's NGRAM drafts from one trie over prompts and past outputs of all requests: close to "
            "copy,history, not isolated per user; our min_match/max_copy/max_tokens do not map"
        ]
        return args, notes
    if names == ["draft-model"]:
        if "model" not in first.options:
            raise SpecdecError("draft-model needs model=NAME to export: the engine loads the draft model by name")
        args = {
            "speculative_algorithm": "STANDALONE",
            "speculative_draft_model_path": str(first.options["model"]),
            "speculative_num_steps": k,
            "speculative_eagle_topk": 1,
            "speculative_num_draft_tokens": k + 1,
        }
        return args, []
    raise _refuse(next((n for n in names if n not in ("copy", "history", "draft-model")), ",".join(names)), "SGLang")


def export_config(
    drafter: str, fmt: str, *, model: str | None = None, from_bench: str | Path | None = None
) -> dict[str, Any]:
    """The serving config for ``drafter`` in ``fmt`` ('vllm' or 'sglang'), with the command that uses it."""
    if fmt not in FORMATS:
        raise SpecdecError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    chain = parse_chain(drafter, kind="drafter")
    k, k_source = num_tokens_for(chain, from_bench, drafter)
    target = model or "MODEL"
    if fmt == "vllm":
        config, notes = _vllm(chain, k)
        body = {"speculative_config": config}
        command = f"vllm serve {shlex.quote(target)} --speculative-config {shlex.quote(json.dumps(config))}"
        version = VLLM_VERSION
    else:
        args, notes = _sglang(chain, k)
        args = {"model_path": target, **args}
        body = {"server_args": args}
        flags = " ".join(f"--{key.replace('_', '-')} {shlex.quote(str(value))}" for key, value in args.items())
        command = f"python -m sglang.launch_server {flags}"
        version = SGLANG_VERSION
    return {
        "generated_by": GENERATED_BY,
        "engine": fmt,
        "engine_version": version,
        "drafter": drafter,
        "num_speculative_tokens_from": k_source,
        **body,
        "command": command,
        "notes": notes,
    }


def write_export(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON atomically; refuse to replace a file this command did not write."""
    path = Path(path)
    if path.exists():
        try:
            ours = json.loads(path.read_text()).get("generated_by") == GENERATED_BY
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise SpecdecError(f"{path} exists and was not written by '{GENERATED_BY}': choose another --out")
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
