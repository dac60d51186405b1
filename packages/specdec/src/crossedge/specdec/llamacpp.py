"""llama.cpp as methods of the specdec bench, through llama-cpp-python (an optional extra).

``specdec bench --compare-llamacpp GGUF`` adds llama.cpp's plain greedy decoding and its
prompt-lookup mode to the same run, fed the same prompt token ids as crossedge's methods
(a GGUF converted by transformers keeps the GGUF's vocabulary, so the ids mean the same
tokens). Their identity is judged against llama.cpp's own greedy output, not against
crossedge's (different kernels round differently); their speed is compared with
crossedge's vanilla like every other method's. Each generation starts from an empty
llama.cpp cache, as crossedge's do. When llama-cpp-python is not installed the methods
are skipped with a note saying how to install it; a GGUF path that is not a file is an
error before any model loads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import SpecdecError

#: The llama.cpp method whose tokens the other llama.cpp methods must reproduce.
LLAMACPP_BASELINE = "llamacpp-greedy"
PREFIX = "llamacpp-"
INSTALL = "pip install 'crossedge-specdec[llamacpp]' (llama-cpp-python builds llama.cpp from its source, 10-40 minutes)"


def check_gguf(path: str | Path) -> Path:
    """The GGUF file to compare with, refused in one line when it is not a readable GGUF file."""
    gguf = Path(path).expanduser()
    if not gguf.is_file():
        raise SpecdecError(f"--compare-llamacpp {path}: no such file; give the path of a .gguf model file")
    with gguf.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise SpecdecError(f"--compare-llamacpp {path}: not a GGUF file (it does not start with 'GGUF')")
    return gguf


def llamacpp_methods(
    gguf: str | Path,
    *,
    threads: int,
    eos: Iterable[int],
    notes: list[str],
    context: int = 4096,
    prompt_lookup_tokens: int = 10,
) -> dict[str, Any]:
    """``llamacpp-greedy`` and ``llamacpp-prompt-lookup`` bench methods, or none (with a note) without the extra."""
    path = check_gguf(gguf)
    try:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    except ImportError:
        notes.append(f"llama.cpp methods skipped: llama-cpp-python is not installed ({INSTALL})")
        return {}

    def load(**extra: Any) -> Any:
        return llama_cpp.Llama(
            model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False, **extra
        )

    return {
        LLAMACPP_BASELINE: llamacpp_method(load(), eos),
        PREFIX + "prompt-lookup": llamacpp_method(
            load(draft_model=LlamaPromptLookupDecoding(num_pred_tokens=prompt_lookup_tokens)), eos
        ),
    }


def llamacpp_method(llm: Any, eos: Iterable[int]) -> Any:
    """A bench method decoding greedily with a ``llama_cpp.Llama`` from the given prompt ids."""
    from .bench import Outcome

    stop = frozenset(int(t) for t in eos) | {int(llm.token_eos())}

    def run(input_ids: Any, max_new_tokens: int) -> Outcome:
        prompt = [int(t) for t in input_ids[0].tolist()]
        start, cpu = time.perf_counter(), time.process_time()
        llm.reset()  # no prefix reuse across generations: crossedge's methods start empty too
        tokens: list[int] = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if token in stop or len(tokens) >= max_new_tokens:
                break
        return Outcome(tokens, time.perf_counter() - start, None, time.process_time() - cpu)

    return run


def baseline_of(method: str, default: str) -> str:
    """The method whose tokens ``method`` must reproduce: llama.cpp's greedy for llama.cpp methods."""
    return LLAMACPP_BASELINE if method.startswith(PREFIX) else default
