"""The llama.cpp comparison: its skip path, refused files, and its plumbing with a stand-in llama_cpp module."""

import sys
import types

import pytest
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.core.testing import save_tiny_causal_lm
from crossedge.specdec.bench import build_methods, encode_chat, run_benchmark
from crossedge.specdec.suite import SuitePrompt
from crossedge.specdec.testing import tiny_target


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_without_llama_cpp_python_the_methods_are_skipped_with_a_note(monkeypatch, gguf):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # importing it now raises ImportError
    model, _ = tiny_target("llama")
    notes = []
    methods = build_methods(model, ["copy"], compare_llamacpp=str(gguf), notes=notes)
    assert list(methods) == ["vanilla", "copy"]
    assert len(notes) == 1 and "llama-cpp-python is not installed" in notes[0] and "[llamacpp]" in notes[0]


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"PK\x03\x04", "not a GGUF file")])
def test_a_missing_or_foreign_file_is_refused_before_the_model_loads(specdec_plugin, tmp_path, content, message):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    folder = save_tiny_causal_lm(tmp_path / "tiny", "llama", seed=1)
    result = CliRunner().invoke(
        build_cli(),
        ["specdec", "bench", "--model", str(folder), "--drafter", "copy", "--suite", "default"]
        + ["--compare-llamacpp", str(path)],
    )
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def _stand_in_llama_cpp(continuation):
    """A llama_cpp module whose Llama replays ``continuation``; with a draft model it goes wrong at token 2."""
    module = types.ModuleType("llama_cpp")
    speculative = types.ModuleType("llama_cpp.llama_speculative")
    calls = []

    class LlamaPromptLookupDecoding:
        def __init__(self, num_pred_tokens):
            self.num_pred_tokens = num_pred_tokens

    class Llama:
        def __init__(self, model_path, n_ctx, n_threads, n_threads_batch, verbose, draft_model=None):
            self.draft_model = draft_model
            self.threads = n_threads

        def token_eos(self):
            return 258

        def reset(self):
            calls.append("reset")

        def generate(self, tokens, **sampling):
            calls.append((tuple(tokens), sampling["temp"], sampling["top_k"]))
            for i, token in enumerate(continuation):
                yield token + 1 if self.draft_model is not None and i == 2 else token

    module.Llama = Llama
    speculative.LlamaPromptLookupDecoding = LlamaPromptLookupDecoding
    module.llama_speculative = speculative
    return module, speculative, calls


def test_llamacpp_methods_are_judged_against_llamacpps_own_greedy(monkeypatch, gguf):
    model, tokenizer = tiny_target("llama")
    module, speculative, calls = _stand_in_llama_cpp([65, 66, 67, 68, 69, 70])
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_speculative", speculative)
    methods = build_methods(model, [], compare_llamacpp=str(gguf), threads=2, notes=[])
    assert list(methods) == ["vanilla", "llamacpp-greedy", "llamacpp-prompt-lookup"]
    prompt = SuitePrompt(task="chat", prompt_id="a", turns=["Say hi."])
    runs = run_benchmark(model, tokenizer, [prompt], methods, max_new_tokens=4, progress=False)
    by_method = {r["method"]: r for r in runs}
    assert by_method["llamacpp-greedy"]["identical_to_baseline"]  # its own baseline
    assert not by_method["llamacpp-prompt-lookup"]["identical_to_baseline"]
    assert by_method["llamacpp-prompt-lookup"]["first_difference"] == {"turn": 0, "token": 2}
    assert by_method["llamacpp-greedy"]["new_tokens"] == 4  # cut at max_new_tokens
    fed = [c for c in calls if c != "reset"]
    assert all(c[1] == 0.0 and c[2] == 1 for c in fed)  # greedy
    # The same prompt ids as crossedge's methods, and a fresh llama.cpp cache before each generation.
    ids = tuple(encode_chat(tokenizer, [{"role": "user", "content": "Say hi."}])[0].tolist())
    assert [c[0] for c in fed[-2:]] == [ids, ids]
    assert calls.count("reset") == len(fed)


def test_other_tools_differences_are_not_reported_as_crossedge_defects():
    from crossedge.specdec.bench import split_differing

    ours, theirs = split_differing(["copy@math/a", "llamacpp-prompt-lookup@math/a", "hf-prompt-lookup@qa/b"])
    assert ours == ["copy@math/a"]
    assert theirs == ["llamacpp-prompt-lookup@math/a", "hf-prompt-lookup@qa/b"]
