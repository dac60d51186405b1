"""Conformance suite for text datasets: subclass :class:`TextDatasetConformance` and give a ``dataset`` fixture.

::

    class TestMyDataset(TextDatasetConformance):
        @pytest.fixture
        def dataset(self, tmp_path):
            return my_corpus(tmp_path)

Array datasets have their own suite, :mod:`crossedge.core.conformance.array_dataset`.
"""

from __future__ import annotations

import pytest

from crossedge.core.datasets import Dataset, Document


class TextDatasetConformance:
    """Checks every text dataset passes: non-empty documents with unique ids, non-empty text and a stable order."""

    @pytest.fixture
    def dataset(self) -> Dataset:
        """The dataset under test; a subclass must override this fixture."""
        raise NotImplementedError("a TextDatasetConformance subclass defines a `dataset` fixture")

    def test_is_a_dataset_with_a_name(self, dataset):
        assert isinstance(dataset, Dataset), f"{type(dataset).__name__} does not subclass crossedge's Dataset"
        assert isinstance(dataset.name, str) and dataset.name, "set a non-empty `name`"

    def test_has_documents(self, dataset):
        docs = dataset.documents()
        assert len(docs) > 0, "documents() is empty"
        assert all(isinstance(d, Document) for d in docs), "documents() must give crossedge Document objects"

    def test_ids_are_unique(self, dataset):
        ids = [d.id for d in dataset.documents()]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        assert repeated == [], f"ids {repeated} name more than one document"

    def test_texts_are_non_empty_strings(self, dataset):
        bad = [d.id for d in dataset.documents() if not isinstance(d.text, str) or not d.text.strip()]
        assert bad == [], f"documents {bad} have empty or non-string text"

    def test_two_calls_give_the_same_documents_in_the_same_order(self, dataset):
        first = [(d.id, d.text) for d in dataset.documents()]
        again = [(d.id, d.text) for d in dataset.documents()]
        assert again == first, "documents() changed between two calls"
