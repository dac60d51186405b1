"""Block-wise decoding of a diffusion LM, the built-in unmasking strategies, and parallel-bench."""

import json

import pytest
import torch
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.core.conformance.unmasking import UnmaskingConformance
from crossedge.core.contracts.unmasking import BlockState, build_unmasking
from crossedge.core.errors import CrossedgeError
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.parallel import bench as B
from crossedge.specdec.parallel import tasks as T
from crossedge.specdec.parallel import train as TR
from crossedge.specdec.parallel.decoding import decode, decode_speculative, prompt_ids
from crossedge.specdec.parallel.model import DiffusionLM
from crossedge.specdec.parallel.strategies import ConfidenceThreshold, LowConfidenceRemasking, TokenEditing


class TestLowConfidence(UnmaskingConformance):
    def make_strategy(self):
        return LowConfidenceRemasking(k=2)


class TestThreshold(UnmaskingConformance):
    def make_strategy(self):
        return ConfidenceThreshold(tau=0.6)


class TestTokenEditing(UnmaskingConformance):
    def make_strategy(self):
        return TokenEditing(mask_tau=0.6, edit_tau=0.5, max_edit_steps=2)


MASK, EOS, V = 9, 0, 10


def _state(probs, tokens=None, step=0):
    """A block state whose softmax equals ``probs`` (rows of probabilities)."""
    probs = torch.tensor(probs)
    tokens = torch.full((probs.shape[0],), MASK) if tokens is None else torch.tensor(tokens)
    return BlockState(tokens, probs.log(), MASK, EOS, step)


def _peaked(token, p):
    row = [(1 - p) / (V - 1)] * V
    row[token] = p
    return row


def test_low_confidence_keeps_the_k_most_confident():
    state = _state([_peaked(1, 0.5), _peaked(2, 0.9), _peaked(3, 0.7), _peaked(4, 0.2)])
    assert LowConfidenceRemasking(k=2).step(state).tolist() == [MASK, 2, 3, MASK]
    assert LowConfidenceRemasking(k=9).step(state).tolist() == [1, 2, 3, 4]


def test_threshold_keeps_everything_above_tau_and_at_least_one():
    state = _state([_peaked(1, 0.95), _peaked(2, 0.5), _peaked(3, 0.91)])
    assert ConfidenceThreshold(tau=0.9).step(state).tolist() == [1, MASK, 3]
    low = _state([_peaked(1, 0.3), _peaked(2, 0.5), _peaked(3, 0.4)])
    assert ConfidenceThreshold(tau=0.9).step(low).tolist() == [MASK, 2, MASK]


def test_token_editing_rewrites_decoded_tokens_only_past_edit_tau():
    state = _state([_peaked(5, 0.95), _peaked(6, 0.6), _peaked(7, 0.99)], tokens=[1, 2, MASK])
    out = TokenEditing(mask_tau=0.9, edit_tau=0.9).step(state)
    assert out.tolist() == [5, 2, 7]  # position 0 edited (0.95 > 0.9), position 1 kept (0.6), 2 filled


def test_strategy_options_are_checked():
    with pytest.raises(CrossedgeError, match="tau must be in"):
        build_unmasking("threshold:tau=1.5")
    with pytest.raises(CrossedgeError, match="k must be at least 1"):
        build_unmasking("low-confidence:k=0")
    assert isinstance(build_unmasking("llada:k=3"), LowConfidenceRemasking)


# ------------------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def tiny():
    return TR.new_model(["copy", "reverse"], hidden=32, layers=1, heads=2, block_length=4, seed=0)


class Spy:
    """Wraps a model's forward and records every input row."""

    def __init__(self, model):
        self.model, self.inputs = model, []
        self.forward = model.forward

    def __enter__(self):
        def spy(ids, keep=None, **kw):
            self.inputs.append(ids[0].clone())
            return self.forward(ids, keep, **kw)

        self.model.forward = spy
        return self

    def __exit__(self, *exc):
        del self.model.forward


