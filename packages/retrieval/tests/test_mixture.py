"""The training mixture: its readers, decontamination against evaluation collections, and the splits."""

import gzip

import pytest

from crossedge.retrieval import mixture as M
from crossedge.retrieval.collection import Collection, CollectionError, read_beir

README = """\
Frobnicator
===========

The frobnicator turns widgets into gadgets. It reads a widget file and writes one gadget per line,
keeping the order of the input and the comments between widgets.

Installing
----------

* bpo-1234: Build it with make and install the binary into a folder on your path, then run the tests
  that come with it to check the build against your compiler and your libraries.
* short item.

## Bugs

Report bugs by mail. Say which version you run, what you typed, what you expected to happen and what
happened instead, and attach the smallest widget file that shows the problem.
"""


def test_sections_split_at_underlined_and_markdown_headings():
    got = M.sections(README)
    assert [h for h, _ in got] == ["Frobnicator", "Installing", "Bugs"]
    assert got[0][1].startswith("The frobnicator turns widgets")
    assert got[2][1].startswith("Report bugs by mail.")


def test_blocks_strip_bullets_and_issue_numbers():
    body = dict(M.sections(README))["Installing"]
    assert M.blocks(body) == [
        "Build it with make and install the binary into a folder on your path, then run the tests "
        "that come with it to check the build against your compiler and your libraries.",
        "short item.",
    ]


def test_first_sentence_is_split_from_the_rest():
    assert M.split_first_sentence("One two. Three four.  Five.") == ("One two.", "Three four. Five.")
    assert M.split_first_sentence("no end here") == ("no end here", "")


def test_a_readme_gives_inverse_cloze_pairs_titled_with_package_and_heading(tmp_path):
    path = tmp_path / "README.gz"
    path.write_bytes(gzip.compress(README.encode()))
    pairs = M.doc_file_pairs(path, "frob")
    assert [(p.query, p.title) for p in pairs] == [
        ("The frobnicator turns widgets into gadgets.", "frob: Frobnicator"),
        ("Report bugs by mail.", "frob: Bugs"),
    ]
    assert pairs[0].text.startswith("It reads a widget file") and pairs[0].group == str(path)
    # The install item has no second sentence: nothing to retrieve, so no pair.
    assert all("make" not in p.query for p in pairs)


def test_usr_share_doc_files_skip_debian_notes(tmp_path):
    (tmp_path / "pkg").mkdir()
    for name in ("README", "NEWS.gz", "README.Debian", "changelog.gz", "copyright"):
        (tmp_path / "pkg" / name).write_text("x")
    assert [p.name for p, pkg in M.usr_share_doc_files(tmp_path)] == ["NEWS.gz", "README"]
    assert M.usr_share_doc_files(tmp_path / "missing") == []


SOURCE = '''
def spread(values, width):
    """Spread values evenly over a width.

    The first and last value land on the edges and the rest at equal steps between them, so a
    list of two values gives the two edges of the width and nothing in between.
    """


def _private():
    """Hidden helper that is never a query.

    It has a long enough body to be a document if it were public, which it is not at all.
    """


def call(x):
    """call(x, y)

    A signature as the summary is not a query anyone types into a search box for sure.
    """
'''


def test_docstrings_give_summary_to_body_pairs_of_public_names():
    pairs = M.docstring_pairs(SOURCE, "pkg/mod.py")
    assert [(p.query, p.title) for p in pairs] == [("Spread values evenly over a width.", "spread")]
    assert pairs[0].text.startswith("The first and last value land on the edges")
    assert M.docstring_pairs("def broken(:", "x.py") == []


def test_pydoc_topics_use_the_heading_as_query():
    topics = {
        "kw": 'The "kw" statement\n******************\n\n' + "It does one thing and it does it well. " * 4,
    }
    pairs = M.pydoc_topic_pairs(topics)
    assert [(p.query, p.group) for p in pairs] == [('The "kw" statement', "pydoc:kw")]


WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
]


def _pair(i, text, group=None, query=None):
    return M.Pair("docstrings", group or f"g{i}", query or f"question number {i} here", "", text)


def _evaluation(text):
    return Collection({"e1": {"title": "", "text": text}}, {"q": "x"}, {"q": {"e1": 1}}, name="eval")


