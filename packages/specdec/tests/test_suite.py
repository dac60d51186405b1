import json
import warnings

import pytest

from crossedge.core.datasets import MissingSourceWarning
from crossedge.specdec import suite
from crossedge.specdec.errors import SpecdecError


def test_default_suite_has_eight_prompts_per_task(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path))
    prompts = suite.default_suite()
    for task in suite.TASKS:
        assert sum(p.task == task for p in prompts) >= 8, task
    assert all(len(p.turns) == 2 for p in prompts if p.task in ("multi-turn", "redundant-turn"))
    code = next(p for p in prompts if p.task == "code-editing")
    assert "def " in code.turns[0] and "```python" in code.turns[0]
    cached = list((tmp_path / "specdec").glob("suite-default-*.json"))
    assert len(cached) == 1
    assert suite.default_suite() == prompts  # read back from the cache


def test_missing_source_is_skipped_with_a_warning_naming_it(monkeypatch, tmp_path):
    monkeypatch.setattr(suite, "LICENSES", tmp_path / "no-such-dir")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompts = suite.materialize_default_suite()
    messages = [str(w.message) for w in caught if issubclass(w.category, MissingSourceWarning)]
    assert any("no-such-dir/Apache-2.0" in m for m in messages)
    assert not any(p.prompt_id.startswith("license-") for p in prompts)
    assert any(p.task == "summarization" for p in prompts)


def test_spec_bench_reader(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["a", "b"]}) + "\n\n")
    (prompt,) = suite.read_spec_bench(path)
    assert (prompt.task, prompt.prompt_id, prompt.turns) == ("writing", "81", ("a", "b"))
    path.write_text('{"question_id": 1}\n')
    with pytest.raises(SpecdecError, match=":1 is not a Spec-Bench question"):
        suite.read_spec_bench(path)


def test_spec_bench_rows_without_turns_are_refused_with_their_line(tmp_path):
    path = tmp_path / "question.jsonl"
    good = json.dumps({"question_id": 1, "category": "qa", "turns": ["hi"]})
    for turns in ([], [""], [3], ["ok", {"text": "x"}]):
        path.write_text(good + "\n" + json.dumps({"question_id": 2, "category": "qa", "turns": turns}) + "\n")
        with pytest.raises(SpecdecError, match=r"question.jsonl:2: question '2' needs 'turns' to be a non-empty list"):
            suite.read_spec_bench(path)


def test_binary_prompts_file_is_one_clear_error(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(SpecdecError, match="is not UTF-8 text .*Spec-Bench question.jsonl"):
        suite.read_spec_bench(path)


def test_limit_per_task():
    prompts = [suite.SuitePrompt(t, str(i), ("x",)) for i, t in enumerate("aabbbc")]
    assert [p.prompt_id for p in suite.limit_per_task(prompts, 1)] == ["0", "2", "5"]
    with pytest.raises(SpecdecError):
        suite.limit_per_task(prompts, 0)


def test_source_documents_name_the_corpus_documents_the_suite_reads():
    from crossedge.specdec.exit_head import corpus_texts

    ids = suite.source_documents()
    assert {"pydoc-topics/for", "pydoc-topics/truth", "common-licenses/GPL-3"} <= ids
    texts = corpus_texts(("pydoc-topics",))
    kept = corpus_texts(("pydoc-topics",), exclude=ids)
    topics = sum(1 for i in ids if i.startswith("pydoc-topics/"))
    assert len(kept) == len(texts) - topics
    for_loops = suite.pydoc_excerpt("for", 0, 200)
    assert any(for_loops in text for text in texts) and not any(for_loops in text for text in kept)
