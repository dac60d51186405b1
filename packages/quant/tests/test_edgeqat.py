"""EdgeQAT: the quantized decoder trained end to end against its float self, and the cloze task that judges it."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossedge.core.errors import CrossedgeError
from crossedge.quant import QuantFormatError, load_quantized, quantize, save_quantized
from crossedge.quant.cloze import CHOICES, ClozeItem, cloze_accuracy, cloze_items, continuation_logprob
from crossedge.quant.config import parse_spec
from crossedge.quant.methods.edgeqat import (
    attention_map_loss,
    eager_attention,
    entropy_loss,
    training_windows,
)
from crossedge.quant.testing import QuantizerConformance

QUICK = "steps=2,block_steps=1,seq_len=16"


class TestEdgeQATW8A8(QuantizerConformance):
    spec = f"edgeqat:{QUICK},matmul=int8pack-bf16"
    tolerance = 0.05


class TestEdgeQATW4A8(QuantizerConformance):
    spec = f"edgeqat:weight_bits=4,group_size=32,{QUICK}"
    tolerance = 0.15


def _relative_error(model, reference, ids):
    with torch.no_grad():
        out = model(ids).logits
    return float((out - reference).norm() / reference.norm())


def test_training_lowers_the_logit_error_and_leaves_the_float_model_alone(quant_plugin, tiny_lm, sample_ids):
    model, _ = tiny_lm
    with torch.no_grad():
        reference = model(sample_ids).logits
    spec = "edgeqat:weight_bits=4,group_size=32,block_steps=0,seq_len=64,weight_lr=1e-4,range_lr=1e-3"
    start = quantize(copy.deepcopy(model), spec + ",steps=0", calibration=[sample_ids])
    trained = quantize(copy.deepcopy(model), spec + ",steps=40", calibration=[sample_ids])
    assert "training_first" not in start.details
    assert set(trained.details["training_last"]) == {"kd", "attention", "entropy"}
    assert trained.details["training_last"]["kd"] < trained.details["training_first"]["kd"]
    err_start = _relative_error(start.model, reference, sample_ids)
    assert _relative_error(trained.model, reference, sample_ids) < 0.8 * err_start
    # the teacher is a copy: the model given keeps no grads, its attention implementation is restored
    assert all(p.grad is None for p in trained.model.parameters())
    assert trained.model.config._attn_implementation == start.model.config._attn_implementation


def test_saved_model_reloads_bit_identical(quant_plugin, fresh_lm, sample_ids, tmp_path):
    model, tokenizer = fresh_lm
    result = quantize(model, f"edgeqat:weight_bits=4,group_size=32,{QUICK}", calibration=[sample_ids])
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    loaded = load_quantized(folder)
    with torch.no_grad():
        assert torch.equal(result.model(sample_ids).logits, loaded(sample_ids).logits)
    kinds = {e["kind"] for e in json.loads((folder / "quantization.json").read_text())["modules"].values()}
    assert kinds == {"w4a8_static"}


def test_a_mismatched_file_is_refused(quant_plugin, fresh_lm, sample_ids, tmp_path):
    model, tokenizer = fresh_lm
    result = quantize(model, f"edgeqat:{QUICK}", calibration=[sample_ids])
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("o_proj.inv_smooth"))
    tensors[name] = tensors[name][:5].clone()
    save_file(tensors, str(weights))
    data = json.loads((folder / "quantization.json").read_text())
    data["weights"] = {"file": "model.safetensors"}  # as if someone else rewrote the file and its record
    (folder / "quantization.json").write_text(json.dumps(data))
    with pytest.raises(QuantFormatError, match=f"tensor '{name}'.*shape"):
        load_quantized(folder)


def test_losses_are_zero_at_the_teacher_and_grow_away_from_it():
    torch.manual_seed(0)
    maps = [torch.softmax(torch.randn(1, 2, 5, 5), -1) for _ in range(3)]
    assert float(attention_map_loss(maps, maps)) == pytest.approx(0.0, abs=1e-6)
    shuffled = [m.flip(-1) for m in maps]
    assert float(attention_map_loss(shuffled, maps)) > 0.05
    q = torch.randn(1, 7, 8)
    teacher = [(q, 2)]
    assert float(entropy_loss([(q, 2)], teacher)) == 0.0
    assert float(entropy_loss([(q * 3, 2)], teacher)) == 0.0  # wider than the teacher is not rewarded
    narrowed = q.clone()
    narrowed[..., :4] *= 0.5  # the first head loses half its spread: log 2 below the teacher, the second none
    assert float(entropy_loss([(narrowed, 2)], teacher)) == pytest.approx(0.5 * math.log(2.0), rel=1e-4)


def test_training_windows_are_seeded_and_cut_from_the_batches():
    batches = [torch.arange(100)[None], torch.arange(100, 120)[None]]
    a = training_windows(batches, 16, 12, seed=3)
    assert [w.tolist() for w in a] == [w.tolist() for w in training_windows(batches, 16, 12, seed=3)]
    assert [w.tolist() for w in a] != [w.tolist() for w in training_windows(batches, 16, 12, seed=4)]
    for w in a:
        assert w.shape == (1, 16)
        assert torch.equal(w[0], torch.arange(int(w[0, 0]), int(w[0, 0]) + 16))  # consecutive tokens of one row
    with pytest.raises(CrossedgeError, match="token ids"):
        training_windows([torch.randn(1, 10)], 8, 2, seed=0)


def test_eager_attention_is_restored_after_an_error(tiny_lm):
    model = copy.deepcopy(tiny_lm[0])
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError), eager_attention(model):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("boom")
    assert model.config._attn_implementation == before


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("edgeqat:seq_len=4", "seq_len must be at least 8"),
        ("edgeqat:block_steps=-1", "block_steps must be"),
        ("edgeqat:weight_lr=1.5", "weight_lr must be"),
        ("edgeqat:attention=-1", "attention must be"),
        ("edgeqat:entropy=-0.1", "entropy must be"),
        ("edgeqat:weight_bits=2", "weight_bits must be 4 or 8"),
    ],
)
def test_config_errors_say_what_to_change(quant_plugin, spec, message):
    with pytest.raises(CrossedgeError, match=message):
        parse_spec(spec)


def test_the_attention_loss_needs_a_transformers_decoder(quant_plugin):
    model = torch.nn.Sequential(torch.nn.Linear(16, 16))
    with pytest.raises(CrossedgeError, match="attention=0"):
        quantize(model, "edgeqat:steps=1", calibration=[torch.randn(2, 16)])


TEXT = (
    " ".join(
        f"Sentence number {i} tells the reader that the {w} keeps its promise today."
        for i, w in enumerate(["river"] * 12)
    )
    + " Other words like garden, window, pocket, ladder, summer, candle, marble, button, wonder, silver, basket."
)


def test_cloze_items_blank_the_last_word_among_similar_length_candidates():
    items = cloze_items(TEXT, 5, seed=0)
    assert len(items) == 5
    for item in items:
        assert len(item.choices) == CHOICES and len(set(item.choices)) == CHOICES
        assert item.choices[item.answer] == "today"
        assert item.context.endswith("its promise")
        assert all(abs(len(c) - len("today")) <= 1 for c in item.choices)
    assert cloze_items(TEXT, 5, seed=0) == items
    with pytest.raises(CrossedgeError, match="too few sentences"):
        cloze_items("Too short.", 3)


def test_cloze_accuracy_follows_the_models_scores(tiny_lm):
    model, tokenizer = tiny_lm
    item = ClozeItem("the cat sat on the", ("mats", "dogs", "hats", "cats"), 0)
    scores = [continuation_logprob(model, tokenizer, item.context, c) / len(c) for c in item.choices]
    best = max(range(CHOICES), key=scores.__getitem__)
    right = ClozeItem(item.context, item.choices, best)
    wrong = ClozeItem(item.context, item.choices, (best + 1) % CHOICES)
    assert cloze_accuracy(model, tokenizer, [right, wrong]) == 0.5
    assert all(s < 0 for s in scores)
