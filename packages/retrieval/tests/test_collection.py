import textwrap

from crossedge.retrieval.collection import (
    build_code_search,
    extract_functions,
    first_sentence,
    read_beir,
    split_of,
    write_beir,
)

SOURCE = textwrap.dedent(
    '''
    def public(a, b):
        """Add two numbers. More text here.

        Details.
        """
        return a + b


    def _private():
        """Hidden function."""
        return 1


    class Box:
        def get_value(self):
            """Return the stored value."""
            return self.value

        def nodoc(self):
            return 0


    def outer():
        """Outer function with a nested one."""

        def inner():
            """Nested functions are skipped."""
            return 2

        return inner
    '''
)


def test_extract_functions_strips_docstrings():
    found = {ex.id: ex for ex in extract_functions(SOURCE, "mod")}
    assert set(found) == {"mod:public", "mod:Box.get_value", "mod:outer"}
    assert found["mod:public"].query == "Add two numbers."
    assert found["mod:public"].document == "def public(a, b):\n    return a + b"
    assert '"""' not in found["mod:Box.get_value"].document
    assert "inner" in found["mod:outer"].document
    assert first_sentence("Return x.  Then y.\n\nMore") == "Return x."


def make_library(root, modules=12, functions=5):
    for m in range(modules):
        body = "\n".join(
            f'def f{m}_{i}(x):\n    """Compute value {m} {i} quickly."""\n    return x + {m * 100 + i}\n'
            for i in range(functions)
        )
        (root / f"mod{m}.py").write_text(body)
    (root / "test").mkdir()
    (root / "test" / "test_skip.py").write_text('def t():\n    """Skipped test helper."""\n    return 1\n')


def test_split_is_by_module_and_disjoint(tmp_path):
    make_library(tmp_path)
    splits = build_code_search(tmp_path, test_min=15, test_fraction=0.3, dev_fraction=0.2)
    modules = {s: set(c.meta["modules"]) for s, c in splits.items()}
    assert not (modules["train"] & modules["dev"]) and not (modules["train"] & modules["test"])
    assert not (modules["dev"] & modules["test"])
    assert sum(len(c.corpus) for c in splits.values()) == 60  # the test folder was skipped
    assert len(splits["test"].corpus) >= 15
    for split, coll in splits.items():
        for doc_id, doc in coll.corpus.items():
            assert split_of(splits)[doc["module"]] == split
            assert coll.qrels[f"q:{doc_id}"] == {doc_id: 1}


def test_beir_round_trip(tmp_path):
    make_library(tmp_path / "lib") if (tmp_path / "lib").mkdir() is None else None
    test = build_code_search(tmp_path / "lib", test_min=10)["test"]
    write_beir(test, tmp_path / "beir")
    assert (tmp_path / "beir" / "qrels" / "test.tsv").read_text().startswith("query-id\tcorpus-id\tscore\n")
    back = read_beir(tmp_path / "beir")
    assert back.queries == test.queries and back.qrels == test.qrels
    assert {k: v["text"] for k, v in back.corpus.items()} == {k: v["text"] for k, v in test.corpus.items()}


def test_missing_beir_files_are_a_clear_error(tmp_path):
    import pytest

    from crossedge.retrieval.collection import CollectionError

    with pytest.raises(CollectionError, match="corpus.jsonl"):
        read_beir(tmp_path)
