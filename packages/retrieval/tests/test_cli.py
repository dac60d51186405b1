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


def test_a_collection_under_a_skipped_folder_name_is_still_read(tmp_path):
    """Skipped names (build/, .nox/, venv/) count only below the folder given, not above it."""
    root = tmp_path / "build" / ".nox" / "project"
    make_folder(root)
    (root / "build").mkdir()
    (root / "build" / "generated.py").write_text("def generated():\n    return 1\n")
    assert {c.path for c in chunk_paths([root])} == {"pkg/config.py", "notes.md"}


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


def _index_args(tmp_path, *paths, out, extra=()):
    model, tok = tiny_bert(seed=0)
    if not (tmp_path / "bi").exists():
        BiEncoder(model, tok).save(tmp_path / "bi")
    return ("retrieval", "index", *map(str, paths), "--out", str(out), "--model", str(tmp_path / "bi"), *extra)


def test_index_into_its_own_input_folder_is_refused_and_writes_nothing(tmp_path, cli, plugin):
    webapp = make_folder(tmp_path / "webapp")
    (webapp / "manifest.json").write_text('{"name": "webapp", "start_url": "/"}\n')
    before = {p: p.read_bytes() for p in webapp.rglob("*") if p.is_file()}
    for extra in ((), ("--force",)):
        result = cli(*_index_args(tmp_path, webapp, out=webapp, extra=extra))
        assert result.exit_code == 1 and "is also an input folder" in result.output
    assert {p: p.read_bytes() for p in webapp.rglob("*") if p.is_file()} == before


def test_index_never_overwrites_a_file_it_did_not_write(tmp_path, cli, plugin):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "site"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "site"}\n')
    for extra in ((), ("--force",)):
        result = cli(*_index_args(tmp_path, src, out=out, extra=extra))
        assert result.exit_code == 1 and "manifest.json was not written by crossedge" in result.output
    assert (out / "manifest.json").read_text() == '{"name": "site"}\n'
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_index_beside_foreign_files_needs_force_and_keeps_them(tmp_path, cli, plugin):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = cli(*_index_args(tmp_path, src, out=out))
    assert refused.exit_code == 1 and "holds files crossedge did not write (notes.txt)" in refused.output
    assert "--force" in refused.output and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    forced = cli(*_index_args(tmp_path, src, out=out, extra=("--force",)))
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "mine"
    assert {"manifest.json", "embeddings.safetensors", "documents.jsonl", "model"} <= {p.name for p in out.iterdir()}


def test_rebuilding_an_index_replaces_only_its_own_files(tmp_path, cli, plugin):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "idx"
    assert cli(*_index_args(tmp_path, src, out=out)).exit_code == 0
    CrossEncoder(*tiny_bert(seed=0), seed=5).save(out / "cross-encoder")  # a reranker trained for this index
    (src / "extra.md").write_text("# More\n\nanother paragraph to index\n")
    again = cli(*_index_args(tmp_path, src, out=out))  # no --force needed over our own index
    assert again.exit_code == 0, again.output
    assert (out / "cross-encoder" / "scorer.json").exists()
    docs = [json.loads(line)["path"] for line in (out / "documents.jsonl").read_text().splitlines()]
    assert "extra.md" in docs


@pytest.mark.parametrize("flag", ["--k", "--depth"])
def test_search_refuses_a_non_positive_count(tmp_path, cli, plugin, flag):
    result = cli("retrieval", "search", str(tmp_path), "anything", flag, "-2")
    assert result.exit_code == 2 and "-2 is not in the range x>=1" in result.output


def test_search_index_api_refuses_a_negative_k(tmp_path):
    from crossedge.core import CrossedgeError
    from crossedge.retrieval.pipeline import search_index

    with pytest.raises(CrossedgeError, match="search needs k of at least 1, not -2"):
        search_index(tmp_path, "anything", k=-2)


def test_index_with_a_causal_lm_is_refused_before_it_loads(tmp_path, cli, plugin):
    from crossedge.core import hookimpl, registered
    from crossedge.core.sources import ModelSource

    class CausalSource(ModelSource):
        name, task, description = "tiny-llama", "causal-lm", "a causal LM"

        def load(self, **kwargs):
            raise AssertionError("the causal LM must not be loaded")

    class Models:
        @hookimpl
        def register_model_sources(self, register):
            register(CausalSource())

    src = make_folder(tmp_path / "src")
    with registered(Models(), name="causal-models"):
        result = cli("retrieval", "index", str(src), "--out", str(tmp_path / "idx"), "--model", "tiny-llama")
    assert result.exit_code == 1
    assert "tiny-llama is a causal language model (task causal-lm), not a text encoder" in result.output
    assert not (tmp_path / "idx").exists()


def test_index_with_a_causal_lm_folder_is_refused(tmp_path, cli, plugin):
    from crossedge.core.testing import save_tiny_causal_lm

    save_tiny_causal_lm(tmp_path / "llama", "llama")
    src = make_folder(tmp_path / "src")
    result = cli("retrieval", "index", str(src), "--out", str(tmp_path / "idx"), "--model", str(tmp_path / "llama"))
    assert result.exit_code == 1 and "is a causal language model (LlamaForCausalLM)" in result.output


def test_a_damaged_index_can_be_rebuilt_in_place_as_its_error_says(tmp_path, cli, plugin):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "idx"
    assert cli(*_index_args(tmp_path, src, out=out)).exit_code == 0
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:60])  # truncated
    damaged = cli("retrieval", "search", str(out), "read config")
    assert damaged.exit_code == 1 and "crossedge retrieval index PATH... --out" in damaged.output
    rebuilt = cli(*_index_args(tmp_path, src, out=out))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert cli("retrieval", "search", str(out), "read config", "--json").exit_code == 0


def test_collection_copy_refuses_a_folder_holding_other_files(tmp_path, cli, plugin):
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / "train" / "corpus.jsonl").write_text("my own corpus\n")
    result = cli("retrieval", "collection", "--out", str(out))
    assert result.exit_code == 1 and "holds no earlier copy of the collection" in result.output
    assert (out / "train" / "corpus.jsonl").read_text() == "my own corpus\n"
