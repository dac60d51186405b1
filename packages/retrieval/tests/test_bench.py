import json

import pytest
import torch
from click.testing import CliRunner

from crossedge.core import CrossedgeError
from crossedge.retrieval.collection import write_beir
from crossedge.retrieval.pipeline import subsample_corpus
from crossedge.retrieval.testing import tiny_bench_settings, toy_collection


def test_subsample_keeps_relevant_documents():
    small = subsample_corpus(toy_collection(), ["q0", "q2"], size=3)
    assert {"d0", "d3"} <= set(small.corpus) and len(small.corpus) == 3
    assert set(small.queries) == {"q0", "q2"}


def test_bench_command_on_a_beir_folder(tmp_path, plugin):
    from crossedge.core.bench import BenchmarkReport
    from crossedge.core.cli import build_cli

    write_beir(toy_collection(), tmp_path / "beir")
    out = tmp_path / "report.json"
    args = ["retrieval", "bench", "--collection", str(tmp_path / "beir"), "--methods", "bm25", "--json", str(out)]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = BenchmarkReport.read_json(out)
    (row,) = report.rows
    assert set(row) >= {"method", "ndcg@10", "mrr@10", "recall@100", "ms_per_query"}
    assert row["method"] == "bm25" and row["mrr@10"] == 1.0  # each query's words point at its document
    assert out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.read_text())["summary"]["queries"] == 3


def test_unknown_method_is_one_red_line(tmp_path, plugin):
    from crossedge.core.cli import build_cli

    write_beir(toy_collection(), tmp_path / "beir")
    args = ["retrieval", "bench", "--collection", str(tmp_path / "beir"), "--methods", "bm26"]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 1 and "unknown bench method" in result.output


def test_train_command_checkpoints_and_resumes(tmp_path, plugin):
    from crossedge.core.cli import build_cli
    from crossedge.retrieval.scorers import load_scorer
    from crossedge.retrieval.testing import tiny_bert

    model, tokenizer = tiny_bert(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    write_beir(toy_collection(), tmp_path / "beir", split="train")
    args = [
        "retrieval",
        "train",
        "cross-encoder",
        "--out",
        str(tmp_path / "ce"),
        "--collection",
        str(tmp_path / "beir"),
    ]
    args += ["--model", str(tmp_path / "tiny"), "--queries", "3", "--candidates", "3", "--batch-size", "2"]
    first = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "ce" / "checkpoints" / "epoch-001" / "state.json").exists()
    scorer = load_scorer(tmp_path / "ce")
    assert scorer.name == "cross-encoder"
    again = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert "resuming from" in again.output
    uni_args = ["retrieval", "train", "uni-encoder", "--out", str(tmp_path / "ue"), "--init", str(tmp_path / "ce")]
    uni_args += args[5:]
    uni = CliRunner().invoke(build_cli(), uni_args, catch_exceptions=False)
    assert uni.exit_code == 0, uni.output
    assert f"starting from the cross-encoder in {tmp_path / 'ce'}" in uni.output
    assert load_scorer(tmp_path / "ue").name == "uni-encoder"
    bi_args = ["retrieval", "train", "bi-encoder", "--out", str(tmp_path / "be"), "--init", str(tmp_path / "ce")]
    refused = CliRunner().invoke(build_cli(), bi_args + args[5:])
    assert refused.exit_code == 1 and "a bi-encoder starts from --model" in refused.output


def test_bench_reuses_models_it_trained(tmp_path, cache):
    from crossedge.retrieval.pipeline import run_bench

    settings = tiny_bench_settings(
        tmp_path,
        methods=("bi-trained",),
        train_queries=3,
        candidates=3,
    )
    first_log, again_log = [], []
    first = run_bench(settings, say=first_log.append)
    assert not any("resuming" in line for line in first_log)
    assert list((cache / "retrieval" / "bench-checkpoints").glob("*/bi-encoder/epoch-001/state.json"))
    again = run_bench(settings, say=again_log.append)
    assert any("bi-encoder: resuming from" in line for line in again_log)
    assert again["rows"][0]["ndcg@10"] == first["rows"][0]["ndcg@10"]


def test_students_can_get_a_smaller_budget_than_the_teacher(tmp_path, cache, plugin):
    from crossedge.retrieval.pipeline import run_bench

    settings = tiny_bench_settings(
        tmp_path,
        methods=("students",),
        losses=("infonce",),
        train_queries=3,
        student_queries=2,
        candidates=3,
        batch_size=2,
    )
    report = run_bench(settings, say=lambda _: None)
    training = report["summary"]["training"]
    assert training["cross-encoder"]["examples"] == 3
    assert training["student-infonce-2"]["examples"] == 2
    assert report["summary"]["student_lists"] == 2
    assert [row["method"] for row in report["rows"]] == ["student infonce"]


