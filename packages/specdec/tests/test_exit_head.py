"""Exit heads: cache consistency, training mechanics, save/load and its refusals."""

import copy
import json

import pytest
import torch
from transformers import DynamicCache

from crossedge.core.testing import tiny_causal_lm
from crossedge.specdec.exit_head import (
    ExitHead,
    ExitHeadError,
    TrainConfig,
    _framing,
    collect_exit_data,
    expected_accepted_length,
    load_exit_head,
    save_exit_head,
    self_generated_sequences,
    train_exit_head,
    training_prompts,
)

TEXTS = [
    "Speculative decoding drafts several tokens cheaply and verifies them in one pass of the large model. " * 6,
    "A quantized linear layer stores int8 weights with one scale per output channel, saving memory. " * 6,
]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_causal_lm("llama", layers=3, hidden=32)


@pytest.fixture(scope="module")
def data(tiny):
    model, tokenizer = tiny
    prompts = training_prompts(tokenizer, TEXTS, 10, 12)
    sequences = self_generated_sequences(model, prompts, 8, progress=False)
    return collect_exit_data(model, sequences, [1, 2], top_k=4, progress=False)


def test_prompts_have_equal_length_and_the_instruction(tiny):
    _, tokenizer = tiny
    prompts = training_prompts(tokenizer, TEXTS, 6, 10, instruction="Summarize.")
    assert prompts.shape[0] == 6
    assert "Summarize." in tokenizer.decode(prompts[0])
    with pytest.raises(ExitHeadError, match="cuts of 10 tokens"):
        training_prompts(tokenizer, ["short"], 3, 10)


def test_several_instructions_take_turns_and_keep_one_length(tiny):
    _, tokenizer = tiny
    instructions = ["Summarize.", "Translate this text into French, keeping every technical term as it is."]
    prompts = training_prompts(tokenizer, TEXTS, 6, 10, instruction=instructions)
    assert prompts.shape[0] == 6
    short = len(training_prompts(tokenizer, TEXTS, 1, 10, instruction=instructions[0])[0])
    long = len(training_prompts(tokenizer, TEXTS, 1, 10, instruction=instructions[1])[0])
    assert long > short and prompts.shape[1] == long
    text_ids = [tokenizer(text, add_special_tokens=False).input_ids for text in TEXTS]
    for j, row in enumerate(prompts.tolist()):
        before, after = _framing(tokenizer, instructions[j % 2])
        assert row[: len(before)] == before and row[len(row) - len(after) :] == after
        passage = row[len(before) : len(row) - len(after)]
        # The shorter framing keeps more of its cut, and the cut is a run of one text's tokens.
        assert len(passage) == (10 if j % 2 else 10 + long - short)
        assert any(passage == ids[i : i + len(passage)] for ids in text_ids for i in range(len(ids) - len(passage) + 1))
    with pytest.raises(ExitHeadError, match="at least one instruction"):
        training_prompts(tokenizer, TEXTS, 2, 10, instruction=[])


def test_collected_targets_match_the_model(tiny, data):
    model, _ = tiny
    with torch.no_grad():
        logits = model(input_ids=data.input_ids[:2]).logits
    assert torch.equal(logits.argmax(-1), data.top_ids[:2, :, 0])
    assert torch.allclose(data.top_probs.sum(-1), torch.ones(data.top_probs.shape[:2]))
    assert data.hidden[1].shape == (*data.input_ids.shape, 32)


def test_head_with_cache_matches_head_without(tiny, data):
    model, _ = tiny
    head = ExitHead(model, 2).eval()
    hidden, ids = data.hidden[2][:1], data.input_ids[:1]
    length = ids.shape[1]
    positions = torch.arange(length).unsqueeze(0)
    with torch.no_grad():
        full = head(hidden, ids, positions)
        cache = DynamicCache()
        first = head(hidden[:, :5], ids[:, :5], positions[:, :5], cache)
        rest = [head(hidden[:, t : t + 1], ids[:, t : t + 1], positions[:, t : t + 1], cache) for t in range(5, length)]
    stepwise = torch.cat([first, *rest], dim=1)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-5)


def test_training_lowers_the_loss_and_changes_only_the_head(tiny, data):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = data.split(2)
    head, result = train_exit_head(
        model, train, 1, TrainConfig(epochs=6, batch_size=4, lr=3e-3), heldout=held, progress=False
    )
    assert result.steps == 12
    assert sum(result.history[-3:]) / 3 < sum(result.history[:3]) / 3
    assert 0.0 <= result.agreement_head <= 1.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert head.model is model


