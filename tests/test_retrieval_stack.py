"""Integration: crossedge-quant's methods and crossedge-ondevice's backends under the retrieval scorers."""

import json

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.core.cli import build_cli
from crossedge.retrieval.runtime import check_scorer_stack, for_scoring, prepare_scorer, scoring_rows
from crossedge.retrieval.scorers import CrossEncoder, UniEncoder
from crossedge.retrieval.testing import tiny_bench_settings, tiny_bert

QUERY = "read a config file"
DOCUMENTS = [
    "read a config file from disk",
    "sort numbers in a list",
    "open a network socket and read bytes",
    "parse json text into objects",
    "zip two lists together",
    "write the config back to a file",
]


def tiny_cross(seed: int = 0) -> CrossEncoder:
    # Wider than the unit tests' BERT so that a linear's int8 rounding averages out as in real encoders.
    encoder, tokenizer = tiny_bert(seed=seed, hidden=64, layers=2)
    return CrossEncoder.from_encoder(encoder, tokenizer, seed=seed, max_doc_tokens=32).eval()


def scores(scorer) -> torch.Tensor:
    return scorer.score(QUERY, DOCUMENTS).float()


@pytest.mark.parametrize("spec", ["rtn", "w8a8", "int8:kernel=w8a8", "int8:kernel=int8-weight-bf16"])
def test_quantized_reranker_scores_follow_the_float_ones(spec):
    from crossedge.quant.modules import QuantizedLinear

    float_scores = scores(tiny_cross())
    reranker = tiny_cross()
    record = prepare_scorer(reranker, check_scorer_stack(spec, purpose="test"))
    quantized = [m for m in reranker.encoder.modules() if isinstance(m, QuantizedLinear)]
    # Every linear of the encoder (query, key, value, output, two MLP layers per layer, the pooler).
    assert len(quantized) == record["quantized_layers"] == 2 * 6 + 1
    assert not any(isinstance(m, QuantizedLinear) for m in reranker.head.modules()), "the head stays float"
    got = scores(reranker)
    assert not torch.equal(got, float_scores), "int8 rounding must change the scores a little"
    # The similarity head scores cosines times 20: 0.2 is a cosine change of 0.01.
    assert float((got - float_scores).abs().max()) < 0.2
    assert got.argmax() == float_scores.argmax()


def test_int8_preset_times_kernels_at_the_rerankers_rows_unless_told():
    reranker = tiny_cross()
    rows = scoring_rows(reranker)
    assert rows == 32 * (32 + 32 + 3)
    chosen = for_scoring(check_scorer_stack("int8", purpose="test").quant, rows).config
    assert chosen.rows == [rows] and chosen.repeats == 3
    told = for_scoring(check_scorer_stack("int8:rows=8+16,repeats=2", purpose="test").quant, rows).config
    assert told.rows == [8, 16] and told.repeats == 2
    plain = check_scorer_stack("rtn", purpose="test").quant
    assert for_scoring(plain, rows) is plain


def test_onednn_and_bfloat16_rerankers():
    from crossedge.ondevice.backends import PackedLinear

    float_scores = scores(tiny_cross())
    packed = tiny_cross()
    prepare_scorer(packed, check_scorer_stack(backend="torch-onednn", purpose="test"))
    assert any(isinstance(m, PackedLinear) for m in packed.encoder.modules())
    assert torch.allclose(scores(packed), float_scores, atol=1e-4)
    half = tiny_cross()
    prepare_scorer(half, check_scorer_stack(dtype="bf16", purpose="test"))
    assert next(half.head.parameters()).dtype == torch.bfloat16
    assert float((scores(half) - float_scores).abs().max()) < 0.5


def test_uni_encoder_runs_on_a_quantized_encoder():
    from crossedge.quant.modules import QuantizedLinear

    cross = tiny_cross()
    uni = UniEncoder.from_scorer(cross)
    float_scores = uni.score(QUERY, DOCUMENTS).float()
    prepare_scorer(uni, check_scorer_stack("rtn", purpose="test"), batch_size=len(DOCUMENTS))
    assert any(isinstance(m, QuantizedLinear) for m in uni.encoder.modules())
    got = uni.score(QUERY, DOCUMENTS).float()
    assert float((got - float_scores).abs().max()) < 0.2


