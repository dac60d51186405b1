"""Zipper: a speech tower zipped into a frozen text tower by gated cross-attention.

Two decoder-style towers. The speech tower (:class:`SpeechTower`) is small and trained here:
a strided convolution over :func:`asr.features` frames, sinusoidal positions and causal
pre-norm transformer layers, pretrained alone with a CTC head over characters
(:func:`train_speech_tower`). The text tower is a causal language model loaded through
:func:`crossedge.core.sources.load_model` (``smollm2-135m`` by default) and is frozen: its
parameters never require gradients, it stays in eval mode and it is never given to the
optimizer.

:class:`ZipperModel` inserts a :class:`GatedCrossAttention` block after every ``every``-th
text layer: pre-norm, cross-attention from the text hidden states (queries) to the speech
tower's states (keys and values, projected by each block), added through ``tanh(gate)``
with the gate initialised to 0, optionally followed by a gated feed-forward. The blocks are
attached as forward hooks on the text tower's decoder layers only for the duration of a
fused call; a text-only call runs the text tower's own forward with nothing attached, so
its logits are the text tower's, bit for bit, before and after any Zipper training.

Fusion training (:func:`train_zipper`) optimizes the blocks only: the speech tower stays as
CTC pretraining left it (``tune_speech=True`` fine-tunes it too). The prompt is the text
tower's begin token followed by the transcript's tokens in the tower's own tokenizer,
ending with its end token (SmolLM2's ``<|im_start|>`` / ``<|im_end|>``, ids 1 and 2).

:class:`SpeechOnlyAsr` is the speech-only baseline: the same speech tower and a small
character decoder (the encoder-decoder's layers) sized to about as many trainable
parameters as the Zipper blocks.

It implements the audit's :class:`crossedge.crossmodal.audit.CrossAttentionModel`; saved
folders hold ``model.safetensors`` with only what was trained (speech tower and blocks) and
``{"format": "crossedge-zipper-v1", "config", "speech", "text_tower"}`` in the metadata, where
``text_tower`` names the tower (a registered name or a folder) and fingerprints it so that
:func:`load` refuses a different one.
"""

from .baseline import SpeechOnlyAsr, count, matched_decoder, train_baseline
from .common import FORMAT, IGNORE, TEXT_TOWER, WEIGHTS, ZipperError
from .evaluation import evaluate, text_perplexity
from .files import check_save_folder, load, save
from .fused import (
    GatedCrossAttention,
    TowerTokenizer,
    ZipperConfig,
    ZipperModel,
    decoder_layers,
    token_batch,
    tower_identity,
    train_zipper,
)
from .speech_tower import SpeechTower, SpeechTowerConfig, train_speech_tower

__all__ = [
    "FORMAT", "IGNORE", "TEXT_TOWER", "WEIGHTS", "GatedCrossAttention", "SpeechOnlyAsr", "SpeechTower",
    "SpeechTowerConfig", "TowerTokenizer", "ZipperConfig", "ZipperError", "ZipperModel", "check_save_folder", "count",
    "decoder_layers", "evaluate", "load", "matched_decoder", "save", "text_perplexity", "token_batch",
    "tower_identity", "train_baseline", "train_speech_tower", "train_zipper",
]  # fmt: skip