def test_uni_encoder_can_start_from_the_trained_cross_encoder(tmp_path, cache):
    from dataclasses import replace

    from crossedge.retrieval.pipeline import run_bench

    settings = tiny_bench_settings(
        tmp_path,
        methods=("bi-zero-shot", "cross-rerank", "uni-rerank"),
        uni_init="cross-encoder",
        train_queries=3,
        candidates=3,
        batch_size=2,
        rerank_depth=3,
        uni_depth=3,
    )
    report = run_bench(settings, say=lambda _: None)
    methods = [row["method"] for row in report["rows"]]
    assert methods == ["bi-encoder zero-shot", "cross-encoder rerank@3", "uni-encoder rerank@3 (from cross-encoder)"]
    assert set(report["summary"]["training"]) == {"cross-encoder", "uni-encoder-from-cross"}
    as_is = run_bench(replace(settings, methods=("bi-zero-shot", "uni-rerank"), uni_epochs=0), say=lambda _: None)
    assert as_is["rows"][1]["method"] == "uni-encoder rerank@3 (cross-encoder weights)"
    assert set(as_is["summary"]["training"]) == {"cross-encoder"}  # loaded from the first run, nothing trained
    gap = report["summary"]["uni_vs_cross"]
    low, high = gap["ndcg_gap_ci95_points"]
    assert low <= gap["ndcg_gap_points"] <= high
    paired = report["summary"]["ndcg_vs_bi_zero_shot_points"]
    assert set(paired) == set(methods[1:])
    for row in report["rows"][1:]:
        expected = 100 * (row["ndcg@10"] - report["rows"][0]["ndcg@10"])
        assert paired[row["method"]]["mean"] == pytest.approx(expected)
        assert paired[row["method"]]["low"] <= paired[row["method"]]["mean"] <= paired[row["method"]]["high"]


def test_bad_uni_settings_are_clear_errors(tmp_path):
    from crossedge.core import CrossedgeError
    from crossedge.retrieval.pipeline import BenchSettings, run_bench

    with pytest.raises(CrossedgeError, match="unknown uni_init 'bi-encoder'"):
        run_bench(BenchSettings(uni_init="bi-encoder"), say=lambda _: None)
    with pytest.raises(CrossedgeError, match="uni_epochs must be 0 or more"):
        run_bench(BenchSettings(uni_epochs=-1), say=lambda _: None)
    for bad in ({"head": "cls"}, {"interaction_layers": 2}):
        with pytest.raises(CrossedgeError, match="needs every layer to interact"):
            run_bench(BenchSettings(uni_init="cross-encoder", **bad), say=lambda _: None)


def test_bi_encoder_negatives_are_the_miners_top_non_relevant_documents():
    from crossedge.retrieval.pipeline import training_lists
    from crossedge.retrieval.scorers import BiEncoder
    from crossedge.retrieval.testing import tiny_bert

    collection = toy_collection()
    miner = BiEncoder(*tiny_bert(seed=3))
    lists = training_lists(collection, 3, 3, negatives="bi-encoder", miner=miner)
    assert len(lists) == 3
    ids = collection.doc_ids()
    docs = miner.encode([collection.doc_text(d) for d in ids])
    for qid in ("q0", "q1", "q2"):
        example = next(ex for ex in lists if ex.query == collection.queries[qid])
        (relevant,) = collection.qrels[qid]
        assert example.documents[0] == collection.doc_text(relevant)
        assert example.labels == (1.0, 0.0, 0.0)
        q = miner.encode([collection.queries[qid]], queries=True)[0]
        ranking = [ids[i] for i in torch.argsort(docs @ q, descending=True).tolist()]
        expected = [d for d in ranking if d != relevant][:2]
        assert example.documents[1:] == tuple(collection.doc_text(d) for d in expected)
        assert collection.doc_text(relevant) not in example.documents[1:]


def test_bi_encoder_negatives_need_a_miner():
    from crossedge.core import CrossedgeError
    from crossedge.retrieval.pipeline import training_lists

    with pytest.raises(CrossedgeError, match="needs the bi-encoder"):
        training_lists(toy_collection(), 3, 3, negatives="bi-encoder")
    with pytest.raises(CrossedgeError, match="unknown negatives"):
        training_lists(toy_collection(), 3, 3, negatives="random")


