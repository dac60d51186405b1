import textwrap

import pytest

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


def _beir(tmp_path, corpus, queries, qrels):
    """A BEIR folder from raw file contents (lines are written as given)."""
    (tmp_path / "qrels").mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text(corpus)
    (tmp_path / "queries.jsonl").write_text(queries)
    (tmp_path / "qrels" / "test.tsv").write_text(qrels)
    return tmp_path


GOOD_CORPUS = '{"_id": "d1", "text": "read a file"}\n{"_id": "d2", "text": "sort a list"}\n'
GOOD_QUERIES = '{"_id": "q1", "text": "file reader"}\n'
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"


def test_duplicate_document_ids_are_refused_with_the_line(tmp_path):
    from crossedge.retrieval.collection import CollectionError

    corpus = GOOD_CORPUS + '{"_id": "d1", "text": "another document with the same id"}\n'
    folder = _beir(tmp_path, corpus, GOOD_QUERIES, GOOD_QRELS)
    with pytest.raises(CollectionError, match=r"corpus.jsonl line 3: duplicate document id 'd1' \(first on line 1\)"):
        read_beir(folder)


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "message"),
    [
        ('{"text": "no id"}\n', GOOD_QUERIES, GOOD_QRELS, r'corpus.jsonl line 1: the document has no "_id"'),
        (GOOD_CORPUS, GOOD_QUERIES, "q1\td1\thigh\n", r"test.tsv line 1: relevance score 'high' is not an integer"),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q1\td2\t0.5\n", r"test.tsv line 3: relevance score '0.5'"),
        (GOOD_CORPUS, '{"_id": "q1", "title": "no text"}\n', GOOD_QRELS, r"queries.jsonl line 1: query 'q1' has no"),
        ("", GOOD_QUERIES, GOOD_QRELS, r"corpus.jsonl holds no documents"),
        ("\n\n", GOOD_QUERIES, GOOD_QRELS, r"corpus.jsonl holds no documents"),
        (GOOD_CORPUS + '["d3", "a list"]\n', GOOD_QUERIES, GOOD_QRELS, r"corpus.jsonl line 3 is a JSON list"),
        (GOOD_CORPUS, '"just a string"\n', GOOD_QRELS, r"queries.jsonl line 1 is a JSON str"),
        (GOOD_CORPUS, GOOD_QUERIES + GOOD_QUERIES, GOOD_QRELS, r"line 2: duplicate query id 'q1'"),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q1\td2\n", r"test.tsv line 3: expected query-id, corpus-id, score"),
    ],
)
def test_malformed_beir_records_are_one_line_errors(tmp_path, corpus, queries, qrels, message):
    from crossedge.retrieval.collection import CollectionError

    with pytest.raises(CollectionError, match=message):
        read_beir(_beir(tmp_path, corpus, queries, qrels))


def test_malformed_beir_is_one_red_line_on_the_command_line(tmp_path, plugin):
    from click.testing import CliRunner

    from crossedge.core.cli import build_cli

    folder = _beir(tmp_path / "beir", '{"text": "no id"}\n', GOOD_QUERIES, GOOD_QRELS)
    result = CliRunner().invoke(build_cli(), ["retrieval", "bench", "--collection", str(folder), "--methods", "bm25"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert 'line 1: the document has no "_id"' in result.output


def test_well_formed_beir_still_reads(tmp_path):
    back = read_beir(_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS))
    assert back.corpus == {"d1": {"text": "read a file"}, "d2": {"text": "sort a list"}}
    assert back.queries == {"q1": "file reader"} and back.qrels == {"q1": {"d1": 1}}
