"""Built-in corpora and the deterministic split."""

import pytest

from crossedge.core.datasets import Document, MissingSourceWarning, get_dataset, read_text_files, split_documents


def test_pydoc_topics_come_from_the_interpreter():
    docs = get_dataset("pydoc-topics").documents()
    assert len(docs) > 50
    assert any(d.id == "pydoc-topics/if" for d in docs)
    assert all(d.text.strip() for d in docs)


def test_split_is_disjoint_and_stable():
    docs = [Document(f"d{i}", "text", "test") for i in range(200)]
    first, second = split_documents(docs, 0.25)
    assert {d.id for d in first}.isdisjoint({d.id for d in second})
    assert len(first) + len(second) == 200
    assert 20 < len(first) < 80
    again, _ = split_documents(list(reversed(docs)), 0.25)
    assert {d.id for d in again} == {d.id for d in first}
    fewer, _ = split_documents(docs[:100], 0.25)
    assert {d.id for d in fewer} <= {d.id for d in first}


def test_missing_source_file_is_skipped_with_a_warning(tmp_path):
    present = tmp_path / "a.txt"
    present.write_text("hello")
    with pytest.warns(MissingSourceWarning, match="nope.txt"):
        docs = read_text_files([present, tmp_path / "nope.txt"], "t")
    assert [d.id for d in docs] == ["t/a.txt"]
