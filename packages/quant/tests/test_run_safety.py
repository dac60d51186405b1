"""quant run never writes over what it did not create; corpora are checked before models load; long steps show bars."""

import hashlib

import pytest
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.core.testing import save_tiny_causal_lm


@pytest.fixture
def source(tmp_path):
    return save_tiny_causal_lm(tmp_path / "mymodel", hidden=64)


@pytest.fixture
def run(quant_plugin, monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))

    def invoke(*args):
        return CliRunner().invoke(build_cli(), ["quant", "run", *args])

    return invoke


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_out_equal_to_the_source_is_refused_and_the_weights_survive(run, source):
    before = _digest(source)
    result = run("--model", str(source), "--method", "rtn", "--out", str(source))
    assert result.exit_code == 1
    assert "folder of the model being quantized" in result.output
    result = run("--model", str(source), "--method", "rtn", "--out", str(source), "--force")
    assert result.exit_code == 1 and "folder of the model being quantized" in result.output
    result = run("--model", str(source), "--method", "rtn", "--out", str(source / "inside"))
    assert result.exit_code == 1
    assert _digest(source) == before


def test_out_inside_the_cache_is_refused(run, source, tmp_path):
    result = run("--model", str(source), "--method", "rtn", "--out", str(tmp_path / "cache" / "models" / "x"))
    assert result.exit_code == 1 and "crossedge's cache" in result.output


def test_non_empty_out_needs_force_and_then_keeps_other_files(run, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("--model", str(source), "--method", "rtn", "--out", str(out))
    assert result.exit_code == 1 and "not empty" in result.output and "--force" in result.output
    result = run("--model", str(source), "--method", "rtn", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "quantization.json").is_file()
    # an earlier export of ours may be replaced with --force
    result = run("--model", str(source), "--method", "rtn:bits=4,group_size=32", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output


def test_force_never_writes_over_a_foreign_model(run, source, tmp_path):
    other = save_tiny_causal_lm(tmp_path / "other", hidden=64, seed=1)
    before = _digest(other)
    result = run("--model", str(source), "--method", "rtn", "--out", str(other), "--force")
    assert result.exit_code == 1 and "did not write" in result.output
    assert _digest(other) == before


def test_missing_corpus_is_an_error_even_for_rtn(run, source, tmp_path):
    result = run("--model", str(source), "--method", "rtn", "--out", str(tmp_path / "q"), "--corpus", "missing.txt")
    assert result.exit_code == 1 and "cannot read corpus missing.txt" in result.output
    assert not (tmp_path / "q").exists()


def test_binary_corpus_is_refused(run, source, tmp_path):
    blob = tmp_path / "blob.txt"
    blob.write_bytes(bytes(range(256)) * 8)
    result = run("--model", str(source), "--method", "gptq", "--out", str(tmp_path / "q"), "--corpus", str(blob))
    assert result.exit_code == 1 and "binary file, not text" in result.output
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait\n\n".encode("latin-1") * 40)
    result = run("--model", str(source), "--method", "gptq", "--out", str(tmp_path / "q"), "--corpus", str(latin))
    assert result.exit_code == 1 and "not UTF-8 text (byte 3" in result.output


def test_unused_corpus_warns(run, source, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i} about things." for i in range(20)))
    with pytest.warns(UserWarning, match="takes no calibration data: --corpus .* is not used"):
        result = run("--model", str(source), "--method", "rtn", "--out", str(tmp_path / "q"), "--corpus", str(corpus))
    assert result.exit_code == 0, result.output


def _text(path, word, paragraphs=40):
    body = f"{word} words about quantization. " * 8
    path.write_text("\n\n".join(f"Paragraph {i}: {body}" for i in range(paragraphs)))
    return path


def test_eval_calibrates_on_one_text_and_evaluates_on_another(quant_plugin, source, tmp_path):
    import json

    out = tmp_path / "eval.json"
    args = ["quant", "eval", "--model", str(source), "--methods", "smoothquant", "--window", "64",
            "--max-eval-tokens", "128", "--calib-tokens", "128", "--decode-tokens", "2", "--decode-repeats", "1",
            "--threads", "1", "--json", str(out)]  # fmt: skip
    calib = _text(tmp_path / "calib.txt", "calibration", paragraphs=7)
    evaluation = _text(tmp_path / "eval.txt", "evaluation", paragraphs=11)
    result = CliRunner().invoke(build_cli(), [*args, "--corpus", str(evaluation), "--calib-corpus", str(calib)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert (summary["calibration_documents"], summary["evaluation_documents"]) == (7, 11)
    assert summary["corpus"] == f"{evaluation} (calibration: {calib})"
    result = CliRunner().invoke(build_cli(), [*args, "--calib-corpus", str(tmp_path / "missing.txt")])
    assert result.exit_code == 1 and "cannot read calibration corpus" in result.output


def test_long_steps_show_progress_bars(quant_plugin, source, tmp_path, monkeypatch):
    import crossedge.quant.calibration as calibration
    import crossedge.quant.evaluation as evaluation
    import crossedge.quant.methods.gptq as gptq

    seen = []

    def recording_bar(iterable, *, desc, total=None, enabled=True):
        seen.append(desc)
        return iterable

    for module in (calibration, evaluation, gptq):
        monkeypatch.setattr(module, "progress_bar", recording_bar)
    corpus = _text(tmp_path / "c.txt", "some")
    result = CliRunner().invoke(build_cli(), [
        "quant", "eval", "--model", str(source), "--methods", "gptq:group_size=32", "--corpus", str(corpus),
        "--window", "64", "--max-eval-tokens", "128", "--calib-tokens", "128", "--decode-tokens", "2",
        "--decode-repeats", "1", "--threads", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {"methods", "perplexity windows", "calibration batches", "gptq layers"} <= set(seen)
