"""Integration: the example drafter distribution is found through its entry point and ``--drafter`` uses it."""

import json

import pytest

from crossedge.core.testing import run_cli

pytest.importorskip("crossedge_example_drafter", reason="pip install -e plugins/crossedge-example-drafter")
pytest.importorskip("crossedge.specdec", reason="the example drafter runs under crossedge-specdec's engine")


def test_example_drafter_is_found_by_entry_point(tmp_path):
    done = run_cli("plugins", "--json", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    example = rows["example_drafter"]
    assert example["distribution"] == "crossedge-example-drafter"
    assert example["hooks"] == ["register_drafters"]
    assert example["registers"] == {"drafter": ["last-ngram"]}
    listed = run_cli("specdec", "drafters", cache=tmp_path)
    assert "last-ngram" in listed.stdout and "example_drafter" in listed.stdout


def _text_and_stats(stdout):
    split = stdout.rindex("\n{")
    return stdout[:split], json.loads(stdout[split:])


def test_drafter_option_runs_the_example_drafter_losslessly(tmp_path):
    from crossedge.core.testing import save_tiny_causal_lm

    folder = str(save_tiny_causal_lm(tmp_path / "tiny", "llama", seed=1, initializer_range=0.15))
    prompt = "the cat sat on the mat, the cat sat on the mat, the cat sat on the"
    common = ["specdec", "generate", "--model", folder, "--max-new-tokens", "16", "--json"]
    cache = tmp_path / "cache"
    vanilla = run_cli(*common, "--drafter", "none", prompt, cache=cache)
    drafted = run_cli(*common, "--drafter", "last-ngram:n=2,max_copy=6@constant:k=4", prompt, cache=cache)
    assert vanilla.returncode == 0 and drafted.returncode == 0, drafted.stderr
    (text, stats), (plain_text, _) = _text_and_stats(drafted.stdout), _text_and_stats(vanilla.stdout)
    assert text == plain_text  # greedy speculative output is the target's own
    assert stats["drafters"]["last-ngram"]["proposals"] > 0
    refused = run_cli(*common, "--drafter", "last-ngram:size=3", prompt, cache=cache)
    assert refused.returncode == 1
    assert "has no option 'size'" in refused.stderr and "its options: max_copy, n" in refused.stderr