def test_decontamination_drops_a_shared_run_of_thirteen_words_only():
    evaluation = _evaluation(" ".join(WORDS))
    shared = _pair(0, "prefix words " + " ".join(WORDS[:13]) + " and a tail of other words")
    almost = _pair(1, "prefix words " + " ".join(WORDS[:12]) + " and a tail of other words")
    query_copy = _pair(2, "an unrelated body " * 5, query=" ".join(WORDS[2:15]))
    kept, dropped = M.decontaminate([shared, almost, query_copy], [evaluation])
    assert kept == [almost] and dropped == 2


def _gathered(n=60, groups=12):
    body = "words that make a long enough document body for the reader to keep it around here"
    return {"docstrings": [_pair(i, f"{body} {i}", group=f"file{i % groups}") for i in range(n)]}


def test_the_mixture_is_deterministic_splits_by_file_and_keeps_evaluation_text_out():
    gathered = _gathered()
    leak = _pair(99, " ".join(WORDS) + " then more", group="leaky")
    gathered["docstrings"].append(leak)
    evaluation = _evaluation("intro " + " ".join(WORDS))
    a = M.build_mixture(gathered, evaluation=[evaluation], dev_fraction=0.25, seed=3)
    b = M.build_mixture(gathered, evaluation=[evaluation], dev_fraction=0.25, seed=3)
    assert a["train"].corpus == b["train"].corpus and a["dev"].queries == b["dev"].queries
    train_groups = {d["group"] for d in a["train"].corpus.values()}
    dev_groups = {d["group"] for d in a["dev"].corpus.values()}
    assert train_groups and dev_groups and not train_groups & dev_groups
    assert 0.25 <= len(a["dev"].corpus) / 60 <= 0.25 + 5 / 60  # whole files, so a file's worth over at most
    assert leak.doc_id not in a["train"].corpus and leak.doc_id not in a["dev"].corpus
    assert a["train"].meta["sources"]["docstrings"]["dropped_as_evaluation_text"] == 1
    for c in a.values():
        for qid, judged in c.qrels.items():
            assert list(judged) == [qid[2:]] and qid in c.queries
    other = M.build_mixture(gathered, evaluation=[evaluation], dev_fraction=0.25, seed=4)
    assert other["dev"].corpus != a["dev"].corpus


def test_caps_bound_each_source_and_each_file():
    gathered = _gathered(n=60, groups=3)
    caps = M.MixtureCaps(docstrings=10, per_group=6)
    out = M.build_mixture(gathered, caps=caps, dev_fraction=0.3)
    assert len(out["train"].corpus) <= 10
    for c in out.values():
        per_file = {}
        for d in c.corpus.values():
            per_file[d["group"]] = per_file.get(d["group"], 0) + 1
        assert max(per_file.values()) <= 6


def test_bad_settings_and_empty_sources_are_refused():
    with pytest.raises(CollectionError, match="unknown mixture source"):
        M.gather(["wikipedia"])
    with pytest.raises(CollectionError, match="dev_fraction"):
        M.build_mixture(_gathered(), dev_fraction=1.0)
    with pytest.raises(CollectionError, match="split is empty"):
        M.build_mixture({"docstrings": []})


def test_the_written_mixture_reads_back_as_beir(tmp_path):
    out = M.build_mixture(_gathered(), dev_fraction=0.2)
    folder = M.write_mixture(out, tmp_path / "mix")
    train = read_beir(folder / "train", split="train")
    assert train.queries == out["train"].queries and set(train.corpus) == set(out["train"].corpus)
    assert read_beir(folder / "dev", split="dev").qrels == out["dev"].qrels
    assert (folder / "mixture.json").is_file()


def test_the_mixture_command_writes_train_and_dev_and_keeps_foreign_folders(tmp_path, plugin, monkeypatch):
    from click.testing import CliRunner

    from crossedge.core.cli import build_cli
    from crossedge.retrieval.collection import write_beir

    monkeypatch.setattr(M, "gather", lambda sources: _gathered())
    evaluation = tmp_path / "eval"
    write_beir(_evaluation(" ".join(WORDS)), evaluation)
    out = tmp_path / "mix"
    args = ["retrieval", "mixture", "--out", str(out), "--exclude", str(evaluation), "--dev-fraction", "0.2"]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "--train-collection" in result.output and read_beir(out / "dev", split="dev").queries
    again = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert again.exit_code == 0, again.output  # over its own earlier output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(build_cli(), ["retrieval", "mixture", "--out", str(tmp_path / "other")])
    assert refused.exit_code == 1 and "not empty" in refused.output
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
