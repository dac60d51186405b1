import json

import pytest
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.core.cli import build_cli
from crossedge.specdec import export
from crossedge.specdec.errors import SpecdecError

# Field names of vLLM's SpeculativeConfig, transcribed from vllm-project/vllm vllm/config/speculative.py
# at commit 002e77c1f0ef (a recent main, taken for the pinned vllm 0.33.0; not checked against the tag). Names only.
VLLM_SPECULATIVE_CONFIG_FIELDS = {
    "enforce_eager",
    "num_speculative_tokens",
    "model",
    "method",
    "draft_tensor_parallel_size",
    "tensor_parallel_size",
    "quantization",
    "moe_backend",
    "attention_backend",
    "kv_cache_dtype",
    "max_model_len",
    "revision",
    "code_revision",
    "index_share_for_mtp_iteration",
    "disable_padded_drafter_batch",
    "disable_eagle_block_drop",
    "use_local_argmax_reduction",
    "use_heterogeneous_vocab",
    "prompt_lookup_max",
    "prompt_lookup_min",
    "parallel_drafting",
    "num_speculative_tokens_per_batch_size",
    "suffix_decoding_max_tree_depth",
    "suffix_decoding_max_cached_requests",
    "suffix_decoding_max_spec_factor",
    "suffix_decoding_min_token_prob",
    "draft_load_config",
    "rejection_sample_method",
    "synthetic_acceptance_rates",
    "synthetic_acceptance_length",
    "enable_adaptive_verification",
    "draft_sample_method",
    "dspark_draft_topk",
}
# Values of its SpeculativeMethod literal (same file), without the MTP model types.
VLLM_METHODS = {
    "ngram",
    "medusa",
    "mlp_speculator",
    "draft_model",
    "suffix",
    "custom_class",
    "eagle",
    "eagle3",
    "extract_hidden_states",
    "dflash",
    "ngram_gpu",
    "dspark",
}

# ServerArgs fields of the speculative sections, transcribed from sgl-project/sglang
# python/sglang/srt/server_args.py at commit 001067fffe33 (a recent main, taken for the pinned sglang 0.5.23; not
# checked against the tag), plus model_path. Names only; the flag is "--" plus the name with dashes.
SGLANG_SERVER_ARGS = {
    "model_path",
    "speculative_algorithm",
    "speculative_draft_model_path",
    "speculative_draft_model_revision",
    "speculative_draft_load_format",
    "speculative_num_steps",
    "speculative_eagle_topk",
    "speculative_num_draft_tokens",
    "speculative_dflash_block_size",
    "speculative_accept_threshold_single",
    "speculative_accept_threshold_acc",
    "speculative_use_rejection_sampling",
    "speculative_token_map",
    "speculative_attention_mode",
    "speculative_draft_attention_backend",
    "speculative_draft_kv_cache_dtype",
    "speculative_draft_window_size",
    "speculative_draft_model_quantization",
    "speculative_adaptive",
    "speculative_adaptive_config",
    "speculative_ngram_min_bfs_breadth",
    "speculative_ngram_max_bfs_breadth",
    "speculative_ngram_match_type",
    "speculative_ngram_max_trie_depth",
    "speculative_ngram_capacity",
    "speculative_ngram_external_corpus_path",
    "speculative_ngram_external_sam_budget",
    "speculative_ngram_external_corpus_max_tokens",
}
# Builtin values of --speculative-algorithm named in that field's help (same file).
SGLANG_ALGORITHMS = {"EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM", "DFLASH", "DSPARK"}

EXPORTABLE = ["copy", "copy@constant:k=3", "history", "copy,history", "draft-model:model=HuggingFaceTB/SmolLM2-135M"]


def test_declared_keys_exist_in_pinned_versions():
    assert set(export.VLLM_KEYS) <= VLLM_SPECULATIVE_CONFIG_FIELDS
    assert set(export.SGLANG_KEYS) <= SGLANG_SERVER_ARGS
    assert (export.VLLM_VERSION, export.SGLANG_VERSION) == ("0.33.0", "0.5.23")


