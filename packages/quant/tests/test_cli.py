"""crossedge quant eval / run / methods on a tiny model folder."""

import json

import pytest
import torch
from click.testing import CliRunner

from crossedge.core.bench import validate_report
from crossedge.core.cli import build_cli
from crossedge.core.testing import save_tiny_causal_lm
from crossedge.quant import load_quantized


@pytest.fixture
def cli(quant_plugin):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(build_cli(), list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", hidden=64)


def test_methods_lists_every_builtin(cli):
    result = cli("quant", "methods", "--json")
    assert result.exit_code == 0
    names = {row["name"] for row in json.loads(result.output)}
    assert names == {
        "rtn",
        "w8a8",
        "smoothquant",
        "crossquant",
        "gptq",
        "mixed",
        "mobilequant",
        "jlcm",
        "agile",
        "edgeqat",
        "int8",
        "int4",
    }


def test_eval_writes_table_json_and_png(cli, tiny_folder, tmp_path):
    out = tmp_path / "eval.json"
    corpus = tmp_path / "corpus.txt"
    nouns = [
        "garden",
        "window",
        "pocket",
        "ladder",
        "summer",
        "candle",
        "marble",
        "button",
        "wonder",
        "silver",
        "basket",
        "rocket",
    ]
    corpus.write_text("\n\n".join(
        f"Paragraph {i}: the {nouns[i % 12]} in this text keeps some words about quantization close. " * 8
        for i in range(40)
    ))  # fmt: skip
    result = cli(
        "quant", "eval", "--model", str(tiny_folder), "--methods", "rtn,w8a8:act_granularity=per_tensor,crossquant",
        "--corpus", str(corpus), "--window", "64", "--max-eval-tokens", "256", "--calib-tokens", "128",
        "--decode-tokens", "4", "--decode-repeats", "1", "--threads", "1", "--json", str(out), "--cloze", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "delta_ppl_pct" in result.output and "remainder dropped" in result.output
    report = json.loads(out.read_text())
    validate_report(report)
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["fp32", "rtn", "w8a8:act_granularity=per_tensor", "crossquant"]
    for row in rows.values():
        assert set(row) >= {"method", "bits", "ppl", "delta_ppl_pct", "kernel_fraction", "weight_bytes",
                            "peak_memory_bytes", "tokens_per_s", "speedup"}  # fmt: skip
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["delta_ppl_pct"] == 0.0
    assert rows["rtn"]["kernel_fraction"] is None and 0 <= rows["crossquant"]["kernel_fraction"] < 1
    assert rows["rtn"]["weight_bytes"] < rows["fp32"]["weight_bytes"]
    assert report["summary"]["perplexity_protocol"]["window"] == 64
    assert report["environment"]["threads"] == report["summary"]["threads"] == 1
    assert report["summary"]["perplexity_protocol"]["windows"] == 4
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["summary"]["cloze"]["items"] == 3
    assert all(row["cloze_accuracy"] in (0, 1 / 3, 2 / 3, 1) for row in rows.values())


def test_run_writes_a_loadable_model(cli, tiny_folder, tmp_path):
    out = tmp_path / "q"
    result = cli("quant", "run", "--model", str(tiny_folder), "--method", "gptq:group_size=32", "--out", str(out),
                 "--calib-tokens", "256", "--seq-len", "128")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    model = load_quantized(out)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert model(ids).logits.shape == (1, 5, 259)


def test_bad_spec_is_one_red_line(quant_plugin, tiny_folder):
    result = CliRunner().invoke(build_cli(), ["quant", "eval", "--model", str(tiny_folder), "--methods", "rtn:bits=3"])
    assert result.exit_code == 1
    assert "weight bits must be 4 or 8" in result.output


def test_registered_benchmark_runs_on_a_folder(quant_plugin, tiny_folder):
    from crossedge.core.registry import get_registry

    bench = get_registry("benchmark").get("quant-eval")
    report = bench.run(model=str(tiny_folder), methods="rtn", window="64", max_eval_tokens="128",
                       calib_tokens="64", decode_tokens="2", threads="1")  # fmt: skip
    assert [r["method"] for r in report.rows] == ["fp32", "rtn"]
    assert report.summary["perplexity_protocol"]["windows"] == 2


def test_eval_through_a_plugin_backend_matches_eager(quant_plugin, tiny_folder, tmp_path):
    from crossedge.core import registered
    from crossedge.core.testing import BackendPlugin, CountingBackend
    from crossedge.quant.evaluation import EvalSettings, evaluate_methods, load_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: " + "some words about quantization. " * 8 for i in range(40)))
    settings = EvalSettings(window=64, max_eval_tokens=128, calib_tokens=64, decode_tokens=2, decode_repeats=1,
                            threads=1, progress=False)  # fmt: skip

    def evaluate(backend):
        return evaluate_methods(_loader(tiny_folder), ["fp32", "rtn"], load_corpus(corpus), settings, backend=backend)

    eager = evaluate("torch-eager")
    counting = CountingBackend.fresh()
    with registered(BackendPlugin(counting), name="counting-test"):
        through = evaluate("counting")
    assert [r["ppl"] for r in through.rows] == [r["ppl"] for r in eager.rows]
    assert counting.forwards > 0
    assert counting.requests[0]["custom_kernels"] and counting.requests[0]["kv_cache_decoding"]
    assert (eager.summary["backend"], through.summary["backend"]) == ("torch-eager", "counting")


def _loader(folder):
    from crossedge.core.sources import load_model

    def load():
        loaded = load_model(str(folder))
        return loaded.model, loaded.tokenizer

    return load


def test_eval_refuses_a_backend_that_cannot_decode_before_loading(quant_plugin):
    from crossedge.core import registered
    from crossedge.core.testing import BackendPlugin, StaticGraphBackend

    with registered(BackendPlugin(StaticGraphBackend), name="static-test"):
        result = CliRunner().invoke(
            build_cli(), ["quant", "eval", "--model", "no-such-model", "--methods", "rtn", "--backend", "static-graph"]
        )
    assert result.exit_code == 1
    assert "'static-graph' cannot be used for quant eval" in result.output and "--backend torch-eager" in result.output


def test_eval_unknown_backend_gets_close_matches(quant_plugin):
    result = CliRunner().invoke(build_cli(), ["quant", "eval", "--model", "no-such-model", "--backend", "eagr"])
    assert result.exit_code == 1
    assert "unknown backend 'eagr': did you mean" in result.output
