"""Lexical units for a pretrained causal LM, on tiny random Llamas."""

import pytest
import torch
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.core.testing import save_tiny_causal_lm, tiny_causal_lm
from crossedge.specdec.parallel import lexical_lm as U


@pytest.fixture
def lm():
    model, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=1, initializer_range=0.15)
    return model


def _rows(model, n=12, prompt=6, new=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, model.config.vocab_size, (n, prompt), generator=g)
    return model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )


def test_only_the_masks_and_the_top_layers_train(lm):
    units = U.LexicalUnits(lm, span=2, tuned_layers=1)
    names = set(units.trainable())
    assert "masks" in names and all(n == "masks" or n.startswith(("layers.2.", "norm.")) for n in names)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    result = U.fine_tune_units(units, _rows(lm), 6, steps=4, batch_size=4, lr=1e-2)
    assert result.steps == 4 and len(result.depth_accuracy) == 2
    changed = {k for k, v in lm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("model.layers.2.", "model.norm.")) for k in changed)
    assert not bool(torch.equal(units.masks, U.LexicalUnits(lm, span=2).masks))


def test_the_loss_reads_the_next_token_and_the_guesses_after_it(lm):
    units = U.LexicalUnits(lm, span=2, tuned_layers=0)
    rows = _rows(lm, n=2)
    with torch.no_grad():
        logits = units.logits(rows[:, :10])
        vocab = logits.shape[-1]
        nxt = torch.nn.functional.cross_entropy(logits[:, 5:10].reshape(-1, vocab), rows[:, 6:11].reshape(-1))
        guess = torch.nn.functional.cross_entropy(logits[:, 10:].reshape(-1, vocab), rows[:, 11:13].reshape(-1))
        assert float(U.unit_loss(units, rows, 6, 10)) == pytest.approx(float(nxt + guess), rel=1e-5)


def test_at_full_confidence_lexical_decoding_is_greedy_and_loose_decoding_takes_whole_runs(lm):
    units = U.LexicalUnits(lm, span=3, tuned_layers=1)
    U.fine_tune_units(units, _rows(lm), 6, steps=3, batch_size=4)
    prompt = torch.tensor([[5, 9, 13, 4, 22, 7]])
    strict = U.generate_units(units, prompt, 20, tau=1.0)
    plain = U.generate_plain(lm, prompt, 20)
    assert strict.tokens == plain.tokens and strict.forwards == plain.forwards == 20
    loose = U.generate_units(units, prompt, 20, tau=1e-9)
    assert len(loose.tokens) == 20 and loose.forwards == 1 + -(-19 // 4)
    assert U.matching_prefix(loose.tokens, plain.tokens) >= 2  # the first two tokens are the model's own


def test_units_round_trip_and_refuse_another_model(lm, tmp_path):
    units = U.LexicalUnits(lm, span=2, tuned_layers=1)
    U.fine_tune_units(units, _rows(lm), 6, steps=2, batch_size=4)
    U.save_units(units, tmp_path / "units", model_name="tiny", result=None)
    fresh, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=1, initializer_range=0.15)
    loaded = U.load_units(fresh, tmp_path / "units")
    assert torch.equal(loaded.masks, units.masks)
    assert torch.equal(fresh.model.layers[2].mlp.up_proj.weight, lm.model.layers[2].mlp.up_proj.weight)
    other, _ = tiny_causal_lm("llama", layers=3, hidden=32, seed=2, initializer_range=0.15)
    with pytest.raises(U.LexicalUnitError, match="trained for model 'tiny'"):
        U.load_units(other, tmp_path / "units")
    (tmp_path / "units" / "notes.txt").write_text("x")
    with pytest.raises(U.LexicalUnitError, match="notes.txt"):
        U.save_units(units, tmp_path / "units", model_name="tiny", result=None)


def test_the_cli_trains_and_benches_units_for_a_causal_lm(specdec_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    folder = str(save_tiny_causal_lm(tmp_path / "tiny", "llama", seed=1, initializer_range=0.15))
    runner = CliRunner()
    train = [
        "specdec",
        "train-lexical",
        "--model",
        folder,
        "--out",
        str(tmp_path / "units"),
        "--steps",
        "2",
        "--prompts",
        "8",
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "12",
        "--batch-size",
        "2",
        "--tuned-layers",
        "1",
    ]
    result = runner.invoke(build_cli(), train, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "held-out top-1 of each guess" in result.output
    bench = [
        "specdec",
        "lexical-bench",
        "--model",
        folder,
        "--units",
        str(tmp_path / "units"),
        "--taus",
        "1.0;0.3",
        "--limit-per-task",
        "1",
        "--max-new-tokens",
        "6",
        "--json",
        str(tmp_path / "lex.json"),
    ]
    result = runner.invoke(build_cli(), bench, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "lexical:tau=0.3" in result.output and (tmp_path / "lex.json").is_file()