def test_blocks_decode_left_to_right_and_never_touch_the_prompt(tiny):
    prompt = T.make_examples(["copy"], 1, seed=0, split="test")[0].prompt
    head = prompt_ids(tiny, prompt)
    info, n = tiny.info, len(head)
    with Spy(tiny) as spy:
        out = decode(tiny, prompt, "low-confidence:k=1")
    assert out.forwards == len(spy.inputs) == info.gen_length
    blocks = info.gen_length // info.block_length
    for i, row in enumerate(spy.inputs):
        assert row[:n].tolist() == head, "the prompt was written to"
        b = i // info.block_length
        canvas = row[n:].view(blocks, info.block_length)
        assert not bool((canvas[:b] == info.mask_token_id).any()), "an earlier block still had masks"
        assert bool((canvas[b + 1 :] == info.mask_token_id).all()), "a later block was decoded early"
        assert int((canvas[b] == info.mask_token_id).sum()) == info.block_length - i % info.block_length
    assert info.mask_token_id not in out.tokens and len(out.tokens) == info.gen_length


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixed_k_spends_gen_length_over_k_forwards(tiny, k):
    assert tiny.info.block_length % k == 0
    assert decode(tiny, "copy the waiting line", f"low-confidence:k={k}").forwards == tiny.info.gen_length // k


class AlwaysEOS(DiffusionLM):
    """A fake diffusion LM whose every forward puts nearly all mass on end-of-text."""

    def forward(self, ids, keep=None, *, hidden=False):
        logits = torch.zeros(*ids.shape, len(self.tokenizer))
        logits[..., self.info.eos_token_id] = 10.0
        return (logits, torch.zeros(*ids.shape, 4)) if hidden else logits


def test_stop_at_eos_ends_the_canvas_after_the_block_that_decodes_it(tiny):
    fake = AlwaysEOS(None, tiny.tokenizer, tiny.info)
    full = decode(fake, "copy the waiting line", "threshold:tau=0.9")
    short = decode(fake, "copy the waiting line", "threshold:tau=0.9", stop_at_eos=True)
    assert full.tokens == short.tokens == [tiny.info.eos_token_id] * tiny.info.gen_length
    blocks = tiny.info.gen_length // tiny.info.block_length
    assert (full.forwards, short.forwards) == (blocks, 1)
    assert short.text == ""


def test_a_diffusion_lm_needs_a_strategy_and_a_whole_number_of_blocks(tiny):
    with pytest.raises(CrossedgeError, match="unmasking strategy"):
        decode(tiny, "copy the waiting line")
    with pytest.raises(CrossedgeError, match="multiple of block_length"):
        decode(tiny, "copy the waiting line", "threshold", block_length=3)
    with pytest.raises(CrossedgeError, match="empty prompt"):
        decode(tiny, "", "threshold")


@pytest.fixture(scope="module")
def twin():
    model = TR.new_model(["copy"], objective="autoregressive", hidden=32, layers=1, heads=2, seed=0)
    TR.train(model, steps=40, batch_size=16, lr=3e-3, warmup=5)
    return model


def test_the_autoregressive_twin_decodes_one_token_per_forward_until_end_of_text(twin):
    out = decode(twin, "copy the waiting line . line : Ann Lee , Bo Park")
    eos = twin.info.eos_token_id
    stop = out.tokens.index(eos) + 1 if eos in out.tokens else twin.info.gen_length
    assert out.forwards == stop and len(out.tokens) == twin.info.gen_length


# --------------------------------------------------------------------------- bench


def test_parallel_bench_rows_per_task_and_overall(tiny):
    rows = B.run_parallel_bench(tiny, ["low-confidence:k=2", "threshold:tau=0.9"], ["copy", "reverse"], per_task=3)
    assert [(r.method, r.task) for r in rows] == [
        (m, t) for m in ("low-confidence:k=2", "threshold:tau=0.9") for t in ("copy", "reverse", "all")
    ]
    for r in rows:
        assert 0.0 <= r.accuracy <= r.score <= 1.0
        assert r.examples == (6 if r.task == "all" else 3)
    fixed = rows[2]
    assert fixed.canvas_per_forward == pytest.approx(2.0)
    assert fixed.forwards == 6 * tiny.info.gen_length // 2
    assert 0 < fixed.tokens_per_forward <= fixed.canvas_per_forward


