"""What every part of Zipper shares: the format, the error, the train split and batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossedge.core.errors import CrossedgeError

from .. import asr

FORMAT = "crossedge-zipper-v1"
WEIGHTS = "model.safetensors"
TEXT_TOWER = "smollm2-135m"
IGNORE = -100


class ZipperError(CrossedgeError, ValueError):
    """A Zipper model that cannot be built, trained, saved or loaded as asked."""


def feature_batch(corpus: asr.AsrCorpus, chosen: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    from .. import speech

    return speech.pad_batch([corpus.features[i] for i in chosen])


def train_split(corpus: asr.AsrCorpus) -> list[int]:
    train = corpus.indices("train")
    if not train:
        raise ZipperError("the corpus has no train utterances; build it with more texts")
    return train
