"""The attention audit on hand-built models whose answers are known, its metrics, loader and CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.crossmodal import asr, audit, encdec, speech

TOKENS = [7, 7, 7]  # three steps predicting token 7, then EOS: four steps in all


class HandBuilt(torch.nn.Module):
    """Memory = features; ``score_t = w . c_t``; the target ids (7 and EOS) get logit +score, all others -score.

    ``log p(target)`` grows with ``score``. With ``only=None``, ``c_t = sum_s a_ts m_s`` for the
    hand-set attention ``a``, so the gradient on ``m_s`` is ``a_ts`` times a per-step constant:
    saliency equals attention. With ``only=j`` the model reads memory position ``j`` alone while
    reporting uniform attention.
    """

    frames_per_position = 1

    def __init__(self, attention: torch.Tensor, only: int | None = None) -> None:
        super().__init__()
        self.attention, self.only = attention, only
        self.tokenizer = asr.CharTokenizer()
        self.sign = -torch.ones(self.tokenizer.vocab_size)
        self.sign[[7, asr.EOS]] = 1.0

    def encode(self, features):
        return features

    def decode(self, memory, tokens):
        n, length = tokens.shape
        positions = memory.shape[1]
        if self.only is None:
            weights = self.attention[:length]
            context = weights @ memory  # (N, L, D)
        else:
            weights = torch.full((length, positions), 1.0 / positions)
            context = memory[:, self.only][:, None].expand(n, length, -1)
        score = context.sum(-1)  # w = ones
        heads = weights[None, None].expand(n, 2, length, positions)
        return score[..., None] * self.sign, [heads, heads]

    def transcribe(self, features, max_len=64):
        return "fff"


def positive_memory(positions=10, width=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.5, 1.5, (1, positions, width))).float()


def test_normalize_pearson_spearman_and_overlaps_on_known_vectors():
    assert np.allclose(audit.normalize([[1.0, -3.0], [0.0, 0.0]]), [[0.25, 0.75], [0.5, 0.5]])
    assert audit.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert audit.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert audit.pearson([1, 2, 3, 4], [1, 4, 9, 100]) < 0.99 and audit.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == 1.0
    assert audit.pearson([1, 1, 1], [1, 2, 3]) == 0.0 and audit.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert audit.relevance_captured([1, 1, 0, 0], [0.5, 0.5, 0, 0]) == pytest.approx(1.0)
    assert audit.relevance_captured([1, 0, 0, 0], [0, 0, 1, 1]) == 0.0
    assert audit.relevance_captured([3, 1], [1, 3]) == pytest.approx(0.5)
    assert audit.top_k_overlap(np.array([4, 3, 2, 1]), np.array([1, 3, 4, 2]), 2) == 0.5


def test_pool_frames_sums_each_positions_frames():
    frames = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert audit.pool_frames(frames, 2, 3).tolist() == [[3.0, 7.0, 5.0]]
    assert audit.pool_frames(frames, 2, 2).tolist() == [[3.0, 12.0]]  # the leftover frame joins the last position


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_saliency_equals_attention_when_decode_is_linear_in_memory(method):
    steps, positions = len(TOKENS) + 1, 10
    attention = torch.from_numpy(np.random.default_rng(1).dirichlet(np.ones(positions), steps)).float()
    model = HandBuilt(attention)
    # equal memory rows: input x gradient and integrated gradients are then proportional to attention too
    memory = positive_memory(positions) if method == "saliency" else torch.ones(1, positions, 3)
    result = audit.audit(model, memory, TOKENS, method=method, points=positions + 1)
    assert np.allclose(result.memory_saliency, attention.numpy(), atol=1e-5)
    assert np.allclose(result.input_saliency, attention.numpy(), atol=1e-5)
    for name in ("memory", "input"):
        m = result.metrics[name]
        for part in [m["aggregate"], *m["layers"], *m["layers"][0]["heads"]]:
            assert part["pearson"] == pytest.approx(1.0, abs=1e-5)
            assert part["spearman"] == pytest.approx(1.0)
            assert part["relevance_captured"] == pytest.approx(1.0, abs=1e-5)
            assert part["top_k_overlap"] == 1.0
    zero = result.metrics["deletion"]["zero"]
    assert zero["attention"]["curve"] == pytest.approx(zero["saliency"]["curve"])
    assert zero["attention"]["auc"] == pytest.approx(zero["saliency"]["auc"])
    curve = zero["attention"]["curve"]
    assert len(curve) == positions + 1 and bool((np.diff(curve) < 0).all())  # strictly falling
    assert zero["attention"]["auc"] <= zero["random"]["auc"]  # the true order falls at least as fast as chance


def test_uniform_attention_over_one_position_that_matters_is_no_explanation():
    positions, only = 8, 7  # the position that matters is the last one the (stable) attention order deletes
    model = HandBuilt(torch.zeros(0), only=only)
    result = audit.audit(model, positive_memory(positions), TOKENS, points=positions + 1)
    expected = np.zeros((len(TOKENS) + 1, positions))
    expected[:, only] = 1.0
    assert np.allclose(result.memory_saliency, expected)
    aggregate = result.metrics["memory"]["aggregate"]
    assert aggregate["pearson"] == 0.0 and aggregate["spearman"] == 0.0
    assert aggregate["relevance_captured"] == pytest.approx(1 / positions)
    zero = result.metrics["deletion"]["zero"]
    saliency, attention, random = zero["saliency"], zero["attention"], zero["random"]
    assert saliency["curve"][1] == pytest.approx(saliency["curve"][-1])  # one deletion removes all evidence
    assert attention["curve"][-2] == pytest.approx(attention["curve"][0])  # attention order removes it last
    assert saliency["auc"] < random["auc"] <= attention["auc"]


def test_audit_of_the_encoder_decoder_is_consistent():
    torch.manual_seed(0)
    model = encdec.EncoderDecoderAsr(encdec.EncDecConfig(width=32, heads=2, encoder_layers=1, ff=64)).eval()
    features = torch.randn(1, 15, model.config.input_dim)
    result = audit.audit(model, features, [5, 6, 7], points=5)
    assert result.attention_mean.shape == result.memory_saliency.shape == result.input_saliency.shape == (4, 8)
    assert result.input_saliency_frames.shape == (4, 15)
    for layer in result.attention:
        assert np.allclose(layer.sum(-1), 1.0)
    assert np.allclose(result.input_saliency.sum(-1), 1.0) and (result.input_saliency >= 0).all()
    assert len(result.metrics["memory"]["layers"]) == 2 and len(result.metrics["input"]["layers"][0]["heads"]) == 2
    for fill in ("zero", "mean"):
        for order in ("attention", "saliency", "random"):
            curve = result.metrics["deletion"][fill][order]["curve"]
            assert len(curve) == 5 and all(c <= 0 for c in curve)
    summary = audit.summarize([result, result])
    assert summary["memory"]["layers"][1]["pearson"] == pytest.approx(result.metrics["memory"]["layers"][1]["pearson"])
    assert "aggregate" in audit.format_summary(summary)
    with pytest.raises(audit.AuditError, match="unknown saliency method"):
        audit.audit(model, features, [5], method="shap")


def test_load_explainable_dispatches_on_the_format_tag(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model = encdec.EncoderDecoderAsr(encdec.EncDecConfig(width=16, heads=2, encoder_layers=1, decoder_layers=1))
    loaded = audit.load_explainable(encdec.save(model, tmp_path / "m"))
    assert isinstance(loaded, encdec.EncoderDecoderAsr) and isinstance(loaded, audit.CrossAttentionModel)
    assert audit.LOADERS["crossedge-zipper-v1"] == "crossedge.crossmodal.zipper:load"
    (tmp_path / "odd").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "odd" / "model.safetensors"), metadata={"format": "mystery-v9"})
    with pytest.raises(audit.AuditError, match="mystery-v9") as info:
        audit.load_explainable(tmp_path / "odd")
    assert "\n" not in str(info.value) and "crossedge-encdec-asr-v1" in str(info.value)
    monkeypatch.setitem(audit.LOADERS, "mystery-v9", "crossedge.crossmodal.not_a_module:load")
    with pytest.raises(audit.AuditError, match="not installed") as info:
        audit.load_explainable(tmp_path / "odd")
    assert "\n" not in str(info.value)
    with pytest.raises(audit.AuditError, match="does not exist"):
        audit.load_explainable(tmp_path / "nowhere")


def test_explain_cli_writes_json_and_png_and_refuses_to_overwrite(plugin, tmp_path):
    torch.manual_seed(0)
    model = encdec.EncoderDecoderAsr(encdec.EncDecConfig(width=16, heads=2, encoder_layers=1, max_len=6))
    encdec.save(model.eval(), tmp_path / "model")
    t = np.arange(8000) / 16000
    speech.write_wav(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t))
    runner = CliRunner()
    args = ["crossmodal", "explain", "--model", str(tmp_path / "model"), str(tmp_path / "a.wav"), "--max-len", "4"]
    out = tmp_path / "out"
    result = runner.invoke(build_cli(), [*args, "--out", str(out), "--text", "the code"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "audit.json").read_text())
    assert data["reference"] == "the code" and data["steps"] == len("the code") + 1
    assert len(data["memory"]["layers"]) == 2 and set(data["deletion"]) == {"zero", "mean"}
    assert np.allclose(np.sum(data["maps"]["attention_mean"], axis=1), 1.0)
    assert (out / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "audit.json").read_text()
    again = runner.invoke(build_cli(), [*args, "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output and len(again.output.strip().splitlines()) == 1
    assert (out / "audit.json").read_text() == before
    forced = runner.invoke(build_cli(), [*args, "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "audit.json").read_text())["reference"] is None


def test_audit_bench_reports_cer_and_per_layer_correlations_on_chirps(tmp_path):
    from crossedge.crossmodal.audit_bench import audit_bench, format_table

    def fake(text, voice):
        t = np.arange(600 * (len(text) + 2)) / 16000
        return (0.3 * np.sin(2 * np.pi * (180 + 4 * voice.pitch + 200 * t) * t)).astype(np.float32)

    corpus = asr.build_corpus(texts=10, test_fraction=0.3, audio_fn=fake)
    config = encdec.EncDecConfig(width=16, heads=2, encoder_layers=1, decoder_layers=2, ff=32, max_len=8)
    result = audit_bench(steps=3, utterances=2, corpus=corpus, config=config, save=tmp_path / "saved")
    assert result["audit"]["utterances"] == 2
    assert result["cer"] == encdec.evaluate(encdec.load(tmp_path / "saved"), corpus)["cer"]  # the saved model
    assert len(result["audit"]["memory"]["layers"]) == 2 and len(result["audit"]["input"]["layers"]) == 2
    assert set(result["audit"]["deletion_auc"]["zero"]) == {"attention", "saliency", "random"}
    assert "layer 1" in format_table(result) and "test CER" in format_table(result)
    assert isinstance(audit.load_explainable(tmp_path / "saved"), encdec.EncoderDecoderAsr)
    json.dumps(result)  # JSON-ready

    # a saved model is audited as it is, untrained here: the same CER and the same audit
    again = audit_bench(utterances=2, corpus=corpus, model_dir=tmp_path / "saved")
    assert again["steps"] == 0 and again["final_loss"] is None and again["model"] == str(tmp_path / "saved")
    assert again["cer"] == result["cer"] and again["audit"] == result["audit"]
    assert "final train loss" not in format_table(again) and "test CER" in format_table(again)
    with pytest.raises(audit.AuditError, match="give one of them"):
        audit_bench(corpus=corpus, model_dir=tmp_path / "saved", save=tmp_path / "other")
    with pytest.raises(audit.AuditError, match="does not exist"):
        audit_bench(corpus=corpus, model_dir=tmp_path / "nowhere")


def test_bench_task_audit_refuses_model_with_save_before_speaking(plugin, tmp_path):
    runner = CliRunner()
    base = ["crossmodal", "bench", "--task", "audit", "--model", str(tmp_path / "m")]
    both = runner.invoke(build_cli(), [*base, "--save", str(tmp_path / "s")])
    assert both.exit_code == 1 and "give one of them" in both.output
    before = torch.get_num_threads()
    try:
        missing = runner.invoke(build_cli(), base)
        assert missing.exit_code == 1 and "does not exist" in missing.output and "Traceback" not in missing.output
        assert torch.get_num_threads() == 1  # the audit's default
        runner.invoke(build_cli(), [*base, "--threads", "3"])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_bench_task_audit_on_a_few_espeak_utterances(plugin, tmp_path):
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(
        build_cli(),
        ["crossmodal", "bench", "--task", "audit", "--audit-texts", "10", "--audit-steps", "3", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "test CER" in result.output and "aggregate" in result.output
    data = json.loads(out.read_text())
    assert data["task"] == "audit" and len(data["audit"]["memory"]["layers"]) == 2