def test_save_load_round_trip_and_refusals(tiny, data, tmp_path):
    model, _ = tiny
    head = ExitHead(model, 2).eval()
    with torch.no_grad():
        head.fuse.weight.add_(0.01)
    folder = save_exit_head(head, tmp_path / "head", model_name="tiny")
    loaded = load_exit_head(model, folder)
    positions = torch.arange(data.input_ids.shape[1]).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(
            loaded(data.hidden[2][:1], data.input_ids[:1], positions),
            head(data.hidden[2][:1], data.input_ids[:1], positions),
        )
    other, _ = tiny_causal_lm("llama", layers=4, hidden=32)
    with pytest.raises(ExitHeadError, match="num_hidden_layers=3"):
        load_exit_head(other, folder)
    meta = json.loads((folder / "exit_head.json").read_text())
    meta["format_version"] = 99
    (folder / "exit_head.json").write_text(json.dumps(meta))
    with pytest.raises(ExitHeadError, match="format 99"):
        load_exit_head(model, folder)
    meta["format_version"] = 1
    (folder / "exit_head.json").write_text(json.dumps(meta))
    weights = folder / "exit_head.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ExitHeadError, match="damaged"):
        load_exit_head(model, folder)
    with pytest.raises(ExitHeadError, match="train-exit"):
        load_exit_head(model, tmp_path / "nowhere")


def test_exit_layer_bounds_and_architecture(tiny):
    model, _ = tiny
    with pytest.raises(ExitHeadError, match="between 1 and 2"):
        ExitHead(model, 3)
    gpt2, _ = tiny_causal_lm("gpt2")
    with pytest.raises(ExitHeadError, match="Llama-family"):
        ExitHead(gpt2, 1)


def test_expected_accepted_length():
    assert expected_accepted_length(0.0, 4) == 1.0
    assert expected_accepted_length(1.0, 4) == 5.0
    assert expected_accepted_length(0.5, 2) == pytest.approx(1.75)


def test_save_refuses_a_folder_with_foreign_files_and_replaces_its_own(tiny, tmp_path):
    model, _ = tiny
    head = ExitHead(model, 1).eval()
    folder = save_exit_head(head, tmp_path / "head", model_name="tiny")
    save_exit_head(head, folder, model_name="tiny")  # a head crossedge wrote may be replaced
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ExitHeadError, match="notes.txt that crossedge did not write"):
        save_exit_head(head, folder, model_name="tiny")
    assert (folder / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "exit_head.json").write_text("{}")
    with pytest.raises(ExitHeadError, match="exit_head.json that crossedge did not write"):
        save_exit_head(head, foreign, model_name="tiny")


def test_self_generated_sequences_are_cached_by_model_prompts_and_length(heads_tiny, tmp_path, monkeypatch):
    from crossedge.specdec import exit_head
    from crossedge.specdec.exit_head import cached_self_generated, self_generated_sequences, training_prompts
    from crossedge.specdec.testing import HEAD_PROMPT_TOKENS, HEAD_TEXTS

    model, tokenizer = heads_tiny
    prompts = training_prompts(tokenizer, HEAD_TEXTS, 6, HEAD_PROMPT_TOKENS)
    first = cached_self_generated(model, prompts, 5, progress=False)
    assert torch.equal(first, self_generated_sequences(model, prompts, 5, progress=False))
    files = list(exit_head.sequences_folder().glob("*.safetensors"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(exit_head, "self_generated_sequences", lambda *a, **k: calls.append(a) or first)
    assert torch.equal(cached_self_generated(model, prompts, 5, progress=False), first) and not calls
    # Another length or other prompts are other entries.
    cached_self_generated(model, prompts, 4, progress=False)
    cached_self_generated(model, prompts[:3], 5, progress=False)
    assert len(calls) == 2 and len(list(exit_head.sequences_folder().glob("*.safetensors"))) == 3
    # Other weights are another entry.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    cached_self_generated(changed, prompts, 5, progress=False)
    assert len(calls) == 3
    # A damaged file is generated again and replaced.
    files[0].write_bytes(b"not safetensors")
    calls.clear()
    assert torch.equal(cached_self_generated(model, prompts, 5, progress=False), first) and len(calls) == 1
    assert exit_head.safetensors_marker(files[0]) == exit_head.SEQUENCES_MARKER
