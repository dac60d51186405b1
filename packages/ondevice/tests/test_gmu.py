"""Gated memory sharing: layer layout, GMU, scan, cached decoding, shared-cache reuse, training, files, CLI, bench."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.ondevice.gmu.bench import GmuBenchmark
from crossedge.ondevice.gmu.cli import gmu
from crossedge.ondevice.gmu.data import encode
from crossedge.ondevice.gmu.decoding import context_of, decode_costs, generate
from crossedge.ondevice.gmu.layers import CrossAttention, GatedMemoryUnit, linear_scan
from crossedge.ondevice.gmu.model import (
    ByteDecoder,
    DecoderConfig,
    check_writable,
    load_decoder,
    matched_pair,
    parameter_count,
    save_decoder,
)
from crossedge.ondevice.gmu.training import TrainConfig, bits_per_byte, train_decoder

TINY = DecoderConfig(kind="plain", d_model=32, layers=4, heads=2, mlp_hidden=48, window=3, inner=32)
TEXT = encode("the quick brown fox jumps over the lazy dog; the lazy dog sleeps while the quick fox runs. " * 12)


def tiny(kind: str, seed: int = 0) -> ByteDecoder:
    torch.manual_seed(seed)
    return ByteDecoder(matched_pair(TINY)[KINDS.index(kind)]).eval()


KINDS = ("plain", "sambay")


def test_layer_layout_and_config_checks():
    assert DecoderConfig(kind="sambay", layers=8).layer_kinds == (
        "rec",
        "swa",
        "rec",
        "full",
        "xattn",
        "gmu",
        "xattn",
        "gmu",
    )
    assert DecoderConfig(kind="sambay", layers=4).layer_kinds == ("rec", "full", "xattn", "gmu")
    assert DecoderConfig(kind="plain", layers=3).layer_kinds == ("attn",) * 3
    for layers in (2, 5):
        with pytest.raises(CrossedgeError, match="even number of layers"):
            DecoderConfig(kind="sambay", layers=layers)
    with pytest.raises(CrossedgeError, match="kind must be one of"):
        DecoderConfig(kind="mamba")
    with pytest.raises(CrossedgeError, match="unknown decoder option"):
        DecoderConfig.from_dict({"kind": "plain", "depth": 3})
    assert DecoderConfig.from_dict(TINY.to_dict()) == TINY


def test_gmu_gates_the_memory_element_wise_per_token():
    torch.manual_seed(0)
    unit = GatedMemoryUnit(16, 12)
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 5, 12)

    class Step:
        pass

    step = Step()
    step.memory = memory
    y = unit(x, None, step)
    assert y.shape == (2, 5, 16)
    assert [p.shape for p in unit.parameters()] == [(12, 16), (16, 12)]  # W_in: d -> inner, W_out: inner -> d
    expected = (memory * torch.nn.functional.silu(x @ unit.gate.weight.T)) @ unit.out.weight.T
    torch.testing.assert_close(y, expected)
    step.memory = torch.zeros_like(memory)
    assert torch.equal(unit(x, None, step), torch.zeros_like(y))  # nothing passes without memory
    changed = memory.clone()
    changed[:, 2] += 1.0
    step.memory = changed
    moved = (unit(x, None, step) - y).abs().amax(dim=(0, 2))
    assert moved[2] > 0 and torch.all(moved[[0, 1, 3, 4]] == 0)  # no mixing across tokens


@pytest.mark.parametrize("chunk", [1, 4, 32])
def test_linear_scan_matches_the_recurrence(chunk):
    torch.manual_seed(1)
    log_decay, inputs, initial = -torch.rand(2, 37, 5) * 3, torch.randn(2, 37, 5), torch.randn(2, 5)
    expected, state = [], initial
    for t in range(37):
        state = log_decay[:, t].exp() * state + inputs[:, t]
        expected.append(state)
    torch.testing.assert_close(linear_scan(log_decay, inputs, initial, chunk=chunk), torch.stack(expected, 1))


def test_matched_pair_has_equal_parameters_within_one_percent():
    for base in (TINY, DecoderConfig(kind="plain"), DecoderConfig(kind="plain", d_model=96, layers=6, heads=3)):
        plain, hybrid = matched_pair(base)
        assert plain.kind == "plain" and hybrid.kind == "sambay"
        assert parameter_count(plain) == parameter_count(replace(base, kind="plain"))
        assert hybrid.mlp_hidden > plain.mlp_hidden  # the cross-decoder's layers are lighter
        assert abs(parameter_count(hybrid) - parameter_count(plain)) / parameter_count(plain) < 0.01
        assert parameter_count(hybrid) == sum(p.numel() for p in ByteDecoder(hybrid).parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_matches_the_full_forward(kind):
    model = tiny(kind)
    ids = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, capacity=4)  # smaller than needed: the KV buffers must grow
        pieces = [model(ids[:, :7], cache), model(ids[:, 7:12], cache)]
        pieces += [model(ids[:, t : t + 1], cache) for t in range(12, 23)]
        one_by_one = model.new_cache(2, capacity=23)
        steps = [model(ids[:, t : t + 1], one_by_one) for t in range(23)]
    assert cache.length == one_by_one.length == 23
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_cross_decoder_reads_the_shared_cache_and_keeps_none_of_its_own():
    model = tiny("sambay")
    kinds = model.config.layer_kinds
    cache = model.new_cache(1, capacity=16)
    for kind, state in zip(kinds, cache.layers, strict=True):
        assert (state is None) == (kind in ("xattn", "gmu"))
    for block, kind in zip(model.blocks, kinds, strict=True):
        if kind == "xattn":
            assert isinstance(block.mixer, CrossAttention)
            assert {n for n, _ in block.mixer.named_parameters()} == {"query.weight", "out.weight"}  # no K, V
    full = kinds.index("full")
    seen = []

    def capture(module, args):
        seen.append(args[2].shared[0].untyped_storage().data_ptr())

    hooks = [
        b.mixer.register_forward_pre_hook(capture) for b, k in zip(model.blocks, kinds, strict=True) if k == "xattn"
    ]
    try:
        with torch.no_grad():
            model(TEXT[None, :10], cache)
            model(TEXT[None, 10:11], cache)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and set(seen) == {cache.layers[full].key_buffer.untyped_storage().data_ptr()}


@pytest.mark.parametrize("kind", KINDS)
def test_cache_grows_by_the_full_attention_layers_kv_only(kind):
    model = tiny(kind)
    c = model.config
    sizes, states = {}, {}
    for length in (20, 60):
        cache = model.new_cache(1, capacity=length)
        with torch.no_grad():
            model(TEXT[None, : length - 5], cache)
            for t in range(length - 5, length):
                model(TEXT[None, t : t + 1], cache)
        size = cache.nbytes()
        assert size == cache.used_bytes()  # allocated exactly what was used
        sizes[length], states[length] = size["kv"], size["state"]
    kv_layers = sum(k in ("attn", "full") for k in c.layer_kinds)
    assert kv_layers == (c.layers if kind == "plain" else 1)
    per_token_one_layer = 2 * c.d_model * 4  # keys and values, float32
    assert sizes[60] - sizes[20] == 40 * kv_layers * per_token_one_layer
    assert states[60] == states[20]  # recurrent and sliding-window state is fixed in size
    assert (states[20] > 0) == (kind == "sambay")


def test_decode_costs_reports_interleaved_timings_and_measured_bytes():
    models = [tiny("plain"), tiny("sambay")]
    costs = decode_costs(models, context_of(TEXT, 40), rounds=2, repeats=3, warmup=1)
    assert [c.kind for c in costs] == ["plain", "sambay"]
    for cost in costs:
        assert cost.repeats == 6 and cost.cache_length == 40 + 2 * (1 + 3)
        assert cost.decode_median_ms > 0 and cost.cache_bytes == cost.kv_bytes + cost.state_bytes
    assert costs[0].kv_bytes == TINY.layers * costs[1].kv_bytes
    assert len(context_of(TEXT[:7], 30)) == 30


def test_greedy_generation_follows_the_full_forward():
    model = tiny("sambay")
    prompt = TEXT[:9]
    out = generate(model, prompt, 6)
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids[None])[0, -1].argmax().view(1)])
    assert torch.equal(out, ids[9:])


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_training_steps_lower_the_loss(kind):
    model = tiny(kind)
    before = bits_per_byte(model, TEXT, 32)
    result = train_decoder(model, TEXT, TrainConfig(steps=25, batch_size=8, seq_len=32, lr=1e-2, warmup=3))
    assert result.final_loss < result.losses[0] - 1.0
    assert bits_per_byte(model, TEXT, 32) < before - 1.0
    assert result.tokens == 25 * 8 * 32


def test_save_and_reload_are_identical_and_mismatched_files_are_refused(tmp_path):
    model = tiny("sambay")
    path = save_decoder(model, tmp_path / "m.safetensors", record={"note": "test"})
    loaded, record = load_decoder(path)
    assert record == {"note": "test"} and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(TEXT[None, :20]), model(TEXT[None, :20]))
    with pytest.raises(CrossedgeError, match="holds a decoder"):
        load_decoder(path, config=replace(model.config, window=5))
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CrossedgeError, match="not a gmu decoder"):
        load_decoder(foreign)
    with pytest.raises(CrossedgeError, match="not a gmu decoder written by crossedge"):
        save_decoder(model, foreign)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CrossedgeError, match="not a gmu decoder"):
        load_decoder(tmp_path / "notes.txt")
    # a gmu file whose tensors do not fit the config it claims
    plain = tiny("plain")
    tensors = {k: v.contiguous() for k, v in plain.state_dict().items()}
    metadata = {"format": "crossedge.ondevice.gmu/1", "config": json.dumps(model.config.to_dict())}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(CrossedgeError, match="does not match its own config"):
        load_decoder(tmp_path / "bad.safetensors")
    assert check_writable(path) == path  # our own file may be replaced
    with pytest.raises(CrossedgeError, match="no decoder"):
        load_decoder(tmp_path / "missing.safetensors")


def test_cli_trains_both_variants_evaluates_and_generates(tmp_path):
    runner = CliRunner()
    options = ["--steps", "3", "--d-model", "16", "--layers", "4", "--heads", "2", "--mlp-hidden", "24"]
    options += ["--seq-len", "16", "--batch-size", "2", "--window", "4", "--threads", "1"]
    paths = {}
    for variant in KINDS:
        paths[variant] = tmp_path / f"{variant}.safetensors"
        result = runner.invoke(gmu, ["train", "--variant", variant, "--out", str(paths[variant]), *options])
        assert result.exit_code == 0, result.output
        assert "held-out" in result.output and paths[variant].is_file()
    out = tmp_path / "eval.json"
    result = runner.invoke(
        gmu,
        ["eval", "--model", str(paths["plain"]), "--model", str(paths["sambay"]), "--contexts", "16,32"]
        + ["--rounds", "1", "--repeats", "2", "--seq-len", "16", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [m["kind"] for m in data["models"]] == ["plain", "sambay"]
    assert (
        abs(data["models"][0]["parameters"] - data["models"][1]["parameters"]) / data["models"][0]["parameters"] < 0.03
    )
    by = {(r["kind"], r["context"]): r for r in data["decode"]}
    assert by[("plain", 32)]["kv_bytes"] == 4 * by[("sambay", 32)]["kv_bytes"]
    result = runner.invoke(gmu, ["generate", "--model", str(paths["sambay"]), "--prompt", "def ", "--tokens", "5"])
    assert result.exit_code == 0 and result.output.startswith("def ")
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(gmu, ["train", "--variant", "plain", "--out", str(tmp_path / "keep.txt"), *options])
    assert result.exit_code != 0 and (tmp_path / "keep.txt").read_text() == "mine"


def test_benchmark_reports_both_variants_and_plots(tmp_path):
    bench = GmuBenchmark()
    report = bench.run(
        steps=2, batch_size=2, seq_len=16, d_model=16, layers=4, heads=2, mlp_hidden=24, window=4, contexts="16,48"
    )
    report.write_json(tmp_path / "gmu.json")
    models = [r for r in report.rows if r["part"] == "model"]
    assert [r["kind"] for r in models] == ["plain", "sambay"]
    assert abs(report.summary["parameter_difference"]) < 0.03
    assert report.summary["kv_bytes_ratio"] == {"16": 4.0, "48": 4.0}
    assert len([r for r in report.rows if r["part"] == "decode"]) == 4
    assert bench.plot(report, tmp_path / "gmu.png").stat().st_size > 0
