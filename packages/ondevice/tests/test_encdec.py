"""Return of the Encoder: student shapes and masks, cached decoding, matched sizes, distillation, the teacher
cache, files, CLI and benchmark, all on a tiny random llama teacher with a byte tokenizer."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.core.testing import save_tiny_causal_lm, tiny_causal_lm
from crossedge.ondevice.encdec.cli import return_encoder
from crossedge.ondevice.encdec.data import prompt_parts, split_corpus, summary_items
from crossedge.ondevice.encdec.evaluation import greedy, lcs_length, quality, rouge_l
from crossedge.ondevice.encdec.experiment import Recipe, matched_configs, new_student, prepare
from crossedge.ondevice.encdec.latency import Timed, latency_rows, parse_lengths
from crossedge.ondevice.encdec.model import (
    StudentConfig,
    build_student,
    check_writable,
    load_student,
    matched_decoder,
    parameter_count,
    parameter_split,
    save_student,
    teacher_projection,
)
from crossedge.ondevice.encdec.teacher import TeacherRunner, teacher_data
from crossedge.ondevice.encdec.training import DistillConfig, distill, distill_loss

TINY = StudentConfig(
    kind="encdec", vocab=259, d_model=16, heads=2, encoder_layers=2, decoder_layers=1, mlp_hidden=32, start_id=257
)
KINDS = ("encdec", "decoder")


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_student(TINY if kind == "encdec" else matched_decoder(TINY)).eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def teacher():
    return tiny_causal_lm("llama")


@pytest.fixture(scope="module")
def prepared(teacher, tmp_path_factory):
    model, tokenizer = teacher
    recipe = Recipe(sources="pydoc-topics", train_items=6, eval_items=3, passage_tokens=24, new_tokens=6, top_k=8)
    return prepare(model, tokenizer, recipe, folder=tmp_path_factory.mktemp("teacher-cache"))


def test_config_errors_are_one_line_crossedge_errors():
    cases = [
        lambda: StudentConfig(kind="t5"),
        lambda: StudentConfig(d_model=30, heads=4),
        lambda: StudentConfig(kind="encdec", encoder_layers=0),
        lambda: StudentConfig(kind="decoder", encoder_layers=2),
        lambda: StudentConfig(vocab=10, start_id=10),
        lambda: StudentConfig.from_dict({"kind": "encdec", "depth": 3}),
        lambda: DistillConfig(kl_weight=1.5),
        lambda: DistillConfig(steps=0),
        lambda: Recipe.from_dict({"items": 3}),
        lambda: parse_lengths("128,abc"),
        lambda: parse_lengths("0"),
        lambda: matched_decoder(matched_decoder(TINY)),
    ]
    for case in cases:
        with pytest.raises(CrossedgeError) as info:
            case()
        assert "\n" not in str(info.value) and str(info.value)
    assert StudentConfig.from_dict(TINY.to_dict()) == TINY


def test_encoder_is_bidirectional_and_decoders_are_causal():
    encdec, decoder = tiny("encdec"), tiny("decoder")
    x = ids(1, 12)
    later = x.clone()
    later[0, 9] = (later[0, 9] + 1) % 256
    with torch.no_grad():
        moved = (encdec.encode(later) - encdec.encode(x)).abs().amax(-1)[0]
    assert torch.all(moved[:9] > 0)  # earlier positions see a later token: bidirectional
    targets = ids(1, 7, seed=2)
    changed = targets.clone()
    changed[0, 3] = (changed[0, 3] + 1) % 256
    for student in (encdec, decoder):
        with torch.no_grad():
            a, b = student.target_logits(x, targets), student.target_logits(x, changed)
            c = student.target_logits(later, targets)
        # logits j predict target j from targets < j: changing target 3 moves only positions 4..6
        assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and torch.all((a[:, 4:] - b[:, 4:]).abs().amax(-1) > 0)
        assert torch.all((a - c).abs().amax(-1) > 0)  # every answer position reads the input
    assert a.shape == (1, 7, TINY.vocab)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_gives_the_tokens_of_a_no_cache_recompute(kind):
    student = tiny(kind)
    x = ids(2, 10)
    out = greedy(student, x, 9)  # eos None: all nine tokens
    with torch.no_grad():
        for row in range(2):
            seq: list[int] = []
            for _ in range(9):
                logits = student.target_logits(x[row : row + 1], torch.tensor([seq + [0]]))[0, -1]
                seq.append(int(logits.argmax()))
            assert out[row] == seq
        state, first = student.prefill(x, capacity=1)  # smaller than needed: the KV buffers must grow
        steps = [first] + [student.step(state, out_t) for out_t in torch.tensor(out).T[:-1, :, None]]
        full = student.target_logits(x, torch.tensor(out))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_cross_attention_keys_and_values_are_computed_once_per_input():
    student = tiny("encdec")
    calls = []
    hooks = [block.cross.kv.register_forward_hook(lambda *a: calls.append(1)) for block in student.decoder]
    try:
        greedy(student, ids(1, 10), 8)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == TINY.decoder_layers  # not once per decoded token


def test_matched_students_have_the_same_parameter_count():
    default = StudentConfig()
    for base in (TINY, default, replace(default, d_model=256, encoder_layers=4, decoder_layers=2)):
        decoder = matched_decoder(base)
        assert decoder.kind == "decoder" and decoder.decoder_layers == base.encoder_layers + base.decoder_layers
        assert abs(parameter_count(decoder) - parameter_count(base)) / parameter_count(base) < 0.005
    assert parameter_count(TINY) == sum(p.numel() for p in build_student(TINY).parameters())
    split = parameter_split(default)
    assert split["embedding"] == default.vocab * default.d_model
    assert 0.6 < split["encoder"] / (split["encoder"] + split["decoder"]) < 0.75  # about 2/3 in the encoder
    assert 10e6 < split["total"] < 20e6
    encdec, decoder = matched_configs(259, 257, d_model=16, heads=2, encoder_layers=2, decoder_layers=1, mlp_hidden=32)
    assert encdec == TINY and decoder == matched_decoder(TINY)


def test_teacher_projection_keeps_the_leading_directions():
    torch.manual_seed(0)
    weight = torch.randn(300, 8) @ torch.diag(torch.tensor([9.0, 5, 3, 1, 0.5, 0.2, 0.1, 0.05]))
    projected = teacher_projection(weight, 3)
    assert projected.shape == (300, 3) and abs(float(projected.std()) - 0.02) < 1e-4
    centred = weight - weight.mean(0)
    variance = projected.var(0)
    assert torch.all(variance[:-1] >= variance[1:])  # leading direction first
    # the projection spans the top principal subspace: it reconstructs most of the variance
    residual = centred - projected @ torch.linalg.lstsq(projected, centred).solution
    assert residual.pow(2).sum() / centred.pow(2).sum() < 0.05
    assert teacher_projection(weight, 12).shape == (300, 12)  # wider than the teacher: extra random columns


def test_distill_loss_is_zero_at_the_teacher_and_ignores_padding():
    topk_ids = torch.tensor([[[3, 1], [0, 2]]])
    topk_logp = torch.tensor([[[-0.5, -1.5], [float("-inf"), float("-inf")]]])  # second position is padding
    mask = torch.tensor([[True, False]])
    targets = torch.tensor([[3, 0]])
    p = torch.softmax(topk_logp[0, 0], -1)
    logits = torch.full((1, 2, 5), -30.0)
    logits[0, 0, 3], logits[0, 0, 1] = p[0].log(), p[1].log()
    logits.requires_grad_(True)
    loss, kl, ce = distill_loss(logits, targets, mask, topk_ids, topk_logp, 0.5)
    assert abs(float(kl.detach())) < 1e-6 and abs(float(ce.detach()) + float(p[0].log())) < 1e-5
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[0, 1] == 0)
    worse = logits.detach().clone()
    worse[0, 0, 3] -= 2.0
    assert float(distill_loss(worse, targets, mask, topk_ids, topk_logp)[1]) > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_distillation_steps_lower_the_loss(prepared, kind):
    config = TINY if kind == "encdec" else matched_decoder(TINY)
    student = new_student(config, prepared.teacher)
    before = quality(student, prepared.train, prepared.tokenizer, eos_id=prepared.eos_id)
    result = distill(student, prepared.train, DistillConfig(steps=20, batch_size=4, lr=1e-2, warmup=2))
    after = quality(student, prepared.train, prepared.tokenizer, eos_id=prepared.eos_id)
    assert result.final_loss < result.losses[0] - 1.0 and after["nll"] < before["nll"] - 1.0
    assert len(result.losses) == 20 and result.tokens > 0
    assert 0.0 <= after["agreement"] <= 1.0 and 0.0 <= after["rouge_l"] <= 1.0


def test_teacher_data_is_cached_keyed_by_recipe_and_is_the_teachers_greedy_answer(teacher, tmp_path):
    model, tokenizer = teacher
    docs, _ = split_corpus("pydoc-topics")
    items = summary_items(tokenizer, docs, 3, passage_tokens=16)
    forwards = []
    hook = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        options = {"new_tokens": 5, "top_k": 4, "eos_id": 258, "pad_id": 256, "folder": tmp_path}
        first = teacher_data(model, items.inputs, **options)
        assert first.computed and forwards and first.path.is_file() and first.key in first.path.name
        forwards.clear()
        second = teacher_data(model, items.inputs, **options)
        assert not second.computed and not forwards  # read back: no teacher forward at all
        assert second.key == first.key and torch.equal(second.topk_logp, first.topk_logp)
        assert torch.equal(second.targets, first.targets)
        longer = teacher_data(model, items.inputs, **{**options, "new_tokens": 6})
        other = teacher_data(model, items.inputs[:2], **options)
        assert longer.computed and other.computed and len({first.key, longer.key, other.key}) == 3
    finally:
        hook.remove()
    runner = TeacherRunner(model)
    assert greedy(runner, items.inputs[:1], 5, eos_id=258)[0] == first.answer(0)
    assert torch.equal(first.topk_ids[..., 0][first.mask], first.targets[first.mask])  # greedy = top-1
    assert torch.all(first.topk_logp[..., :-1] >= first.topk_logp[..., 1:])


def test_summary_prompts_have_one_length_and_disjoint_documents(teacher):
    _, tokenizer = teacher
    train, held_out = split_corpus("pydoc-topics")
    assert not {d.id for d in train} & {d.id for d in held_out}
    head, tail = prompt_parts(tokenizer)
    items = summary_items(tokenizer, train, 5, passage_tokens=20, per_document=2)
    assert items.inputs.shape == (5, len(head) + 20 + len(tail))
    assert torch.equal(items.inputs[:, len(head) : len(head) + 20], items.passages)
    assert "Summarize" in tokenizer.decode(head)
    assert set(items.documents) <= {d.id for d in train} and max(items.documents.count(d) for d in items.documents) <= 2
    with pytest.raises(CrossedgeError, match="only"):
        summary_items(tokenizer, train[:2], 50, passage_tokens=20)


def test_lcs_and_rouge_l():
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert lcs_length([], [1, 2]) == 0
    assert rouge_l(["the", "cat", "sat"], ["the", "cat", "sat"]) == 1.0
    assert rouge_l(["a", "b"], ["c", "d"]) == 0.0
    # LCS "the cat" = 2: precision 2/3, recall 2/4
    assert rouge_l(["the", "cat", "ran"], ["the", "big", "cat", "sat"]) == pytest.approx(
        2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)
    )


def test_latency_rows_time_all_models_and_count_cache_bytes():
    models = [
        Timed("encdec", tiny("encdec"), parameter_count(TINY), 2),
        Timed("decoder", tiny("decoder"), parameter_count(matched_decoder(TINY)), 2),
    ]
    rows = latency_rows(models, torch.arange(40), [16, 48], decode_steps=3, rounds=1, warmup=1)
    assert [(r["model"], r["input_tokens"]) for r in rows] == [
        ("encdec", 16),
        ("decoder", 16),
        ("encdec", 48),
        ("decoder", 48),
    ]
    d = TINY.d_model * 4  # float32 bytes per position per key (or value)
    for r in rows:
        assert r["first_token_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["decode_repeats"] == 3
        n, steps = r["input_tokens"], 1 + 3  # warmup + timed steps after the prefill
        if r["model"] == "encdec":  # cross K/V over the input once per decoder layer, self KV over the answer
            assert r["cross_kv_bytes"] == TINY.decoder_layers * 2 * n * d
            assert r["cache_bytes"] == r["cross_kv_bytes"] + TINY.decoder_layers * 2 * (1 + steps) * d
        else:
            assert r["cache_bytes"] == 3 * 2 * (n + steps) * d and r["cross_kv_bytes"] == 0


def test_save_and_reload_are_identical_and_mismatched_files_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    student = tiny("encdec")
    path = save_student(student, tmp_path / "s.safetensors", record={"note": "test"})
    loaded, record = load_student(path)
    assert record == {"note": "test"} and loaded.config == student.config
    for key, tensor in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
    x = ids(1, 9)
    with torch.no_grad():
        assert torch.equal(loaded.target_logits(x, x[:, :4]), student.target_logits(x, x[:, :4]))
    with pytest.raises(CrossedgeError, match="holds a student"):
        load_student(path, config=replace(TINY, mlp_hidden=40))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CrossedgeError, match="not a return-encoder student"):
        load_student(foreign)
    with pytest.raises(CrossedgeError, match="not a return-encoder student written by crossedge"):
        save_student(student, foreign)
    assert torch.equal(load_file(str(foreign))["x"], torch.zeros(2))  # left as it was
    bad = tmp_path / "bad.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny("decoder").state_dict().items()}
    save_file(
        tensors,
        str(bad),
        metadata={"format": "crossedge.ondevice.return-encoder/1", "config": json.dumps(TINY.to_dict())},
    )
    with pytest.raises(CrossedgeError, match="does not match its own config"):
        load_student(bad)
    with pytest.raises(CrossedgeError, match="no model file"):
        load_student(tmp_path / "missing.safetensors")
    assert check_writable(path) == path  # our own file may be replaced


@pytest.fixture
def tiny_teacher_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "cache"))
    return save_tiny_causal_lm(tmp_path / "teacher")


def test_cli_trains_both_students_evaluates_and_refuses_foreign_files(tiny_teacher_folder, tmp_path):
    runner = CliRunner()
    options = ["--teacher", str(tiny_teacher_folder), "--sources", "pydoc-topics", "--train-items", "4"]
    options += ["--eval-items", "2", "--passage-tokens", "16", "--new-tokens", "4", "--top-k", "4", "--d-model", "16"]
    options += ["--heads", "2", "--encoder-layers", "2", "--decoder-layers", "1", "--mlp-hidden", "24"]
    options += ["--steps", "3", "--batch-size", "2", "--threads", "1"]
    paths = {}
    for kind in KINDS:
        paths[kind] = tmp_path / f"{kind}.safetensors"
        out = tmp_path / f"{kind}.json"
        result = runner.invoke(
            return_encoder, ["train", "--kind", kind, "--out", str(paths[kind]), "--json", str(out), *options]
        )
        assert result.exit_code == 0, result.output
        assert "held-out" in result.output and paths[kind].is_file()
        record = json.loads(out.read_text())
        assert abs(record["matched_to"]["encdec"] - record["matched_to"]["decoder"]) / record["parameters"] < 0.01
    assert "read from the cache" in result.output  # the second student reused the first one's teacher answers
    out = tmp_path / "eval.json"
    result = runner.invoke(
        return_encoder,
        ["eval", "--model", str(paths["encdec"]), "--model", str(paths["decoder"]), "--teacher"]
        + [str(tiny_teacher_folder), "--lengths", "8,24", "--repeats", "1", "--decode-steps", "2", "--rounds", "1"]
        + ["--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [m["kind"] for m in data["quality"]] == ["encdec", "decoder"] and len(data["latency"]) == 4
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(return_encoder, ["train", "--kind", "encdec", "--out", str(tmp_path / "keep.txt"), *options])
    assert result.exit_code != 0 and (tmp_path / "keep.txt").read_text() == "mine"
    assert "not a return-encoder student" in str(result.exception)


def test_benchmark_reports_both_students_the_teacher_and_baselines(tiny_teacher_folder, tmp_path):
    from crossedge.ondevice.encdec.bench import ReturnEncoderBenchmark

    bench = ReturnEncoderBenchmark()
    report = bench.run(
        teacher=str(tiny_teacher_folder),
        sources="pydoc-topics",
        train_items=4,
        eval_items=2,
        passage_tokens=16,
        new_tokens=4,
        top_k=4,
        d_model=16,
        heads=2,
        encoder_layers=2,
        decoder_layers=1,
        mlp_hidden=24,
        steps=2,
        batch_size=2,
        lengths="8,24",
        repeats=1,
        teacher_repeats=1,
        decode_steps=2,
        rounds=1,
        train_threads=1,
    )
    report.write_json(tmp_path / "r.json")
    models = [r["model"] for r in report.rows if r["part"] == "quality"]
    assert models == ["encdec untrained", "decoder untrained", "encdec", "decoder", "teacher", "lead (passage start)"]
    assert abs(report.summary["parameter_difference"]) < 0.01
    assert len([r for r in report.rows if r["part"] == "latency"]) == 6  # two students and the teacher, two lengths
    assert set(report.summary["decode_speedup"]) == {"8", "24"}
    assert bench.plot(report, tmp_path / "r.png").stat().st_size > 0