def test_speculation_on_the_twin_gives_its_greedy_answers_in_fewer_forwards(twin):
    rows = B.run_parallel_bench(None, [], ["copy"], autoregressive=twin, speculative=["copy"], per_task=4)
    by_method = {r.method: r for r in rows if r.task == "all"}
    plain, fast = by_method["autoregressive"], by_method["speculative:copy"]
    assert fast.identical_to_ar == 1.0 and plain.identical_to_ar is None
    assert (fast.accuracy, fast.score) == (plain.accuracy, plain.score)
    assert fast.forwards <= plain.forwards
    assert fast.tokens_per_forward == pytest.approx(plain.tokens_per_forward * plain.forwards / fast.forwards)
    for example in T.make_examples(["copy"], 2, seed=3, split="test"):
        decoder = SpeculativeDecoder(twin.model, "copy", eos_token_id=twin.info.eos_token_id, calibration_cache="off")
        assert decode_speculative(twin, example.prompt, decoder).tokens == decode(twin, example.prompt).tokens


def test_parallel_bench_refuses_swapped_models(tiny):
    with pytest.raises(CrossedgeError, match="runs on the autoregressive twin"):
        B.run_parallel_bench(tiny, ["low-confidence:k=1"], ["copy"], speculative=["copy"])
    with pytest.raises(CrossedgeError, match="--ar must be"):
        B.run_parallel_bench(None, [], ["copy"], autoregressive=tiny)
    with pytest.raises(CrossedgeError, match="nothing to run"):
        B.run_parallel_bench(None, [], ["copy"])


@pytest.fixture
def run_cli(specdec_plugin):
    def invoke(*args):
        return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)

    return invoke


def test_the_cli_trains_and_benches_a_tiny_model(run_cli, tmp_path):
    out = tmp_path / "dllm"
    common = ["--tasks", "copy", "--steps", "2", "--hidden", "16", "--layers", "1", "--heads", "2"]
    result = run_cli("specdec", "train-dllm", "--out", str(out), *common)
    assert result.exit_code == 0, result.output
    assert "trained" in result.output and (out / "dllm.json").is_file()
    twin = tmp_path / "ar"
    result = run_cli("specdec", "train-dllm", "--out", str(twin), "--objective", "autoregressive", *common)
    assert result.exit_code == 0, result.output
    report = tmp_path / "bench.json"
    result = run_cli(
        "specdec",
        "parallel-bench",
        "--model",
        str(out),
        "--ar",
        str(twin),
        "--strategies",
        "low-confidence:k=2;threshold:tau=0.8",
        "--speculative",
        "copy",
        "--per-task",
        "2",
        "--json",
        str(report),
        "--plot",
        str(tmp_path / "curves.png"),
    )
    assert result.exit_code == 0, result.output
    assert "same as AR" in result.output
    data = json.loads(report.read_text())
    assert [r["method"] for r in data["rows"] if r["task"] == "all"] == [
        "low-confidence:k=2",
        "threshold:tau=0.8",
        "autoregressive",
        "speculative:copy",
    ]
    assert (tmp_path / "curves.png").stat().st_size > 0
    # Going on from the trained model with the token-to-token objective keeps its record.
    more = tmp_path / "t2t"
    extra = ["--edit-ratio", "0.2", "--steps", "2", "--out", str(more)]
    result = run_cli("specdec", "train-dllm", "--init", str(out), *extra)
    assert result.exit_code == 0, result.output
    trained = json.loads((more / "dllm.json").read_text())["trained"]
    assert trained["edit_ratio"] == 0.2 and trained["steps"] == 2 and trained["before"]["edit_ratio"] == 0.0
    result = run_cli("specdec", "train-dllm", "--init", str(twin), "--steps", "1", "--out", str(tmp_path / "x"))
    assert result.exit_code != 0 and "give a diffusion LM folder" in result.output
    result = run_cli("specdec", "parallel-bench", "--model", str(out), "--speculative", "copy")
    assert result.exit_code != 0 and "pass --ar as well" in result.output


