"""Core's model sources, a tiny model format, benchmarks and text datasets pass the plugins' conformance suites."""

import pytest
import torch

from crossedge.core.bench import Benchmark, BenchmarkReport, measure
from crossedge.core.conformance.benchmark import BenchmarkConformance
from crossedge.core.conformance.dataset import TextDatasetConformance
from crossedge.core.conformance.model_format import ModelFormatConformance
from crossedge.core.conformance.model_source import ModelSourceConformance
from crossedge.core.contracts.model_format import ModelFormat
from crossedge.core.datasets import Document, TextCorpus, read_text_files
from crossedge.core.errors import CrossedgeError, ModelSourceError
from crossedge.core.sources import CachedSource, LoadedModel, LocalFolderSource
from crossedge.core.testing import save_tiny_causal_lm, tiny_causal_lm


class TinyCachedSource(CachedSource):
    """A cached source that builds a tiny Llama into the cache."""

    name = "tiny-conformance"
    description = "tiny llama built into the cache"

    def build(self, workdir):
        save_tiny_causal_lm(workdir, seed=0)
        return {"built": "tiny"}


class TestTinyCachedSource(ModelSourceConformance):
    @pytest.fixture
    def source(self, cache):
        return TinyCachedSource()


class TestLocalFolderSource(ModelSourceConformance):
    @pytest.fixture
    def source(self, cache, tmp_path):
        return LocalFolderSource(save_tiny_causal_lm(tmp_path / "tiny", seed=1))


class PickledFolderSource(LocalFolderSource):
    """A source that wrongly ships a pickled weights file beside its safetensors."""

    def pull(self, *, force=False):
        folder = super().pull(force=force)
        (folder / "pytorch_model.bin").write_bytes(b"pickle")
        return folder


def test_the_model_source_suite_catches_pickled_weights(cache, tmp_path):
    source = PickledFolderSource(save_tiny_causal_lm(tmp_path / "tiny"))
    with pytest.raises(AssertionError, match="pickled"):
        ModelSourceConformance().test_pull_gives_a_folder_of_config_and_safetensors(source)


class TinyForwardBenchmark(Benchmark):
    """Times forward passes of a tiny in-memory Llama: a benchmark small enough for tests."""

    name = "tiny-forward"
    description = "forward passes of a tiny random llama"

    def run(self, *, tokens: int = 8, repeats: int = 3) -> BenchmarkReport:
        model, _ = tiny_causal_lm("llama", seed=0)
        ids = torch.arange(1, tokens + 1).unsqueeze(0)
        with torch.no_grad():
            timing = measure(lambda: model(ids), name="forward", warmup=1, repeats=repeats)
        return BenchmarkReport(
            benchmark=self.name,
            rows=[{"step": "forward", "tokens": tokens, **timing.to_dict()}],
            summary={"forward_median_s": timing.median},
        )


class TestTinyForwardBenchmark(BenchmarkConformance):
    @pytest.fixture
    def benchmark(self):
        return TinyForwardBenchmark()

    @pytest.fixture
    def options(self):
        return {"tokens": "4", "repeats": "2"}


class LenientBenchmark(TinyForwardBenchmark):
    """Takes ``**options`` and ignores keys it does not know: what the suite must catch."""

    def run(self, **options) -> BenchmarkReport:
        return super().run(tokens=int(options.get("tokens", 8)), repeats=int(options.get("repeats", 3)))


def test_the_benchmark_suite_catches_ignored_unknown_options():
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        BenchmarkConformance().test_an_unknown_option_is_refused_with_a_crossedge_error(
            LenientBenchmark(), {"repeats": "1"}
        )


class TestTextCorpusFromFiles(TextDatasetConformance):
    @pytest.fixture
    def dataset(self, tmp_path):
        paths = []
        for i, text in enumerate(["first file\n", "second file\n", "third file\n"]):
            path = tmp_path / f"doc{i}.txt"
            path.write_text(text)
            paths.append(path)
        return TextCorpus("tmp-files", lambda: read_text_files(paths, "tmp"), description="three tmp files")


def test_the_dataset_suite_catches_repeated_ids():
    corpus = TextCorpus("dupes", lambda: [Document("a", "one", "x"), Document("a", "two", "y")])
    with pytest.raises(AssertionError, match="more than one"):
        TextDatasetConformance().test_ids_are_unique(corpus)


class MarkedFolderFormat(ModelFormat):
    """A transformers folder with a marker file; damaged weights become a ModelSourceError."""

    name = "marked-folder"
    description = "tiny test format: a transformers folder marked by marked.json"
    marker = "marked.json"

    def load(self, folder, *, name, source, task="causal-lm", **kwargs):
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
        except Exception as exc:
            raise ModelSourceError(f"cannot load {folder}: {exc}; re-save the model") from exc
        return LoadedModel(name=name, model=model, tokenizer=None, path=folder, source=source)


class TestMarkedFolderFormat(ModelFormatConformance):
    @pytest.fixture
    def model_format(self):
        return MarkedFolderFormat()

    @pytest.fixture
    def folder(self, tmp_path):
        folder = save_tiny_causal_lm(tmp_path / "marked")
        (folder / "marked.json").write_text("{}")
        return folder


class TracebackFormat(MarkedFolderFormat):
    """Lets transformers' own exception escape on damaged weights: what the suite must catch."""

    def load(self, folder, *, name, source, task="causal-lm", **kwargs):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
        return LoadedModel(name=name, model=model, tokenizer=None, path=folder, source=source)


def test_the_model_format_suite_catches_a_traceback_on_damaged_weights(tmp_path):
    folder = save_tiny_causal_lm(tmp_path / "marked")
    with pytest.raises(Exception) as caught:
        ModelFormatConformance().test_corrupted_weights_are_refused_with_a_crossedge_error(
            TracebackFormat(), folder, tmp_path
        )
    assert not isinstance(caught.value, CrossedgeError)
