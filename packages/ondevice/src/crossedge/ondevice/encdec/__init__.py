"""Return of the Encoder: a decoder-only teacher (smollm2-135m) distilled into a small encoder-decoder student,
against a decoder-only student of the same parameter count, on summarization-style prompts.

The teacher answers each prompt once (greedy, cached with its top-k log-probabilities); both students learn
those answers on the teacher's vocabulary. The encoder-decoder reads the prompt once in a bidirectional
encoder and decodes with a small causal decoder over cross-attention keys and values computed once.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "SummaryItems": ".data",
    "prompt_parts": ".data",
    "split_corpus": ".data",
    "summary_items": ".data",
    "greedy": ".evaluation",
    "lcs_length": ".evaluation",
    "lead_quality": ".evaluation",
    "quality": ".evaluation",
    "rouge_l": ".evaluation",
    "teacher_quality": ".evaluation",
    "Prepared": ".experiment",
    "Recipe": ".experiment",
    "load_teacher": ".experiment",
    "matched_configs": ".experiment",
    "new_student": ".experiment",
    "prepare": ".experiment",
    "Timed": ".latency",
    "latency_rows": ".latency",
    "CrossAttention": ".layers",
    "KVBuffer": ".layers",
    "SelfAttention": ".layers",
    "DecodeState": ".model",
    "DecoderOnlyStudent": ".model",
    "EncoderDecoderStudent": ".model",
    "Student": ".model",
    "StudentConfig": ".model",
    "build_student": ".model",
    "load_student": ".model",
    "matched_decoder": ".model",
    "parameter_count": ".model",
    "parameter_split": ".model",
    "save_student": ".model",
    "teacher_projection": ".model",
    "TeacherData": ".teacher",
    "TeacherRunner": ".teacher",
    "teacher_data": ".teacher",
    "DistillConfig": ".training",
    "DistillResult": ".training",
    "distill": ".training",
    "distill_loss": ".training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
