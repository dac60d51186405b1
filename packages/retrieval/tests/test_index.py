import json

import pytest
import torch

from crossedge.retrieval.index import DenseIndex, IndexCorruptedError


def make_index():
    emb = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    docs = [{"text": f"doc {i}", "path": f"f{i}.py"} for i in range(5)]
    return DenseIndex(emb, [f"d{i}" for i in range(5)], docs, model="tiny")


def test_search_brute_force_finds_itself():
    index = make_index()
    hits = index.search(index.embeddings[[3, 1]], k=2)
    assert [h[0][0] for h in hits] == [3, 1]
    assert hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[0][0][1] >= hits[0][1][1]


def test_save_load_round_trip(tmp_path):
    index = make_index()
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx")
    assert loaded.ids == index.ids and loaded.model == "tiny"
    assert loaded.documents[2] == {"text": "doc 2", "path": "f2.py"}
    assert torch.equal(loaded.embeddings, index.embeddings)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["version"] == 1 and set(manifest["files"]) == {"embeddings.safetensors", "documents.jsonl"}


def test_corrupted_embeddings_fail_checksum(tmp_path):
    make_index().save(tmp_path / "idx")
    path = tmp_path / "idx" / "embeddings.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptedError, match="SHA-256.*crossedge retrieval index"):
        DenseIndex.load(tmp_path / "idx")


def test_truncated_file_is_reported(tmp_path):
    make_index().save(tmp_path / "idx")
    path = tmp_path / "idx" / "embeddings.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(IndexCorruptedError, match="truncated"):
        DenseIndex.load(tmp_path / "idx")


def test_missing_manifest_and_wrong_version(tmp_path):
    with pytest.raises(IndexCorruptedError, match="not a crossedge index"):
        DenseIndex.load(tmp_path)
    make_index().save(tmp_path / "idx")
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptedError, match="version 99"):
        DenseIndex.load(tmp_path / "idx")


def test_mismatched_shapes_are_reported(tmp_path):
    make_index().save(tmp_path / "idx")
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["count"] = 6
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptedError, match="manifest says 6"):
        DenseIndex.load(tmp_path / "idx")
    with pytest.raises(IndexCorruptedError, match="width 4"):
        make_index().search(torch.zeros(1, 4))


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


def _set(manifest, key, value):
    manifest[key] = value
    return manifest


def _drop_bytes(manifest):
    del manifest["files"]["documents.jsonl"]["bytes"]
    return manifest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: [m], "is not a crossedge retrieval index manifest"),
        (lambda m: _set(m, "files", ["embeddings.safetensors"]), "'files' is not an object"),
        (lambda m: _set(m, "files", {}), "'files' has no entry for embeddings.safetensors"),
        (_drop_bytes, "'files'/documents.jsonl needs a 'sha256' string and a 'bytes' integer"),
        (lambda m: {k: v for k, v in m.items() if k != "count"}, "'count' is None, not a non-negative integer"),
        (lambda m: _set(m, "dim", "8"), "'dim' is '8'"),
        (lambda m: _set(m, "info", "paths"), "malformed 'model' or 'info'"),
    ],
)
def test_structural_errors_in_the_manifest_are_one_line(tmp_path, edit, message):
    make_index().save(tmp_path / "idx")
    _edit_manifest(tmp_path / "idx", edit)
    with pytest.raises(IndexCorruptedError, match=message) as caught:
        DenseIndex.load(tmp_path / "idx")
    assert "crossedge retrieval index" in str(caught.value)  # the rebuild hint


def test_a_document_line_without_an_id_is_reported(tmp_path):
    from crossedge.core.cache import sha256_file

    make_index().save(tmp_path / "idx")
    docs = tmp_path / "idx" / "documents.jsonl"
    lines = docs.read_text().splitlines()
    docs.write_text("\n".join([lines[0], '{"text": "no id"}', *lines[2:]]) + "\n")

    def refresh(manifest):  # a consistent manifest, so the line itself is what fails
        manifest["files"]["documents.jsonl"] = {"sha256": sha256_file(docs), "bytes": docs.stat().st_size}
        return manifest

    _edit_manifest(tmp_path / "idx", refresh)
    with pytest.raises(IndexCorruptedError, match='documents.jsonl line 2 is not an object with a string "id"'):
        DenseIndex.load(tmp_path / "idx")


def test_save_refuses_to_overwrite_a_foreign_manifest(tmp_path):
    from crossedge.retrieval.index import IndexOutputError

    (tmp_path / "webapp").mkdir()
    (tmp_path / "webapp" / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(IndexOutputError, match="not written by crossedge"):
        make_index().save(tmp_path / "webapp")
    assert json.loads((tmp_path / "webapp" / "manifest.json").read_text()) == {"name": "my web app"}


def test_embedding_progress_counts_documents(monkeypatch):
    import io
    import sys

    from crossedge.retrieval.scorers import BiEncoder
    from crossedge.retrieval.testing import tiny_bert

    model, tokenizer = tiny_bert()
    err = io.StringIO()
    err.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", err)
    BiEncoder.from_encoder(model, tokenizer).encode(["some text"] * 70, batch_size=32, progress=True)
    shown = err.getvalue().replace("\r", "\n")
    assert "doc/s" in shown and "/70 " in shown  # the total is the documents, not the batches