@pytest.mark.parametrize("drafter", EXPORTABLE)
def test_every_emitted_key_and_value_is_known(drafter):
    vllm = export.export_config(drafter, "vllm", model="m")
    config = vllm["speculative_config"]
    assert set(config) <= set(export.VLLM_KEYS)
    assert config["method"] in VLLM_METHODS
    assert vllm["engine_version"] == export.VLLM_VERSION
    sglang = export.export_config(drafter, "sglang", model="m")
    args = sglang["server_args"]
    assert set(args) <= set(export.SGLANG_KEYS)
    assert args["speculative_algorithm"] in SGLANG_ALGORITHMS
    assert args["model_path"] == "m"
    for key in args:
        assert f"--{key.replace('_', '-')} " in sglang["command"]


def test_copy_maps_to_ngram_with_constant_k():
    data = export.export_config("copy:min_match=3@constant:k=7", "vllm")
    assert data["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 7,
        "prompt_lookup_min": 3,
        "prompt_lookup_max": 5,
    }
    assert data["command"].startswith("vllm serve MODEL --speculative-config ")
    assert export.export_config("copy", "vllm")["speculative_config"]["num_speculative_tokens"] == 5
    ngram = export.export_config("prompt-lookup@constant:k=4", "sglang")["server_args"]
    assert ngram["speculative_algorithm"] == "NGRAM" and ngram["speculative_num_draft_tokens"] == 5
    capped = export.export_config("copy:max_copy=2@constant:k=8", "sglang")["server_args"]
    assert capped["speculative_num_draft_tokens"] == 3


def test_history_maps_to_suffix_and_draft_model_to_standalone():
    assert export.export_config("copy,history", "vllm")["speculative_config"]["method"] == "suffix"
    args = export.export_config("draft:model=small@constant:k=3", "sglang")["server_args"]
    assert args["speculative_algorithm"] == "STANDALONE"
    assert args["speculative_draft_model_path"] == "small"
    assert (args["speculative_num_steps"], args["speculative_eagle_topk"], args["speculative_num_draft_tokens"]) == (
        3,
        1,
        4,
    )


@pytest.mark.parametrize("fmt", ["vllm", "sglang"])
@pytest.mark.parametrize(
    "drafter, message",
    [
        ("medusa", "not in"),
        ("cross-vocab:model=x", "tokenizer"),
        ("nonesuch", "unknown drafter 'nonesuch'"),
        ("draft-model", "model=NAME"),
    ],
)
def test_unmapped_drafters_refused(drafter, fmt, message):
    with pytest.raises(CrossedgeError, match=message):
        export.export_config(drafter, fmt)


def test_from_bench_takes_fastest_matching_method(tmp_path):
    results = tmp_path / "bench.json"
    overall = {
        "vanilla": {"speedup": 1.0, "mean_accepted": 1.0},
        "copy@constant:k=2": {"speedup": 1.2, "mean_accepted": 2.1},
        "copy": {"speedup": 1.5, "mean_accepted": 3.4},
        "history": {"speedup": 2.0, "mean_accepted": 6.0},
    }
    results.write_text(json.dumps({"runs": [], "summary": {"overall": overall}}))
    assert export.num_tokens_from_bench(results, "copy") == 4
    data = export.export_config("copy", "vllm", from_bench=results)
    assert data["speculative_config"]["num_speculative_tokens"] == 4
    with pytest.raises(SpecdecError, match="no measured method"):
        export.num_tokens_from_bench(results, "draft-model:model=x")
    with pytest.raises(SpecdecError, match="no measured method"):
        export.num_tokens_from_bench(results, "copy:min_match=3")


def test_write_refuses_foreign_files_and_replaces_its_own(tmp_path):
    out = tmp_path / "spec.json"
    export.write_export(out, export.export_config("copy", "vllm"))
    export.write_export(out, export.export_config("history", "vllm"))
    assert json.loads(out.read_text())["speculative_config"]["method"] == "suffix"
    foreign = tmp_path / "mine.json"
    foreign.write_text('{"keep": true}')
    with pytest.raises(SpecdecError, match="not written by"):
        export.write_export(foreign, export.export_config("copy", "vllm"))
    assert foreign.read_text() == '{"keep": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "spec.json"]


def test_cli_prints_writes_and_fails_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["specdec", "export", "--drafter", "copy", "--format", "sglang"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["server_args"]["speculative_algorithm"] == "NGRAM"
    out = tmp_path / "vllm.json"
    args = ["specdec", "export", "--drafter", "copy", "--format", "vllm", "--model", "m", "--out", str(out)]
    result = runner.invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["speculative_config"]["method"] == "ngram"
    result = runner.invoke(build_cli(), ["specdec", "export", "--drafter", "medusa", "--format", "vllm"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "medusa" in result.output
