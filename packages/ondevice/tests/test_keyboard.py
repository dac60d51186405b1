"""Keyboard decoding: layout and tap noise, lexicon trie, character model, beam search, budget, files, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.ondevice.keyboard.budget import KeystrokeCost, choose_beam, measure_keystroke_costs
from crossedge.ondevice.keyboard.cli import keyboard
from crossedge.ondevice.keyboard.decoder import BeamDecoder, DecoderConfig
from crossedge.ondevice.keyboard.evaluation import type_messages
from crossedge.ondevice.keyboard.layout import ALPHABET, QWERTY
from crossedge.ondevice.keyboard.lexicon import Lexicon, words_of
from crossedge.ondevice.keyboard.model import (
    CharModel,
    CharModelConfig,
    CharModelRuntime,
    KeyboardModel,
    check_writable,
    encode,
)
from crossedge.ondevice.keyboard.noise import TapNoise, TapSimulator
from crossedge.ondevice.keyboard.scorers import CharModelScorer, MixedScorer, UnigramScorer
from crossedge.ondevice.keyboard.training import TrainConfig, train_char_model

TEXT = (
    "the quick brown fox jumps over the lazy dog while the cat sleeps on the mat and the dog "
    "barks at the fox then the fox runs away from the dog into the woods where the owl hoots "
    "at night and the moon shines over the quiet woods the end of the story is near the house"
)
TINY = CharModelConfig(embed=8, hidden=16)


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.from_words(words_of(TEXT))


@pytest.fixture(scope="module")
def char_model() -> CharModel:
    torch.manual_seed(0)
    return CharModel(TINY).eval()


def scorers(lexicon, char_model):
    return [
        UnigramScorer(lexicon),
        CharModelScorer(char_model),
        MixedScorer(CharModelScorer(char_model), UnigramScorer(lexicon), 0.5),
    ]


def test_layout_puts_qwerty_keys_at_their_staggered_centres():
    assert np.allclose(QWERTY.centre("q"), (0.5, 0.5))
    assert np.allclose(QWERTY.centre("a"), (0.75, 1.5))
    assert np.allclose(QWERTY.centre("m"), (7.25, 2.5))
    for char in ALPHABET:
        centre = QWERTY.centre(char)
        assert QWERTY.nearest_key(centre) == char
        assert ALPHABET[int(np.argmax(QWERTY.log_likelihood(centre, 0.4)))] == char
    with pytest.raises(CrossedgeError, match="not a letter"):
        QWERTY.centre("1")


def test_tap_simulator_is_seeded_and_its_noise_scale_changes_the_error():
    words = words_of(TEXT) * 3
    same = [TapSimulator(TapNoise(0.5), seed=3).taps("quick") for _ in range(2)]
    assert np.array_equal(same[0], same[1])
    assert not np.array_equal(same[0], TapSimulator(TapNoise(0.5), seed=4).taps("quick"))

    def literal_error(sigma: float) -> float:
        sim = TapSimulator(TapNoise(sigma), seed=0)
        return float(np.mean(["".join(QWERTY.nearest_key(p) for p in sim.taps(w)) != w for w in words]))

    errors = [literal_error(s) for s in (0.05, 0.3, 0.7)]
    assert errors[0] == 0.0 and errors[0] < errors[1] < errors[2]
    lengths = {
        noise: np.mean([len(TapSimulator(TapNoise(0.3, *noise), seed=0).taps(w)) for w in words])
        for noise in [(0.0, 0.0), (0.3, 0.0), (0.0, 0.3)]
    }
    assert lengths[(0.3, 0.0)] < lengths[(0.0, 0.0)] == np.mean([len(w) for w in words]) < lengths[(0.0, 0.3)]
    with pytest.raises(CrossedgeError, match="sigma"):
        TapNoise(0.0)


def test_trie_prefix_table_chains_to_unigram_frequency_and_top_words_share_the_prefix(lexicon):
    table = lexicon.prefix_table()
    for word in lexicon.words:
        node, total = 0, 0.0
        for char in word:
            total += table[node, ord(char) - 97]
            node = lexicon.children[node, ord(char) - 97]
        assert lexicon.word_at[node] == lexicon.index[word]
        assert math.isclose(total + table[node, -1], lexicon.unigram_logprob(word), abs_tol=1e-9)
    for prefix in ["t", "th", "fo", "q"]:
        node = lexicon.node_of(prefix)
        ids = [i for i in lexicon.top_words[node] if i >= 0]
        assert ids and all(lexicon.words[i].startswith(prefix) for i in ids)
        assert list(lexicon.counts[ids]) == sorted(lexicon.counts[ids], reverse=True)
    assert lexicon.node_of("zzz") == -1


def test_beam_search_only_ever_outputs_lexicon_words(lexicon, char_model):
    rng = np.random.default_rng(0)
    configs = [DecoderConfig(beam=1), DecoderConfig(beam=4, skip=0.05, extra=0.05, sigma=0.8)]
    for scorer in scorers(lexicon, char_model):
        for config in configs:
            decoder = BeamDecoder(lexicon, scorer, config)
            for _ in range(15):
                taps = rng.uniform((0, 0), (10, 3), size=(int(rng.integers(1, 13)), 2))
                decoder.reset_word()
                for point in taps:
                    decoder.tap(point)
                    assert all(s.word in lexicon for s in decoder.completions(3))
                    # a tap adds at most one letter, two where a skipped letter may precede it
                    assert lexicon.depth[decoder.nodes].max() <= decoder.taps * (2 if config.skip else 1)
                out = decoder.finish(3)
                assert out and all(s.word in lexicon for s in out)
                assert [s.score for s in out] == sorted((s.score for s in out), reverse=True)


def test_exact_taps_decode_to_the_word_and_the_baseline_prefers_frequent_words(lexicon, char_model):
    for scorer in scorers(lexicon, char_model):
        decoder = BeamDecoder(lexicon, scorer, DecoderConfig(beam=8, sigma=0.2))
        for word in ["quick", "woods", "the", "story"]:
            assert decoder.decode(np.array([QWERTY.centre(c) for c in word]))[0].word == word
    # halfway between t and y: equally likely spatially, so frequency decides ("the" is far more common)
    baseline = BeamDecoder(lexicon, UnigramScorer(lexicon), DecoderConfig(beam=8, sigma=0.5))
    taps = [(QWERTY.centre("t") + QWERTY.centre("y")) / 2, QWERTY.centre("h"), QWERTY.centre("e")]
    assert baseline.decode(np.array(taps))[0].word == "the"


def test_skipped_and_stray_taps_are_recovered_when_the_decoder_models_them(lexicon):
    word = "story"
    skipped = np.array([QWERTY.centre(c) for c in "stoy"])  # the r was skipped
    stray = np.array([QWERTY.centre(c) for c in "stkory"])  # a stray tap on k
    aware = BeamDecoder(lexicon, UnigramScorer(lexicon), DecoderConfig(beam=8, sigma=0.3, skip=0.05, extra=0.05))
    assert aware.decode(skipped)[0].word == word
    assert aware.decode(stray)[0].word == word
    aware.decode(skipped)
    assert lexicon.word_at[aware.nodes].tolist().count(lexicon.index[word]) == 1  # ended as a word, not a guess


def test_completion_respects_the_prefix(lexicon, char_model):
    rng = np.random.default_rng(1)
    for scorer in scorers(lexicon, char_model):
        decoder = BeamDecoder(lexicon, scorer)
        for word in rng.choice(lexicon.words, size=10):
            prefix = word[: int(rng.integers(1, len(word) + 1))]
            shown = decoder.complete_prefix(prefix, k=5)
            assert shown and all(s.word.startswith(prefix) and s.word in lexicon for s in shown)
            if len([w for w in lexicon.words if w.startswith(prefix)]) <= 5:
                assert word in [s.word for s in shown]
        assert decoder.complete_prefix("zzq") == []


def test_suffix_scores_equal_the_stepwise_chain(lexicon, char_model):
    unigram = UnigramScorer(lexicon)
    start = unigram.start()
    for word in ["the", "fox", "quiet"]:
        assert math.isclose(
            unigram.suffix_logprob(start, np.array([0]), [word])[0], lexicon.unigram_logprob(word), abs_tol=1e-9
        )
    model = CharModelScorer(char_model)
    model.commit("the")
    state = model.start()
    suffixes = ["fox", "", "a", "quiet"]
    got = model.suffix_logprob(state, np.zeros(len(suffixes), dtype=np.int64), suffixes)
    for value, suffix in zip(got, suffixes, strict=True):
        s, total = state, 0.0
        for char in suffix:
            total += s.logp[0, ord(char) - 97]
            s = model.extend(s, np.array([0]), np.array([ord(char) - 97]))
        assert math.isclose(value, total + s.logp[0, -1], rel_tol=1e-5)
    # the memoized numpy path against the torch model reading " the fox " in one go
    ids = encode(" the fox ")
    with torch.no_grad():
        logp = torch.log_softmax(char_model(torch.tensor([ids]))[0][0], dim=-1).numpy()
    direct = sum(logp[t, ids[t + 1]] for t in range(4, len(ids) - 1))  # after "the ": f, o, x, then the space
    assert math.isclose(got[0], direct, rel_tol=1e-5)
    mixed = MixedScorer(CharModelScorer(char_model), unigram, 0.25)
    mixed.commit("the")
    both = mixed.suffix_logprob(mixed.start(), np.array([0]), ["fox"])[0]
    assert math.isclose(both, 0.25 * got[0] + 0.75 * lexicon.unigram_logprob("fox"), rel_tol=1e-5)


def test_numpy_runtime_matches_the_torch_model():
    torch.manual_seed(2)
    model = CharModel(CharModelConfig(embed=8, hidden=12, layers=2)).eval()
    ids = encode("the fox ran")
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)[0].numpy()
    runtime = CharModelRuntime(model)
    state, steps = runtime.initial_state(), []
    for symbol in ids:
        logp, state = runtime.step(state, np.array([symbol]))
        steps.append(logp[0])
    assert np.allclose(np.array(steps), reference, atol=1e-5)


def test_character_model_trains_with_loss_going_down():
    docs = [words_of(TEXT)] * 4
    model, result = train_char_model(docs, TrainConfig(steps=40, batch_size=8, window=24, lr=1e-2), TINY)
    assert len(result.losses) == 40
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.3
    assert result.losses[0] == pytest.approx(math.log(27), abs=0.3)  # starts near uniform over 27 symbols


def test_choose_beam_takes_the_widest_width_within_the_budget_and_is_monotone():
    rng = np.random.default_rng(0)
    widths = [1, 2, 4, 8, 16, 32]
    for _ in range(50):
        costs = {w: float(c) for w, c in zip(widths, rng.uniform(0.1, 3.0, size=len(widths)), strict=True)}
        chosen = []
        for budget in sorted(rng.uniform(0.1, 3.5, size=8)):
            try:
                beam = choose_beam(costs, budget)
            except CrossedgeError:
                assert min(costs.values()) > budget
                chosen.append(0)
                continue
            assert costs[beam] <= budget
            assert all(costs[w] > budget for w in widths if w > beam)
            chosen.append(beam)
        assert chosen == sorted(chosen)  # a larger budget never buys a narrower beam
    table = [KeystrokeCost(1, 0.001, 0.002, 10), KeystrokeCost(4, 0.0015, 0.004, 10)]
    assert choose_beam(table, 0.003) == 1
    assert choose_beam(table, 0.003, statistic="median") == 4
    with pytest.raises(CrossedgeError, match="no beam width fits"):
        choose_beam(table, 0.0005)


def test_measured_keystroke_costs_feed_the_budget_choice(lexicon, char_model):
    messages = [words_of(TEXT)[:6]]
    costs = measure_keystroke_costs(
        lambda width: BeamDecoder(lexicon, CharModelScorer(char_model), DecoderConfig(beam=width)),
        messages,
        lambda: TapSimulator(TapNoise(0.4), seed=0),
        [1, 8],
    )
    assert [c.beam for c in costs] == [1, 8]
    assert all(c.keystrokes == sum(len(w) + 1 for w in messages[0]) and 0 < c.median_s <= c.p90_s for c in costs)
    budget = max(c.p90_s for c in costs) * 1.01
    assert choose_beam(costs, budget) == 8
    beam = choose_beam(costs, min(c.p90_s for c in costs) * 1.01)
    assert next(c for c in costs if c.beam == beam).p90_s <= min(c.p90_s for c in costs) * 1.01


def test_typing_metrics_count_errors_and_savings(lexicon):
    decoder = BeamDecoder(lexicon, UnigramScorer(lexicon), DecoderConfig(beam=8, sigma=0.05))
    words = ["the", "quick", "woods", "zebra"]
    result = type_messages(decoder, [words], TapSimulator(TapNoise(0.05), seed=0), k=3)
    assert result.decoded[:3] == words[:3] and result.decoded[3] != "zebra"
    assert result.word_error_rate == 0.25 and result.in_lexicon_error_rate == 0.0
    assert result.keystrokes == [len(w) + 1 for w in words]
    assert 0 < result.keystroke_savings < 1 and len(result.latencies) == sum(result.keystrokes)
    assert all(s <= len(w) - 1 for s, w in zip(result.saved, words, strict=True))


def test_save_and_reload_give_identical_outputs_and_mismatches_are_refused(tmp_path, lexicon, char_model):
    path = tmp_path / "kb.safetensors"
    KeyboardModel(char_model, lexicon, {"note": "test"}).save(path)
    loaded = KeyboardModel.load(path)
    assert loaded.lexicon.to_dict() == lexicon.to_dict() and loaded.record == {"note": "test"}
    taps = TapSimulator(TapNoise(0.5), seed=0).taps("story")
    a = BeamDecoder(lexicon, CharModelScorer(char_model)).decode(taps, k=3)
    b = BeamDecoder(loaded.lexicon, CharModelScorer(loaded.char_model)).decode(taps, k=3)
    assert [(s.word, s.score) for s in a] == [(s.word, s.score) for s in b]
    ids = torch.tensor([encode("the fox")])
    with torch.no_grad():
        assert torch.equal(char_model(ids)[0], loaded.char_model(ids)[0])
    with pytest.raises(CrossedgeError, match="holds a character model"):
        KeyboardModel.load(path, config=CharModelConfig(embed=8, hidden=32))
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CrossedgeError, match="not a keyboard model"):
        KeyboardModel.load(foreign)
    with pytest.raises(CrossedgeError, match="pass --force"):
        check_writable(foreign)
    with pytest.raises(CrossedgeError, match="no keyboard model"):
        KeyboardModel.load(tmp_path / "absent.safetensors")
    # a file whose tensors do not fit its own config
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = {k: v.clone() for k, v in char_model.state_dict().items()}
    tensors["head.weight"] = torch.zeros(27, 4)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CrossedgeError, match="does not match its own config"):
        KeyboardModel.load(broken)


def test_cli_trains_decodes_and_evaluates_a_tiny_model(tmp_path):
    runner = CliRunner()
    out = tmp_path / "kb.safetensors"
    train = ["train", "--out", str(out), "--steps", "3", "--hidden", "8", "--embed", "4", "--window", "16"]
    result = runner.invoke(keyboard, [*train, "--json", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "bits per character" in result.output
    again = runner.invoke(keyboard, train)
    assert again.exit_code == 0, again.output  # our own file may be replaced
    (tmp_path / "notes.txt").write_text("mine")
    refused = runner.invoke(keyboard, ["train", "--out", str(tmp_path / "notes.txt"), "--steps", "1"])
    assert refused.exit_code != 0 and "pass --force" in str(refused.exception)

    decoded = runner.invoke(keyboard, ["decode", "--model", str(out), "--word", "function", "--sigma", "0.2"])
    assert decoded.exit_code == 0, decoded.output
    assert "corrections" in decoded.output and "intended: function" in decoded.output
    taps = " ".join(f"{x},{y}" for x, y in (QWERTY.centre(c) for c in "the"))
    decoded = runner.invoke(
        keyboard,
        ["decode", "--model", str(out), "--taps", taps, "--scorer", "lexicon-only", "--json", str(tmp_path / "d.json")],
    )
    assert decoded.exit_code == 0, decoded.output
    assert "corrections (lexicon-only, beam 8" in decoded.output and ": the" in decoded.output
    bad = runner.invoke(keyboard, ["decode", "--model", str(out)])
    assert bad.exit_code != 0 and "exactly one of" in str(bad.exception)

    evaluated = runner.invoke(
        keyboard,
        [
            "eval",
            "--model",
            str(out),
            "--words",
            "15",
            "--calibration-words",
            "8",
            "--widths",
            "1,2",
            "--budget-ms",
            "1000",
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "lexicon-only" in evaluated.output and "char-model+counts" in evaluated.output
    import json

    report = json.loads((tmp_path / "e.json").read_text())
    assert [r["beam"] for r in report["results"]] == [2, 2] and all(r["within_budget"] for r in report["results"])


def test_paired_comparison_counts_fixed_and_broken_words():
    from crossedge.ondevice.keyboard.bench import paired_against

    words = ["a"] * 10 + ["b"] * 5
    paired = paired_against(words, ["a"] * 10 + ["x"] * 5, ["x"] * 10 + ["b"] * 5)
    assert paired["fixed_vs_baseline"] == 10 and paired["broken_vs_baseline"] == 5
    assert paired["sign_test_p"] == pytest.approx(2 * sum(math.comb(15, i) for i in range(6)) / 2**15)
    assert paired_against(words, ["a"] * 10 + ["x"] * 5, ["x"] * 15)["sign_test_p"] == pytest.approx(2 / 2**10)