def test_stacks_that_cannot_compose_are_refused():
    with pytest.raises(CrossedgeError, match="take float32 activations; choose one of the two"):
        check_scorer_stack("rtn", dtype="bfloat16", purpose="test")
    with pytest.raises(CrossedgeError, match="'onnxruntime' cannot be used for test.*own interface"):
        check_scorer_stack(backend="onnxruntime", purpose="test")
    with pytest.raises(CrossedgeError, match="needs calibration data"):
        check_scorer_stack("gptq", purpose="test")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "onnxruntime"], "backend 'onnxruntime' cannot be used for retrieval search"),
        (["--quant", "rtn:bitz=8"], "has no option 'bitz'"),
        (["--quant", "rtn", "--dtype", "bf16"], "choose one of the two"),
    ],
)
def test_search_refuses_a_bad_stack_before_reading_the_index(tmp_path, args, message):
    missing = tmp_path / "no-index"
    result = CliRunner().invoke(build_cli(), ["retrieval", "search", str(missing), "q", "--rerank", "cross-encoder",
                                              *args])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert message in result.output


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_follows_the_cpu_and_asks_for_nothing(monkeypatch, tmp_path, native):
    import crossedge.core.contracts.backend as contract

    monkeypatch.setattr(contract, "native_bf16", lambda: (native, "a reason"))
    stack = check_scorer_stack(dtype="auto", purpose="test")
    assert stack.dtype == ("bfloat16" if native else "float32")
    assert stack.describe()["dtype_reason"].startswith("auto: ")
    assert not stack.was_asked_for
    assert check_scorer_stack(dtype="bf16", purpose="test").was_asked_for
    assert check_scorer_stack("rtn", dtype="auto", purpose="test").dtype == "float32"
    # auto alone is not a stack the user asked for, so search needs no reranker for it
    result = CliRunner().invoke(build_cli(), ["retrieval", "search", str(tmp_path / "none"), "q", "--dtype", "auto"])
    assert "add --rerank" not in result.output


def test_search_stack_needs_a_reranker(tmp_path):
    result = CliRunner().invoke(build_cli(), ["retrieval", "search", str(tmp_path), "q", "--quant", "rtn"])
    assert result.exit_code == 1
    assert "add --rerank cross-encoder" in result.output


def test_bench_adds_the_stacks_rows_paired_against_float(tmp_path, monkeypatch):
    from crossedge.retrieval.pipeline import run_bench

    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    methods = ("bi-zero-shot", "cross-rerank")
    settings = tiny_bench_settings(
        tmp_path,
        methods=methods,
        train_queries=3,
        candidates=3,
        rerank_depth=4,
        uni_depth=2,
        curve_depths=(3,),
        quant="rtn",
    )
    report = run_bench(settings, say=lambda _: None)
    names = [row["method"] for row in report["rows"]]
    for depth in (4, 3, 2):
        assert f"cross-encoder rerank@{depth}" in names
        assert f"cross-encoder rerank@{depth} [rtn]" in names
    stack = report["summary"]["stack"]
    assert stack["quant"] == "rtn" and stack["quantized_layers"] > 0
    versus = stack["vs_float_points"]["cross-encoder rerank@4 [rtn]"]
    assert versus["low"] <= versus["mean"] <= versus["high"] and versus["speedup"] > 0
    curve = report["summary"]["cost_quality"]
    assert [(c["depth"], c["stack"]) for c in curve] == [(4, "float32"), (3, "float32"), (2, "float32"),
                                                          (4, "rtn"), (3, "rtn"), (2, "rtn")]  # fmt: skip


def test_bench_refuses_a_stack_without_the_cross_encoder(tmp_path):
    from crossedge.retrieval.pipeline import BenchSettings, run_bench

    with pytest.raises(CrossedgeError, match="add cross-rerank to --methods"):
        run_bench(BenchSettings(methods=("bi-zero-shot",), dtype="bf16"), say=lambda _: None)


def test_index_with_a_quantized_bi_encoder_searches(tmp_path):
    from crossedge.retrieval.scorers import BiEncoder

    encoder, tokenizer = tiny_bert(seed=0, hidden=64)
    model = tmp_path / "bi"
    BiEncoder.from_encoder(encoder, tokenizer).save(model)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(DOCUMENTS):
        (docs / f"d{i}.txt").write_text(text + "\n")
    runner = CliRunner()
    out = tmp_path / "index"
    built = runner.invoke(build_cli(), ["retrieval", "index", str(docs), "--out", str(out), "--model", str(model),
                                        "--quant", "rtn"])  # fmt: skip
    assert built.exit_code == 0, built.output
    # The float bi-encoder is kept for the queries; the stack is recorded with the index.
    assert (out / "model" / "scorer.json").exists()
    info = json.loads(next(out.glob("*.json")).read_text())
    assert "rtn" in json.dumps(info)
    found = runner.invoke(build_cli(), ["retrieval", "search", str(out), "config file", "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)) == len(DOCUMENTS)
