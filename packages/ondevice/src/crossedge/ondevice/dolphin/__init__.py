"""Long context as a modality (Dolphin): a frozen decoder reads a long context as a few memory embeddings.

The encoder is the decoder's own embeddings and first ``encoder_layers`` layers (frozen, weights shared; none by
default); a trained compressor pools every
``ratio`` context tokens into one embedding and projects it into the decoder's input-embedding space, so the
decoder reads ``ceil(L / ratio)`` positions instead of ``L``. Compared with full context and with truncation to
as many positions, on answer likelihood and on prefill wall and CPU time.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "HAND_QUESTIONS": ".data",
    "ItemTemplates": ".data",
    "QAItem": ".data",
    "TextSplit": ".data",
    "TokenStream": ".data",
    "load_split": ".data",
    "question_items": ".data",
    "recall_items": ".data",
    "tokenize_stream": ".data",
    "CONDITIONS": ".evaluation",
    "gap_closed": ".evaluation",
    "score_item": ".evaluation",
    "score_items": ".evaluation",
    "summarize": ".evaluation",
    "Corpus": ".experiment",
    "Trained": ".experiment",
    "eval_items": ".experiment",
    "load_decoder": ".experiment",
    "prepare_corpus": ".experiment",
    "trained_reader": ".experiment",
    "prefill_rows": ".latency",
    "speedups": ".latency",
    "ContextEncoder": ".model",
    "DolphinConfig": ".model",
    "DolphinReader": ".model",
    "MemoryCompressor": ".model",
    "load_compressor": ".model",
    "new_compressor": ".model",
    "save_compressor": ".model",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "answer_loss": ".training",
    "train_compressor": ".training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