def test_bench_does_not_reuse_models_trained_with_other_negatives(tmp_path, cache):
    from crossedge.retrieval.pipeline import run_bench

    settings = tiny_bench_settings(
        tmp_path,
        methods=("bi-trained",),
        train_queries=3,
        candidates=3,
    )
    run_bench(settings, say=lambda _: None)
    settings.negatives = "bi-encoder"
    log = []
    report = run_bench(settings, say=log.append)
    assert not any("resuming" in line for line in log)
    assert report["summary"]["train_lists"]["negatives"] == "bi-encoder"
    assert len(list((cache / "retrieval" / "bench-checkpoints").glob("*/bi-encoder/epoch-001/state.json"))) == 2


def test_bi_encoder_negatives_skip_answers_to_an_identical_query():
    from crossedge.retrieval.pipeline import training_lists
    from crossedge.retrieval.scorers import BiEncoder
    from crossedge.retrieval.testing import tiny_bert

    collection = toy_collection()
    collection.queries["q3"] = collection.queries["q0"]  # same docstring, another function
    collection.qrels["q3"] = {"d4": 1}
    miner = BiEncoder(*tiny_bert(seed=3))
    lists = training_lists(collection, 4, 5, negatives="bi-encoder", miner=miner)
    for example in lists:
        if example.query == collection.queries["q0"]:
            answers = {collection.doc_text("d0"), collection.doc_text("d4")}
            assert example.documents[0] in answers and not answers & set(example.documents[1:])
            assert len(example.documents) == 4  # the 3 documents no such query is answered by


def test_trans_encoder_lists_read_no_judgements():
    from crossedge.retrieval.collection import Collection
    from crossedge.retrieval.pipeline import unlabelled_lists
    from crossedge.retrieval.scorers import BiEncoder
    from crossedge.retrieval.testing import tiny_bert

    judged = toy_collection()
    # The same queries and corpus with one judgement moved: the lists must not change.
    moved = Collection(judged.corpus, judged.queries, {**judged.qrels, "q0": {"d4": 1}})
    bi = BiEncoder(*tiny_bert(seed=3))
    lists = unlabelled_lists(judged, 3, 2, bi)
    assert lists == unlabelled_lists(moved, 3, 2, bi)
    ids = judged.doc_ids()
    docs = bi.encode([judged.doc_text(d) for d in ids])
    for query, found in lists:
        ranking = torch.argsort(docs @ bi.encode([query], queries=True)[0], descending=True).tolist()
        assert found == tuple(judged.doc_text(ids[i]) for i in ranking[:2])


def test_bench_keeps_models_with_other_heads_apart(tmp_path, cache):
    from crossedge.retrieval.pipeline import run_bench

    settings = tiny_bench_settings(tmp_path, methods=("cross-rerank",), train_queries=3, candidates=3, head="cls")
    run_bench(settings, say=lambda _: None)
    settings.head = "similarity"
    log = []
    run_bench(settings, say=log.append)
    assert not any("resuming" in line for line in log)
    assert len(list((cache / "retrieval" / "bench-checkpoints").glob("*/cross-encoder/epoch-001/state.json"))) == 2


def test_one_training_key_names_checkpoints_and_teacher_scores_and_keeps_old_checkpoints(tmp_path):
    import hashlib
    from dataclasses import asdict

    from crossedge.retrieval.pipeline import BenchSettings, training_key
    from crossedge.retrieval.training import TrainConfig

    def legacy(*extra):  # the key the bench wrote before the steps were split out
        parts = (asdict(TrainConfig(epochs=1, batch_size=8, lr=3e-5, seed=0)), "minilm-l6", None, None, 64, 4, 128)
        return hashlib.sha256(repr(parts + extra).encode()).hexdigest()[:16]

    assert training_key(BenchSettings(head="cls")) == legacy()
    assert training_key(BenchSettings()) == legacy("head=similarity", "interaction_layers=None")
    assert training_key(BenchSettings(negatives="bi-encoder", head="cls", interaction_layers=2)) == legacy(
        "negatives=bi-encoder"
    )
    keys = {training_key(BenchSettings(**kw)) for kw in ({}, {"train_collection": "x"}, {"epochs": 2}, {"lr": 1e-4})}
    assert len(keys) == 4
    # Training never reads the evaluation collection: one model serves every collection it is evaluated on.
    on_a, on_b = (training_key(BenchSettings(collection=c, train_collection="mix/train")) for c in ("a", "b"))
    assert on_a == on_b == training_key(BenchSettings(train_collection="mix/train"))


