import json
import textwrap

import pytest

from crossedge.retrieval.chunking import chunk_file, chunk_paths
from crossedge.retrieval.scorers import BiEncoder, CrossEncoder, UniEncoder
from crossedge.retrieval.testing import tiny_bert

PY = textwrap.dedent(
    '''
    """Module docstring."""
    import os

    def read_config(path):
        """Read a config file."""
        return open(path).read()


    class Store:
        def put(self, key, value):
            self.data[key] = value
    '''
)


@pytest.fixture
def cli():
    from click.testing import CliRunner

    from crossedge.core.cli import build_cli

    runner = CliRunner()
    return lambda *args: runner.invoke(build_cli(), list(args), catch_exceptions=False)


def make_folder(root):
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "config.py").write_text(PY)
    (root / "notes.md").write_text("# Setup\n\ninstall the tools first\n\n# Usage\n\nrun the search command\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


def test_python_chunks_follow_functions_and_classes(tmp_path):
    make_folder(tmp_path)
    chunks = chunk_file(tmp_path / "pkg" / "config.py", tmp_path)
    kinds = [(c.kind, c.text.splitlines()[0]) for c in chunks]
    assert ("function", "def read_config(path):") in kinds
    assert ("class", "class Store:") in kinds
    assert any(k == "module" and "import os" in t or k == "module" for k, t in kinds)
    func = next(c for c in chunks if c.kind == "function")
    assert (func.start_line, func.end_line) == (5, 7)
    assert func.path == "pkg/config.py"


def test_text_chunks_split_at_headings(tmp_path):
    make_folder(tmp_path)
    chunks = chunk_file(tmp_path / "notes.md", tmp_path)
    assert [c.text.splitlines()[0] for c in chunks] == ["# Setup", "# Usage"]
    assert {c.path for c in chunk_paths([tmp_path])} == {"pkg/config.py", "notes.md"}  # the png is skipped


def test_index_and_search_commands(tmp_path, cli, plugin):
    make_folder(tmp_path / "src")
    model, tok = tiny_bert(seed=0)
    BiEncoder(model, tok).save(tmp_path / "bi")
    result = cli(
        "retrieval", "index", str(tmp_path / "src"), "--out", str(tmp_path / "idx"), "--model", str(tmp_path / "bi")
    )
    assert result.exit_code == 0, result.output
    assert "indexed" in result.output
    result = cli("retrieval", "search", str(tmp_path / "idx"), "read config", "--k", "2", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and all("path" in h and "start_line" in h for h in hits)
    assert hits[0]["score"] >= hits[1]["score"]

    missing = cli("retrieval", "search", str(tmp_path / "idx"), "read config", "--rerank", "cross-encoder")
    assert missing.exit_code == 1 and "crossedge retrieval train cross-encoder" in missing.output

    for kind, name in ((CrossEncoder, "cross-encoder"), (UniEncoder, "uni-encoder")):
        kind(*tiny_bert(seed=0), seed=5).save(tmp_path / "idx" / name)
        result = cli("retrieval", "search", str(tmp_path / "idx"), "read config", "--rerank", name, "--json")
        assert result.exit_code == 0, result.output
        reranked = json.loads(result.stdout)
        assert all("first_stage_score" in h for h in reranked)
        assert [h["score"] for h in reranked] == sorted((h["score"] for h in reranked), reverse=True)


def test_search_on_a_damaged_index_is_one_red_line(tmp_path, cli, plugin):
    (tmp_path / "idx").mkdir()
    result = cli("retrieval", "search", str(tmp_path / "idx"), "anything")
    assert result.exit_code == 1
    assert "not a crossedge index" in result.output
