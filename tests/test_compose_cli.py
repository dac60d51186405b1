"""Integration: --model (a quantized folder), --quant, --backend and --drafter compose in one command line."""

import json

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import registered
from crossedge.core.cli import build_cli
from crossedge.core.compose import build_stack
from crossedge.core.testing import BackendPlugin, TorchEagerBackend, save_tiny_causal_lm
from crossedge.quant import quantize_
from crossedge.specdec.bench import check_target, encode_chat
from crossedge.specdec.engine import SpeculativeDecoder

PROMPT = "the cat sat on the mat, the cat sat on the"
DRAFTERS = "copy,history"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("fp32") / "tiny", seed=1, initializer_range=0.15))


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-rtn"
    result = CliRunner().invoke(build_cli(), ["quant", "run", "--model", tiny, "--method", "rtn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return str(out)


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(args))


def generated(*args):
    """The --json statistics specdec generate prints after the text."""
    result = invoke("specdec", "generate", *args, "--max-new-tokens", "16", "--json", PROMPT)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.rindex("\n{") :])


def test_quantized_folder_loads_real_weights_in_specdec(tiny, quantized):
    from crossedge.core.sources import load_model

    # what specdec generate runs for --model DIR: the same stack functions
    built = build_stack(check_target(quantized, purpose="specdec generate"))
    reference = load_model(tiny).model
    quantize_(reference, "rtn")
    ids = torch.tensor([[5, 9, 17, 33, 65, 2, 7]])
    with torch.no_grad():
        assert torch.equal(built.model(ids).logits, reference(ids).logits)
    stats = generated("--model", quantized, "--drafter", "none")
    assert stats["quantized_folder"] and stats["quant"] is None and len(stats["tokens"]) == 16
    plain = invoke("models", "generate", quantized, PROMPT, "--max-new-tokens", "16")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.strip() == built.tokenizer.decode(stats["tokens"], skip_special_tokens=True).strip()


def test_quant_backend_and_drafters_compose_in_one_line(tiny):
    line = ["--model", tiny, "--backend", "torch-onednn", "--policy", "constant:k=4"]
    quantized = generated(*line, "--quant", "rtn", "--drafter", DRAFTERS)
    assert (quantized["quant"], quantized["backend"], quantized["drafter"]) == ("rtn", "torch-onednn", DRAFTERS)
    assert len(quantized["tokens"]) == 16
    # an fp32 target: drafting is lossless, token for token
    speculative = generated(*line, "--drafter", DRAFTERS)
    assert speculative["quant"] is None and speculative["drafters"]
    assert speculative["tokens"] == generated(*line, "--drafter", "none")["tokens"]


def test_bench_reports_identity_of_a_quantized_target_honestly(tiny, tmp_path):
    prompts = tmp_path / "question.jsonl"
    turns = [PROMPT, "def f(x):\n    return x + 1\n\ndef g(x):\n    return f(", "one two three one two three one"]
    prompts.write_text(
        "".join(json.dumps({"question_id": i, "category": "t", "turns": [t]}) + "\n" for i, t in enumerate(turns))
    )
    out = tmp_path / "bench.json"
    args = ["--model", tiny, "--quant", "rtn", "--backend", "torch-onednn", "--drafter", DRAFTERS]
    policy = ["--policy", "constant:k=4"]  # draft lengths that do not depend on timing: a run can be redone
    result = invoke(
        "specdec",
        "bench",
        *args,
        *policy,
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "16",
        "--threads",
        "1",
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["summary"]["quant"], report["summary"]["backend"]) == ("rtn", "torch-onednn")
    # the same quantized target, in process: what each run's flag must say
    built = build_stack(check_target(tiny, quant="rtn", backend="torch-onednn", purpose="test"))
    vanilla = SpeculativeDecoder(built.model, None)
    speculative = SpeculativeDecoder(built.model, DRAFTERS, "constant:k=4", tokenizer=built.tokenizer)
    differ = []
    for run in (r for r in report["runs"] if r["method"] == DRAFTERS):
        ids = encode_chat(built.tokenizer, [{"role": "user", "content": turns[int(run["prompt_id"])]}])
        same = vanilla.generate(ids, 16).tokens == speculative.generate(ids, 16).tokens
        assert run["identical_to_baseline"] is same
        assert (run["first_difference"] is None) is same
        if not same:
            differ.append(f"{DRAFTERS}@t/{run['prompt_id']}")
    assert report["summary"]["differing_runs"] == differ


class NoKernelsBackend(TorchEagerBackend):
    """Decodes with a KV cache but cannot run custom (quantized) kernels."""

    name = "no-kernels"
    custom_kernels = False


COMMANDS = {
    "specdec generate": ["specdec", "generate", "hello"],
    "specdec bench": ["specdec", "bench", "--suite", "default", "--drafter", "copy"],
    "specdec demo": ["specdec", "demo"],
}
REFUSED = {
    "rtn:bitz=4": "has no option 'bitz'",
    "nosuchmethod": "nosuchmethod",
    "gptq": "needs calibration data",
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("quant", list(REFUSED))
def test_bad_quant_specs_are_refused_before_any_model_loads(command, quant):
    # the model does not exist: an error about the spec proves nothing was resolved or loaded first
    result = invoke(*COMMANDS[command], "--model", "no-such-model", "--quant", quant, "--backend", "torch-onednn")
    assert result.exit_code == 1, result.output
    assert REFUSED[quant] in result.output and "no-such-model" not in result.output


@pytest.mark.parametrize("command", [*COMMANDS, "models generate"])
def test_a_backend_without_custom_kernels_refuses_a_quantized_target(command, quantized):
    args = ["models", "generate", "MODEL", "hello"] if command == "models generate" else COMMANDS[command]
    expect = f"backend 'no-kernels' cannot be used for {command}: it does not support modules with custom"
    with registered(BackendPlugin(NoKernelsBackend), name="no-kernels-test"):
        for model, extra in (("no-such-model", ["--quant", "rtn"]), (quantized, [])):
            full = [model if a == "MODEL" else a for a in args]
            if command != "models generate":
                full += ["--model", model]
            result = invoke(*full, *extra, "--backend", "no-kernels")
            assert result.exit_code == 1, result.output
            assert expect in result.output, result.output
        # the same backend runs an fp32 target
        assert (
            invoke(
                *COMMANDS["specdec generate"][:2], "--model", "no-such-model", "--backend", "no-kernels", "hi"
            ).output.count("no-such-model")
            > 0
        )


def test_quant_on_a_quantized_folder_and_bad_drafters_are_refused_first(quantized):
    again = invoke("specdec", "generate", "--model", quantized, "--quant", "rtn", "hello")
    assert again.exit_code == 1 and "is already quantized" in again.output
    drafter = invoke(
        "specdec", "generate", "--model", "no-such-model", "--quant", "rtn", "--drafter", "copy:max_copy=x", "hi"
    )
    assert drafter.exit_code == 1 and "max_copy" in drafter.output and "no-such-model" not in drafter.output
