"""Dolphin: the borrowed encoder, memory reaching the frozen decoder, positions, training, files, items, CLI, bench."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.core.datasets import Document
from crossedge.core.testing import save_tiny_causal_lm, tiny_causal_lm
from crossedge.ondevice.dolphin.bench import DolphinBenchmark
from crossedge.ondevice.dolphin.cli import dolphin
from crossedge.ondevice.dolphin.data import (
    HAND_QUESTIONS,
    ItemTemplates,
    load_split,
    question_items,
    recall_items,
    tokenize_stream,
)
from crossedge.ondevice.dolphin.evaluation import gap_closed, score_item, summarize
from crossedge.ondevice.dolphin.latency import parse_lengths, prefill_rows
from crossedge.ondevice.dolphin.model import (
    ContextEncoder,
    DolphinConfig,
    DolphinReader,
    load_compressor,
    new_compressor,
    save_compressor,
)
from crossedge.ondevice.dolphin.training import TrainConfig, answer_loss, train_compressor

OPTIONS = {"encoder_layers": 1, "ratio": 8, "pool_heads": 2, "projector_hidden": 24}
TEXT = (
    "the quick brown fox jumps over the lazy dog; the lazy dog sleeps while the quick fox runs. "
    "a stitch in time saves nine, and nine lives has the cat. "
)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_causal_lm("llama")
    docs = [Document(f"doc/{i}", TEXT * 3 + f"number {i} " * 5, "test") for i in range(6)]
    return model, tokenizer, tokenize_stream(docs, tokenizer), ItemTemplates(tokenizer)


def reader_for(model, seed: int = 0, **options) -> DolphinReader:
    return DolphinReader(model, new_compressor(model, "tiny", seed=seed, **{**OPTIONS, **options}))


def test_config_errors_are_one_line_crossedge_errors(tiny):
    model = tiny[0]
    for bad, match in (
        ({"ratio": 0}, "ratio must be at least 1"),
        ({"encoder_layers": 3}, "between 0 and the decoder's 2"),
        ({"pool_heads": 3}, "pool heads must divide the decoder width 32"),
    ):
        with pytest.raises(CrossedgeError, match=match) as info:
            new_compressor(model, "tiny", **{**OPTIONS, **bad})
        assert "\n" not in str(info.value)
    with pytest.raises(CrossedgeError, match="unknown dolphin option"):
        DolphinConfig.from_dict({"hidden_size": 32, "decoder_layers": 2, "vocab_size": 259, "chunk": 4})
    with pytest.raises(CrossedgeError, match="comma-separated integers"):
        parse_lengths("512,lots")
    with pytest.raises(CrossedgeError, match="recall fraction"):
        TrainConfig(recall_fraction=1.5)
    config = DolphinConfig.for_decoder(model, "tiny", **OPTIONS)
    assert DolphinConfig.from_dict(config.to_dict()) == config
    assert [config.memory_length(n) for n in (1, 8, 9, 50)] == [1, 1, 2, 7]


def test_encoder_runs_only_the_borrowed_layers_and_shares_their_weights(tiny):
    model = tiny[0]
    calls = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, layer in enumerate(model.model.layers)
    ]
    try:
        encoder = ContextEncoder(model, 1)
        features = encoder(torch.arange(20)[None])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0] and features.shape == (1, 20, 32)
    assert encoder.view.layers[0] is model.model.layers[0] and len(model.model.layers) == 2
    assert model.config.num_hidden_layers == 2  # the view's config is its own
    assert ContextEncoder(model, 0)(torch.arange(5)[None]).shape == (1, 5, 32)


def test_memory_tokens_reach_the_frozen_decoder(tiny):
    model, _, stream, templates = tiny
    reader = reader_for(copy.deepcopy(model))
    a, b = stream.ids[:48], stream.ids[100:148]
    question = stream.ids[200:210]
    with torch.no_grad():
        memory_a, memory_b = reader.memory(a[None]), reader.memory(b[None])
        assert memory_a.shape == (1, math.ceil(48 / 8), 32)
        logits_a = reader.logits(reader.inputs_embeds(memory_a, question[None]))[:, -10:]
        logits_b = reader.logits(reader.inputs_embeds(memory_b, question[None]))[:, -10:]
    assert not torch.allclose(logits_a, logits_b, atol=1e-4)  # another context, other answers


def test_gradient_reaches_the_compressor_only(tiny):
    model, tokenizer, stream, templates = tiny
    reader = reader_for(copy.deepcopy(model), seed=1)
    before = {k: v.clone() for k, v in reader.decoder.state_dict().items()}
    items = [templates.recall(stream.ids[s : s + 48], 10, 4, 8) for s in (0, 60)]
    memory = reader.memory(torch.stack([it.context for it in items]))
    loss, logits, mask = answer_loss(reader, memory, items, tokenizer.pad_token_id)
    assert int(mask.sum()) == 16  # the answers' tokens, and nothing else, carry labels
    optimizer = torch.optim.SGD(reader.compressor.parameters(), lr=0.5)
    loss.backward()
    grads = {n: p.grad for n, p in reader.compressor.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(grads[n].abs().sum() > 0 for n in ("down.weight", "skip.weight", "scores.weight", "scale"))
    assert all(p.grad is None and not p.requires_grad for p in reader.decoder.parameters())
    optimizer.step()
    after = reader.decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_positions_match_between_memory_and_truncation(tiny):
    model, _, stream, templates = tiny
    reader = reader_for(model)
    untrained = copy.deepcopy(reader.compressor)
    item = templates.recall(stream.ids[:50], 20, 4, 6)
    rows = {r["condition"]: r for r in score_item(reader, item, untrained=untrained)}
    slots = math.ceil(50 / 8)
    assert rows["memory"]["positions"] == slots + len(item.prompt) == rows["truncated"]["positions"]
    assert rows["memory-untrained"]["positions"] == rows["memory"]["positions"]
    assert rows["full"]["positions"] == 50 + len(item.prompt) and rows["none"]["positions"] == len(item.prompt)
    assert rows["memory"]["nll"] == pytest.approx(rows["memory-untrained"]["nll"])  # same weights so far
    summary = summarize(score_item(reader, item, ("full", "memory", "truncated")))
    assert set(summary) == {"full", "memory", "truncated", "full/recall", "memory/recall", "truncated/recall"}
    fake = {"full": {"nll": 1.0}, "memory": {"nll": 2.0}, "truncated": {"nll": 3.0}}
    assert gap_closed(fake) == pytest.approx(0.5)
    with pytest.raises(CrossedgeError, match="unknown condition"):
        score_item(reader, item, ("full", "oracle"))


def test_training_lowers_the_loss_and_leaves_the_decoder_alone(tiny):
    model, _, stream, templates = tiny
    reader = reader_for(copy.deepcopy(model))
    config = TrainConfig(
        steps=30,
        batch_size=4,
        windows=2,
        context_tokens=48,
        prefix_tokens=4,
        answer_tokens=8,
        recall_fraction=0.0,  # continuations of two fixed windows: a random tiny decoder can be steered to them
        lr=3e-2,
        warmup=2,
    )
    result = train_compressor(reader, stream, templates, config)
    assert result.decoder_unchanged and len(result.losses) == 30
    assert result.final_loss < result.first_loss - 0.05


def test_save_reload_bit_identical_and_refusals(tiny, tmp_path):
    model = tiny[0]
    compressor = new_compressor(model, "tiny", seed=3, **OPTIONS)
    path = save_compressor(compressor, tmp_path / "c.safetensors", record={"note": 1})
    loaded = load_compressor(path, model)
    assert loaded.config == compressor.config
    assert all(
        torch.equal(a, b) for a, b in zip(compressor.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    save_compressor(loaded, path)  # ours: replacing it is fine
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("mine")
    with pytest.raises(CrossedgeError, match="not a dolphin memory compressor written by crossedge"):
        save_compressor(compressor, foreign)
    assert foreign.read_text() == "mine"
    with pytest.raises(CrossedgeError, match="is not a dolphin memory compressor"):
        load_compressor(foreign)
    wider, _ = tiny_causal_lm("llama", hidden=48)
    with pytest.raises(CrossedgeError, match="trained for 'tiny'"):
        load_compressor(path, wider)
    from safetensors.torch import save_file

    lying = tmp_path / "lying.safetensors"
    config = {**compressor.config.to_dict(), "projector_hidden": 40}
    tensors = {k: v.contiguous() for k, v in compressor.state_dict().items()}
    save_file(tensors, str(lying), metadata={"format": "crossedge.ondevice.dolphin/1", "config": json.dumps(config)})
    with pytest.raises(CrossedgeError, match="does not match its own config"):
        load_compressor(lying)


def test_items_hold_their_answers(tiny):
    _, tokenizer, stream, templates = tiny
    items = recall_items(stream, templates, 5, context_tokens=40, prefix_tokens=4, answer_tokens=6)
    for item in items:
        at = item.answer_at
        assert torch.equal(item.answer, item.context[at + 4 : at + 10]) and len(item.context) == 40
    with pytest.raises(CrossedgeError, match="cannot hold"):
        recall_items(stream, templates, 1, context_tokens=8, prefix_tokens=4, answer_tokens=6)
    split = load_split(("pydoc-topics",))
    assert not {d.id for d in split.train} & {d.id for d in split.test}
    assert {q[0] for q in HAND_QUESTIONS} <= {d.id for d in split.test}
    held = [d for d in split.test if d.id in {q[0] for q in HAND_QUESTIONS}]
    questions = question_items(tokenize_stream(held, tokenizer), templates, context_tokens=256)
    assert len(questions) >= len(HAND_QUESTIONS) - 2
    for item in questions:
        answer = tokenizer.decode(item.answer).strip()
        assert " ".join(answer.split()) in " ".join(tokenizer.decode(item.context).split())


def test_prefill_rows_time_every_mode(tiny):
    model, _, stream, _ = tiny
    reader = reader_for(model)
    rows = prefill_rows(reader, [stream.ids[:32], stream.ids[:64]], stream.ids[:5], rounds=2, warmup=0)
    by = {(r["mode"], r["context"]): r for r in rows}
    assert by[("full", 64)]["decoder_positions"] == 69 and by[("memory", 64)]["decoder_positions"] == 8 + 5
    assert by[("truncated", 64)]["decoder_positions"] == by[("memory", 64)]["decoder_positions"]
    assert all(r["samples"] == 2 and r["prefill_median_ms"] > 0 and r["cpu_median_ms"] >= 0 for r in rows)


def test_cli_trains_saves_evaluates_and_refuses_foreign_files(tmp_path):
    folder = save_tiny_causal_lm(tmp_path / "tiny")
    runner = CliRunner()
    out = tmp_path / "c.safetensors"
    small = ["--decoder", str(folder), "--context-tokens", "64", "--threads", "1"]
    shape = ["--encoder-layers", "1", "--ratio", "16", "--pool-heads", "2", "--projector-hidden", "16"]
    result = runner.invoke(dolphin, ["train", *small, *shape, "--out", str(out), "--steps", "2", "--windows", "2"])
    assert result.exit_code == 0, result.output
    assert "64 tokens -> 4 memory embeddings" in result.output and out.is_file()
    report = tmp_path / "eval.json"
    args = ["eval", *small, "--model", str(out), "--recall", "2", "--contexts", "64,96", "--rounds", "1"]
    result = runner.invoke(dolphin, [*args, "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["quality"]["memory"]["positions"] == data["quality"]["truncated"]["positions"]
    assert {r["mode"] for r in data["prefill"]} == {"full", "truncated", "memory"}
    keep = tmp_path / "keep.safetensors"
    keep.write_text("mine")
    result = runner.invoke(dolphin, ["train", *small, "--out", str(keep), "--steps", "1"])
    assert result.exit_code != 0 and keep.read_text() == "mine"
    assert isinstance(result.exception, CrossedgeError)


def test_benchmark_reports_every_condition_and_plots(tmp_path):
    folder = save_tiny_causal_lm(tmp_path / "tiny")
    bench = DolphinBenchmark()
    report = bench.run(
        decoder=str(folder),
        context_tokens=64,
        encoder_layers=1,
        pool_heads=2,
        projector_hidden=16,
        steps=2,
        windows=2,
        recall=2,
        contexts="64,128",
        rounds=1,
        threads=1,
        cache=False,
    )
    report.write_json(tmp_path / "dolphin.json")
    assert set(report.summary["quality"]) >= {"full", "memory", "memory-untrained", "truncated", "none"}
    assert report.summary["memory_slots"] == 4 and report.summary["decoder_unchanged"]
    assert len([r for r in report.rows if r["part"] == "prefill"]) == 6
    assert bench.plot(report, tmp_path / "dolphin.png").stat().st_size > 0
