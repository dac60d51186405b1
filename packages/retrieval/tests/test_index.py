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