def test_the_cli_refuses_a_foreign_folder_and_missing_models(run_cli, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = run_cli("specdec", "train-dllm", "--out", str(tmp_path), "--tasks", "copy", "--steps", "1")
    assert result.exit_code == 1 and "keep.txt" in result.output
    result = run_cli("specdec", "parallel-bench")
    assert result.exit_code == 1 and "give --model" in result.output
    result = run_cli("specdec", "parallel-bench", "--model", str(tmp_path / "missing"))
    assert result.exit_code == 1


# ------------------------------------------------------------------------- Learn2PD


@pytest.fixture(scope="module")
def filter_path(tiny, tmp_path_factory):
    from crossedge.specdec.parallel import learn2pd as L

    features, labels = L.collect(tiny, T.make_examples(["copy"], 2, seed=11))
    net, stats = L.train_filter(features, labels, epochs=20)
    return str(L.save_filter(net, tmp_path_factory.mktemp("l2pd") / "filter.safetensors", stats=stats, model="tiny"))


class TestLearn2PD(UnmaskingConformance):
    @pytest.fixture(autouse=True)
    def _filter(self, filter_path):
        self.path = filter_path

    def make_strategy(self):
        from crossedge.specdec.parallel.learn2pd import Learn2PD

        return Learn2PD(filter=self.path, tau=0.5, eot=False)


def test_learn2pd_labels_say_whether_a_guess_survived(tiny):
    from crossedge.specdec.parallel import learn2pd as L

    examples = T.make_examples(["copy"], 2, seed=12)
    features, labels = L.collect(tiny, examples)
    per_example = tiny.info.gen_length * (tiny.info.block_length + 1) // 2  # masked positions summed over steps
    assert features.shape == (2 * per_example, len(L.FEATURE_NAMES)) and labels.shape == (2 * per_example,)
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    # The position decoded at each step is always final: at least one label per step is 1.
    assert float(labels.sum()) >= 2 * tiny.info.gen_length


def test_the_filter_learns_a_separable_rule():
    from crossedge.specdec.parallel import learn2pd as L

    g = torch.Generator().manual_seed(0)
    features = torch.rand(400, len(L.FEATURE_NAMES), generator=g)
    labels = (features[:, 0] > 0.5).float()
    _, stats = L.train_filter(features, labels, epochs=300)
    assert stats["accuracy"] > 0.95


def test_a_filter_file_round_trips_and_foreign_files_are_refused(filter_path, tmp_path):
    from crossedge.specdec.parallel import learn2pd as L

    net = L.load_filter(filter_path)
    assert isinstance(net, L.Filter)
    foreign = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CrossedgeError, match="was not written by 'crossedge specdec train-filter'"):
        L.load_filter(foreign)
    with pytest.raises(CrossedgeError, match="not a Learn2PD filter crossedge wrote"):
        L.save_filter(net, foreign, stats={}, model="x")
    with pytest.raises(CrossedgeError, match="train-filter"):
        L.load_filter(tmp_path / "missing.safetensors")
    with pytest.raises(CrossedgeError, match="needs filter=PATH"):
        build_unmasking("learn2pd")


def test_learn2pd_predicts_the_end_of_text_and_stops_the_canvas(tiny, filter_path):
    from crossedge.specdec.parallel.learn2pd import Learn2PD

    strategy = Learn2PD(filter=filter_path, tau=0.5)
    strategy._net = lambda features: torch.tensor([-5.0, 5.0, -5.0, -5.0])  # trust position 1 only
    probs = [_peaked(4, 0.9), _peaked(EOS, 0.9), _peaked(5, 0.9), _peaked(6, 0.9)]
    assert strategy.step(_state(probs)).tolist() == [MASK, EOS, EOS, EOS]
    strategy.eot = False
    assert strategy.step(_state(probs)).tolist() == [MASK, EOS, MASK, MASK]

    fake = AlwaysEOS(None, tiny.tokenizer, tiny.info)
    eot = decode(fake, "copy the waiting line", Learn2PD(filter=filter_path, tau=0.99))
    plain = decode(fake, "copy the waiting line", Learn2PD(filter=filter_path, tau=0.99, eot=False))
    assert eot.tokens == plain.tokens == [tiny.info.eos_token_id] * tiny.info.gen_length
    blocks = tiny.info.gen_length // tiny.info.block_length
    assert eot.forwards <= tiny.info.block_length and plain.forwards >= blocks > 1