def test_bad_depths_and_curve_depths_are_clear_errors(tmp_path, plugin):
    from crossedge.core.cli import build_cli
    from crossedge.retrieval.pipeline import BenchSettings, run_bench

    with pytest.raises(CrossedgeError, match="rerank depths must be 1 or more, not 0"):
        run_bench(BenchSettings(curve_depths=(10, 0)), say=lambda _: None)
    result = CliRunner().invoke(build_cli(), ["retrieval", "bench", "--curve-depths", "10,twenty"])
    assert result.exit_code == 1
    assert "--curve-depths takes whole numbers separated by commas" in result.output


def test_teacher_scores_are_cached_under_the_training_key(tmp_path, cache, plugin):
    from crossedge.retrieval.pipeline import run_bench, training_key

    settings = tiny_bench_settings(tmp_path, methods=("students",), losses=("infonce",), train_queries=3,
                                   candidates=3, batch_size=2)  # fmt: skip
    run_bench(settings, say=lambda _: None)
    (meta,) = (cache / "retrieval" / "teacher-scores").glob("*.json")
    assert json.loads(meta.read_text())["teacher"] == f"cross-encoder|{training_key(settings)}"
    assert (cache / "retrieval" / "bench-checkpoints" / training_key(settings) / "cross-encoder").is_dir()


def test_an_unknown_loss_is_refused_before_anything_trains(tmp_path, plugin):
    from crossedge.core import CrossedgeError
    from crossedge.retrieval.pipeline import BenchSettings, run_bench

    settings = BenchSettings(collection=str(tmp_path / "missing"), methods=("students",), losses=("infonse",))
    with pytest.raises(CrossedgeError, match="unknown loss 'infonse': did you mean 'infonce'"):
        run_bench(settings, say=lambda _: None)  # the collection is never read: the settings fail first


def test_train_with_an_unknown_loss_fails_before_the_model_loads(tmp_path, plugin):
    from crossedge.core.cli import build_cli

    args = ["retrieval", "train", "bi-encoder", "--out", str(tmp_path / "o"), "--loss", "infonse"]
    args += ["--model", str(tmp_path / "no-such-model"), "--collection", str(tmp_path / "no-such-collection")]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 1 and "unknown loss 'infonse'" in result.output


def test_rerankers_train_with_first_stage_distillation_and_fuse_with_a_dev_chosen_weight(tmp_path, cache):
    from dataclasses import replace

    from crossedge.retrieval.collection import Collection
    from crossedge.retrieval.pipeline import run_bench

    settings = tiny_bench_settings(
        tmp_path,
        methods=("bi-zero-shot", "cross-rerank"),
        train_queries=3,
        candidates=3,
        batch_size=2,
        reranker_loss="infonce-kl",
        distill_alpha=0.5,
        rerank_depth=4,
        uni_depth=4,
    )
    write_beir(toy_collection(), tmp_path / "beir", split="dev")
    settings = replace(settings, dev_collection=str(tmp_path / "beir"))
    report = run_bench(settings, say=lambda _: None)
    methods = [row["method"] for row in report["rows"]]
    weight = report["summary"]["fusion"]["cross-encoder rerank@4"]["weight"]
    assert methods == [
        "bi-encoder zero-shot",
        "cross-encoder rerank@4",
        f"cross-encoder rerank@4 + fusion (w={weight:g})",
    ]
    assert set(report["summary"]["fusion"]["cross-encoder rerank@4"]["dev_ndcg@10_by_weight"]) == {
        round(0.1 * i, 1) for i in range(11)
    }
    gaps = report["summary"]["ndcg_vs_bi_zero_shot_points"]
    assert {g["verdict"] for g in gaps.values()} <= {"hurts", "helps", "no clear difference"}
    # The weight comes from the dev judgements alone: other test judgements leave it as it was.
    toy = toy_collection()
    moved = {q: {d: 1 for d in toy.corpus if d not in judged} for q, judged in toy.qrels.items()}
    write_beir(Collection(toy.corpus, toy.queries, moved), tmp_path / "other")
    again = run_bench(replace(settings, collection=str(tmp_path / "other")), say=lambda _: None)
    assert again["summary"]["fusion"]["cross-encoder rerank@4"]["weight"] == weight
    assert again["rows"][0]["ndcg@10"] != report["rows"][0]["ndcg@10"]


def test_reranker_losses_are_checked_before_anything_trains(plugin):
    from crossedge.retrieval.pipeline import BenchSettings, run_bench

    with pytest.raises(Exception, match="unknown reranker loss"):
        run_bench(BenchSettings(reranker_loss="mse"), say=lambda _: None)
    with pytest.raises(Exception, match="distill_alpha"):
        run_bench(BenchSettings(reranker_loss="infonce-kl", distill_alpha=-1.0), say=lambda _: None)
