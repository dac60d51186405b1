"""``sim-retrieval``: the sentence builder, the bench on a tiny config, and the CLI task with a stand-in embedder."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.crossmodal import simulator
from crossedge.crossmodal.retrieval_bench import (
    RetrievalBenchError,
    build_sentences,
    format_table,
    make_subjects,
    sim_retrieval,
)


def fake_embed(texts):
    """Seeded random unit vectors, one per text, different for different texts (no model needed)."""
    return simulator.random_embeddings_for_tests(len(texts), d=32, seed=len(texts))


def test_sentences_are_deterministic_distinct_and_seeded():
    first = build_sentences(50, seed=3)
    assert first == build_sentences(50, seed=3)
    assert len(set(first)) == 50
    assert all(s[-1] in ".!?" and 6 <= len(s.split()) <= 40 for s in first)
    assert build_sentences(50, seed=4) != first
    with pytest.raises(RetrievalBenchError, match="--stimuli"):
        build_sentences(10**7)


def test_make_subjects_extends_the_defaults_with_distinct_names():
    subjects = make_subjects(5)
    assert len({s.name for s in subjects}) == 5
    assert subjects[:3] == list(simulator.DEFAULT_SUBJECTS)
    with pytest.raises(RetrievalBenchError, match="at least 2"):
        make_subjects(1)


def test_bench_runs_both_protocols_and_reports_every_row():
    result = sim_retrieval(subjects=2, stimuli=60, seeds=[0, 1], epochs=30, embed=fake_embed)
    assert result["ways"] == 20 and result["test_stimuli"] == 20 and result["train_stimuli"] == 40
    assert result["chance"] == {"top1": 1 / 20, "top5": 5 / 20, "two_way": 0.5}
    for protocol in ("intra", "inter"):
        for metric in ("top1", "top5", "two_way"):
            cell = result["results"][protocol][metric]
            assert len(cell["per_seed"]) == 2 and all(0 <= v <= 1 for v in cell["per_seed"])
            assert cell["mean"] == pytest.approx(np.mean(cell["per_seed"]))
    intra, inter = result["results"]["intra"], result["results"]["inter"]
    # the same subject's mixing is learnable from 40 pairs; another subject's mixing is not
    assert intra["top1"]["mean"] > 3 * result["chance"]["top1"]
    assert intra["two_way"]["mean"] > inter["two_way"]["mean"]
    table = format_table(result)
    assert "20-way top-1" in table and "intra" in table and "inter" in table and "chance" in table


def test_cli_task_writes_json(tmp_path, monkeypatch, plugin):
    monkeypatch.setattr(simulator, "sentence_embeddings", fake_embed)
    out = tmp_path / "sim.json"
    result = CliRunner().invoke(
        build_cli(),
        ["crossmodal", "bench", "--task", "sim-retrieval", "--subjects", "2", "--stimuli", "30", "--seeds", "1",
         "--epochs", "3", "--shared", "0.5", "--json", str(out), "--plot", str(tmp_path / "sim.png")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "10-way top-1" in result.output and "inter" in result.output
    data = json.loads(out.read_text())
    assert data["task"] == "sim-retrieval" and data["seeds"] == [0] and data["subjects"] == ["sim-s1", "sim-s2"]
    assert set(data["results"]) == {"intra", "inter"}
    assert data["shared"] == 0.5 and "shared mixing 0.5" in result.output
    assert (tmp_path / "sim.png").read_bytes()[:4] == b"\x89PNG"


def test_sentence_embeddings_without_a_model_says_what_to_install(monkeypatch):
    import builtins

    from crossedge.core.errors import CrossedgeError

    real_import = builtins.__import__

    def no_models(name, *args, **kwargs):
        if name.startswith(("crossedge.retrieval", "transformers")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_models)
    with pytest.raises(CrossedgeError, match="pip install crossedge-retrieval"):
        simulator.sentence_embeddings(["a sentence."])