def test_the_cli_trains_a_filter_into_the_model_folder(run_cli, tiny, tmp_path):
    folder = TR.save_new(tiny, tmp_path / "dllm")
    result = run_cli("specdec", "train-filter", "--model", str(folder), "--per-task", "1", "--epochs", "5")
    assert result.exit_code == 0, result.output
    path = folder / "learn2pd.safetensors"
    assert path.is_file() and "training accuracy" in result.output
    result = run_cli(
        "specdec",
        "parallel-bench",
        "--model",
        str(folder),
        "--strategies",
        f'learn2pd:filter="{path}",tau=0.6',
        "--per-task",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "learn2pd" in result.output


# --------------------------------------------------------------------------- CD4LM


class TestAdaptive(UnmaskingConformance):
    def make_strategy(self):
        from crossedge.specdec.parallel.cd4lm import AdaptiveConfidence

        return AdaptiveConfidence(tau_max=0.9, tau_min=0.5)


def test_the_adaptive_threshold_relaxes_as_the_block_fills():
    from crossedge.specdec.parallel.cd4lm import AdaptiveConfidence

    strategy = AdaptiveConfidence(tau_max=0.9, tau_min=0.5)
    assert strategy.threshold(0.0) == pytest.approx(0.9) and strategy.threshold(1.0) == pytest.approx(0.5)
    probs = [_peaked(1, 0.75), _peaked(2, 0.95), _peaked(3, 0.65), _peaked(4, 0.3)]
    assert strategy.step(_state(probs)).tolist() == [MASK, 2, MASK, MASK]  # empty block: 0.9
    half = _state(probs, tokens=[MASK, MASK, 7, 8])  # half decoded: 0.7
    assert strategy.step(half).tolist() == [1, 2, 7, 8]
    with pytest.raises(CrossedgeError, match="tau_min"):
        build_unmasking("adaptive:tau_max=0.5,tau_min=0.8")


def test_teacher_trajectories_fill_one_position_per_state(tiny):
    from crossedge.specdec.parallel import cd4lm as C

    examples = T.make_examples(["copy"], 2, seed=21)
    trajs = C.trajectories(tiny, examples)
    info = tiny.info
    for traj, example in zip(trajs, examples, strict=True):
        assert len(traj.canvases) == info.gen_length + 1
        assert bool((traj.canvases[0] == info.mask_token_id).all())
        assert traj.canvases[-1].tolist() == decode(tiny, example.prompt, "low-confidence:k=1").tokens
        for before, after in zip(traj.canvases, traj.canvases[1:], strict=False):
            assert int((before != after).sum()) == 1
            assert bool((after[before != info.mask_token_id] == before[before != info.mask_token_id]).all())


def test_distillation_trains_a_copy_and_leaves_the_teacher_alone(tiny):
    from crossedge.specdec.parallel import cd4lm as C

    trajs = C.trajectories(tiny, T.make_examples(["copy"], 3, seed=22))
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    student, record = C.distill(tiny, trajs, steps=3, batch_size=4)
    assert record["steps"] == 3 and student.model is not tiny.model
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, student.model.state_dict()[k]) for k, v in before.items())
    assert student.info.trained["cd4lm"]["trajectories"] == 3


def test_the_cli_distils_a_student(run_cli, tiny, tmp_path):
    teacher = TR.save_new(tiny, tmp_path / "teacher")
    result = run_cli(
        "specdec",
        "train-cd4lm",
        "--model",
        str(teacher),
        "--out",
        str(tmp_path / "student"),
        "--per-task",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "student" / "dllm.json").is_file() and "distilled" in result.output


# ------------------------------------------------------------------- lexical units


