import json

import pytest
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.core.testing import save_tiny_causal_lm


@pytest.fixture
def tiny_folder(tmp_path):
    return str(save_tiny_causal_lm(tmp_path / "tiny", "llama", seed=1, initializer_range=0.15))


@pytest.fixture
def run(specdec_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(build_cli(), list(args), catch_exceptions=False)

    return invoke


def test_generate_streams_text_and_prints_stats(run, tiny_folder):
    result = run(
        "specdec",
        "generate",
        "--model",
        tiny_folder,
        "--drafter",
        "copy",
        "--max-new-tokens",
        "12",
        "--json",
        "the cat sat on the mat, the cat sat on the",
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output[result.output.index("{") :])
    assert stats["new_tokens"] == 12
    assert "mean accepted length" in result.output


def test_generate_rejects_bad_input(run, tiny_folder):
    result = run("specdec", "generate", "--model", tiny_folder, "--max-new-tokens", "0", "hi")
    assert result.exit_code == 1
    assert "max_new_tokens must be at least 1" in result.output


def test_bench_writes_runs_summary_and_plot(run, tiny_folder, tmp_path):
    prompts = tmp_path / "question.jsonl"
    prompts.write_text(
        json.dumps({"question_id": 1, "category": "coding", "turns": ["def f(x): return x\ndef f(", "again"]})
        + "\n"
        + json.dumps({"question_id": 2, "category": "qa", "turns": ["the cat sat on the"]})
        + "\n"
    )
    out = tmp_path / "bench.json"
    result = run(
        "specdec",
        "bench",
        "--model",
        tiny_folder,
        "--drafter",
        "copy",
        "--drafter",
        "copy:min_match=3",
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "10",
        "--compare-hf",
        "--threads",
        "1",
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    methods = {r["method"] for r in data["runs"]}
    assert methods == {"vanilla", "copy", "copy:min_match=3", "hf-greedy", "hf-prompt-lookup"}
    assert len(data["runs"]) == 2 * len(methods)
    for r in data["runs"]:
        assert {
            "task",
            "prompt_id",
            "method",
            "new_tokens",
            "seconds",
            "tokens_per_s",
            "mean_accepted",
            "identical_to_baseline",
        } <= set(r)
        assert r["identical_to_baseline"], r
    assert data["summary"]["per_task"]["coding"]["copy"]["speedup"] > 0
    assert data["summary"]["geomean_speedup"]["vanilla"] == pytest.approx(1.0)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "hf-assisted skipped" in result.output


def test_bench_needs_exactly_one_prompt_source(run, tiny_folder):
    result = run("specdec", "bench", "--model", tiny_folder, "--drafter", "copy")
    assert result.exit_code == 1
    assert "exactly one of --suite" in result.output


def test_drafters_command_lists_builtins(run):
    result = run("specdec", "drafters")
    assert "copy" in result.output and "draft-model" in result.output


def test_demo_shows_speedup_and_identity(run, tiny_folder, monkeypatch):
    from crossedge.specdec import suite

    short = [suite.SuitePrompt("code-editing", "tiny", ("def f(x): return x\ndef f(x): return",))]
    monkeypatch.setattr(suite, "default_suite", lambda: short)
    result = run("specdec", "demo", "--model", tiny_folder, "--max-new-tokens", "12", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "identical to vanilla: yes" in result.output
    assert "geometric-mean speedup" in result.output and "backend torch-eager" in result.output

    from crossedge.core import registered
    from crossedge.core.testing import BackendPlugin, CountingBackend

    counting = CountingBackend.fresh()
    with registered(BackendPlugin(counting), name="counting-test"):
        through = run("specdec", "demo", "--model", tiny_folder, "--max-new-tokens", "12", "--backend", "counting")
    assert through.exit_code == 0, through.output
    assert "backend counting" in through.output and counting.forwards > 0


def test_registered_benchmark(specdec_plugin):
    from crossedge.core import get_registry

    assert get_registry("benchmark").get("specdec").name == "specdec"


def _text_and_stats(result):
    """The streamed text and the --json statistics printed after it on stdout."""
    split = result.stdout.rindex("\n{")
    return result.stdout[:split], json.loads(result.stdout[split:])


def test_generate_through_a_plugin_backend_matches_eager(run, tiny_folder):
    from crossedge.core import registered
    from crossedge.core.testing import BackendPlugin, CountingBackend

    args = ["specdec", "generate", "--model", tiny_folder, "--max-new-tokens", "12", "--json", "the cat sat on the"]
    eager = run(*args)
    counting = CountingBackend.fresh()
    with registered(BackendPlugin(counting), name="counting-test"):
        through = run(*args[:-1], "--backend", "counting", args[-1])
    assert eager.exit_code == 0 and through.exit_code == 0, through.output
    (eager_text, eager_stats), (text, stats) = _text_and_stats(eager), _text_and_stats(through)
    assert text == eager_text
    assert counting.forwards > 0
    # an fp32 target asks for no custom kernels; --quant or a quantized folder would
    expected = {
        "purpose": "specdec generate",
        "custom_kernels": False,
        "dynamic_shapes": True,
        "kv_cache_decoding": True,
    }
    assert counting.requests == [expected]
    assert (eager_stats["backend"], stats["backend"]) == ("torch-eager", "counting")


def test_bench_records_the_backend_and_refuses_one_that_cannot_decode(run, tmp_path):
    from crossedge.core import registered
    from crossedge.core.testing import BackendPlugin, CountingBackend, StaticGraphBackend

    prompts = tmp_path / "question.jsonl"
    prompts.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": ["the cat sat on the"]}) + "\n")
    model = str(save_tiny_causal_lm(tmp_path / "tiny", "llama", seed=1))
    out = tmp_path / "bench.json"
    bench = ["specdec", "bench", "--drafter", "copy", "--prompts", str(prompts), "--max-new-tokens", "6",
             "--threads", "1"]  # fmt: skip
    with registered(BackendPlugin(CountingBackend.fresh(), StaticGraphBackend), name="backends-test"):
        result = run(*bench, "--model", model, "--backend", "counting", "--json", str(out))
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["summary"]["backend"] == "counting"
        # Refused before the (missing) model is loaded.
        refused = CliRunner().invoke(build_cli(), [*bench, "--model", "no-such-model", "--backend", "static-graph"])
    assert refused.exit_code == 1
    assert "'static-graph' cannot be used for specdec bench" in refused.output
    assert "KV cache" in refused.output and "--backend torch-eager" in refused.output


def test_unknown_backend_gets_close_matches(specdec_plugin):
    result = CliRunner().invoke(
        build_cli(), ["specdec", "generate", "--model", "no-such-model", "--backend", "torch-eagr", "hi"]
    )
    assert result.exit_code == 1
    assert "unknown backend 'torch-eagr': did you mean 'torch-eager'?" in result.output


def test_summary_separates_the_turns_of_multi_turn_prompts():
    from crossedge.specdec.bench import format_summary, summarize

    def run(method, turn_tokens, turn_seconds):
        tokens, seconds = sum(turn_tokens), sum(turn_seconds)
        return {
            "task": "redundant-turn",
            "prompt_id": "p",
            "method": method,
            "new_tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "cpu_seconds": seconds,
            "mean_accepted": 1.0,
            "identical_to_baseline": True,
            "turn_new_tokens": turn_tokens,
            "turn_seconds": turn_seconds,
        }

    runs = [run("vanilla", [10, 10], [1.0, 1.0]), run("copy", [10, 10], [1.0, 0.25])]
    summary = summarize(runs)
    # The whole prompt is 1.6x faster; its second turn alone 4x.
    assert summary["per_task"]["redundant-turn"]["copy"]["speedup"] == pytest.approx(1.6)
    assert summary["per_turn"]["redundant-turn"]["copy"] == pytest.approx([1.0, 4.0])
    assert "turn 2 4.00x" in format_summary(summary)


def test_generate_takes_a_policy_after_the_drafter(run, tiny_folder):
    args = ["specdec", "generate", "--model", tiny_folder, "--max-new-tokens", "10", "--json"]
    prompt = "the cat sat on the mat, the cat sat on the"
    plain = run(*args, "--drafter", "copy", "--policy", "heuristic", prompt)
    chained = run(*args, "--drafter", "copy@heuristic", prompt)
    old_form = run(*args, "--drafter", "copy:max_copy=8:min_match=2@constant:k=3", prompt)
    for result in (plain, chained, old_form):
        assert result.exit_code == 0, result.output
    assert _text_and_stats(chained)[0] == _text_and_stats(plain)[0] == _text_and_stats(old_form)[0]


@pytest.mark.parametrize(
    ("drafter", "message"),
    [
        ("copy:max_copy=abc", "option max_copy takes an integer, got 'abc'"),
        ("copy:colour=red", "its options: max_copy, min_match, occurrence, realign"),
        ("cpy", "unknown drafter 'cpy': did you mean 'copy'"),
        ("copy@fastest", "unknown draft-length policy 'fastest'"),
        ("copy,,history", "character 6"),
    ],
)
def test_bad_drafter_specs_are_refused_before_the_model_loads(specdec_plugin, drafter, message):
    for command in (["generate"], ["demo"], ["bench", "--suite", "default"]):
        extra = ["hi"] if command == ["generate"] else []
        result = CliRunner().invoke(
            build_cli(), ["specdec", *command, "--model", "no-such-model", "--drafter", drafter, *extra]
        )
        assert result.exit_code == 1, (command, result.output)
        assert message in result.output and "no-such-model" not in result.output, (command, result.output)
        assert "Traceback" not in result.output


def test_bench_refuses_a_binary_prompts_file_in_one_line(run, tmp_path):
    binary = tmp_path / "question.jsonl"
    binary.write_bytes(bytes(range(128, 256)))
    result = run("specdec", "bench", "--model", "no-such-model", "--drafter", "copy", "--prompts", str(binary))
    assert result.exit_code == 1
    assert "is not UTF-8 text" in result.output and len(result.output.strip().splitlines()) == 1


def test_generate_near_the_window_of_a_gpt2_model_with_the_default_policy(run, tmp_path):
    # Defect 5 through the command line: the chat-formatted prompt takes 40 of 48 positions, and cost-aware
    # calibration used to time 16-token verifications after it (IndexError from the position embeddings).
    folder = save_tiny_causal_lm(tmp_path / "gpt2", "gpt2", seed=1, initializer_range=0.15, n_positions=48)
    result = run("specdec", "generate", "--model", str(folder), "--max-new-tokens", "20", "--json", "x" * 20)
    assert result.exit_code == 0, result.output
    stats = _text_and_stats(result)[1]
    assert stats["stop_reason"] == "context" and stats["prompt_tokens"] + stats["new_tokens"] == 48


def test_policies_command_lists_builtins(run):
    result = run("specdec", "policies")
    assert result.exit_code == 0
    for name in ("constant", "heuristic", "cost-aware"):
        assert name in result.output


def test_train_heads_trains_saves_and_refuses_what_it_must(run, tiny_folder, tmp_path):
    out = tmp_path / "heads"
    train = ["specdec", "train-heads", "--model", tiny_folder, "--heads", "2", "--out", str(out)]
    small = ["--prompts", "8", "--prompt-tokens", "8", "--new-tokens", "8", "--epochs", "1"]
    result = run(*train, *small)
    assert result.exit_code == 0, result.output
    assert "top1" in result.output and "+3" in result.output and str(out) in result.output
    assert (out / "medusa_heads.safetensors").is_file()
    refused = run("specdec", "train-heads", "--model", tiny_folder, "--kind", "eagle")
    assert (
        refused.exit_code == 2
        and "'eagle' is not one of 'medusa', 'hidden-transfer', 'clover', 'ppd'" in refused.output
    )
    refused = run("specdec", "train-heads", "--model", tiny_folder, "--kind", "medusa", "--window", "8")
    assert refused.exit_code == 1 and "--window is an option of --kind clover, not of medusa" in refused.output
    refused = run("specdec", "train-heads", "--model", tiny_folder, "--kind", "ppd", "--vocab", "64")
    assert refused.exit_code == 1 and "--vocab is not an option of --kind ppd" in refused.output
    reduced = tmp_path / "reduced"
    result = run(*train[:-1], str(reduced), "--vocab", "64", "--prompt-mix", "explain", *small)
    assert result.exit_code == 0, result.output
    from crossedge.specdec.heads.base import read_heads_file

    meta, tensors = read_heads_file("medusa", reduced)
    assert '"vocab": 64' in meta["options"] and tensors["vocab_ids"].unique().numel() == 64
    assert json.loads(meta["training"])["prompt_mix"] == "explain"
    assert json.loads(read_heads_file("medusa", out)[0]["training"])["prompt_mix"] == "tasks"
    (out / "mine.txt").write_text("keep")
    refused = run(*train, *small)
    assert refused.exit_code == 1 and "mine.txt that crossedge did not write" in refused.output
    assert "Traceback" not in refused.output