@pytest.fixture(scope="module")
def ar_tiny(twin):
    import copy

    return copy.deepcopy(twin)  # the lexical tests change their model


def test_span_rows_put_the_next_token_and_the_guesses_where_the_loss_reads_them(ar_tiny):
    import random

    from crossedge.specdec.parallel import lexical as X

    batch = TR.make_batch(ar_tiny, T.make_examples(["copy"], 6, seed=3))
    ids, keep, target = X.span_batch(ar_tiny, batch, 3, random.Random(0))
    mask = ar_tiny.info.mask_token_id
    for row in range(ids.shape[0]):
        n = int(keep[row].sum())
        cut = n - 3
        assert ids[row, cut:n].tolist() == [mask] * 3
        assert ids[row, :cut].tolist() == batch.ids[row, :cut].tolist()
        labelled = (target[row] != -100).nonzero().squeeze(1).tolist()
        assert labelled == list(range(cut - 1, n))
        canvas_end = int(batch.answer[row].nonzero()[-1]) + 1
        want = batch.ids[row, cut : min(canvas_end, cut + 4)].tolist()
        want += [ar_tiny.info.eos_token_id] * (4 - len(want))
        assert target[row, cut - 1 : n].tolist() == want


def test_lexical_decoding_at_full_confidence_is_plain_greedy(ar_tiny):
    from crossedge.specdec.parallel import lexical as X

    tuned, record = X.fine_tune(ar_tiny, span=3, steps=5, batch_size=8)
    assert tuned.info.objective == "lexical" and tuned.info.span == 3 and record["steps"] == 5
    greedy_twin = DiffusionLM(
        tuned.model, tuned.tokenizer, TR.DLLMInfo(**{**vars(tuned.info), "objective": "autoregressive"})
    )
    for example in T.make_examples(["copy"], 3, seed=9, split="test"):
        strict = decode(tuned, example.prompt, tau=1.0)
        plain = decode(greedy_twin, example.prompt)
        assert strict.tokens == plain.tokens and strict.forwards == plain.forwards
        loose = decode(tuned, example.prompt, tau=1e-6)
        answer = B._answer_length(loose.tokens, tuned.info.eos_token_id)
        assert loose.forwards == -(-answer // 4)  # every guess passes: four tokens a forward


def test_lexical_fine_tuning_needs_an_autoregressive_start(tiny):
    from crossedge.specdec.parallel import lexical as X

    with pytest.raises(CrossedgeError, match="starts from an autoregressive model"):
        X.fine_tune(tiny, steps=1)


def test_the_cli_fine_tunes_and_benches_lexical_units(run_cli, ar_tiny, tmp_path):
    base = TR.save_new(ar_tiny, tmp_path / "ar")
    result = run_cli(
        "specdec",
        "train-lexical",
        "--model",
        str(base),
        "--out",
        str(tmp_path / "lex"),
        "--steps",
        "2",
        "--batch-size",
        "4",
    )
    assert result.exit_code == 0, result.output
    result = run_cli(
        "specdec",
        "parallel-bench",
        "--lexical",
        str(tmp_path / "lex"),
        "--lexical-taus",
        "0.9;0.5",
        "--per-task",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert "lexical:tau=0.9" in result.output and "lexical:tau=0.5" in result.output


def test_methods_are_compared_with_fixed_k_at_equal_tokens_per_forward():
    def row(strategy, tpf, acc, task="copy"):
        return B.BenchRow(strategy, strategy, task, 10, acc, acc, 10, tpf, tpf)

    rows = [row("low-confidence", 1.0, 0.9), row("low-confidence", 3.0, 0.5), row("threshold", 2.0, 0.8)]
    rows += [row("token-editing", 4.0, 0.9), row("learn2pd", 1.5, 0.6, task="sort")]
    B.compare_at_equal_forwards(rows)
    assert rows[2].versus_fixed_k == pytest.approx(0.1)  # fixed-k at 2.0 tokens/forward: 0.7
    assert rows[0].versus_fixed_k is None and rows[3].versus_fixed_k is None and rows[4].versus_fixed_k is None
