"""Keyboard decoding: noisy taps on a QWERTY layout decoded into lexicon words, with completions.

A lexicon-constrained beam search walks a character trie, scoring each tap by its Gaussian
likelihood around key centres and each letter by a small character GRU that reads the message so
far (the lexicon-only baseline scores by word frequency instead). Beam widths are timed per
keystroke and the widest within a latency budget is chosen.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "KeystrokeCost": ".budget",
    "choose_beam": ".budget",
    "measure_keystroke_costs": ".budget",
    "KeyboardCorpus": ".corpus",
    "load_corpus": ".corpus",
    "BeamDecoder": ".decoder",
    "DecoderConfig": ".decoder",
    "Suggestion": ".decoder",
    "TypingResult": ".evaluation",
    "type_messages": ".evaluation",
    "SCORERS": ".experiment",
    "evaluate_under_budget": ".experiment",
    "make_decoder": ".experiment",
    "train_keyboard": ".experiment",
    "ALPHABET": ".layout",
    "QWERTY": ".layout",
    "KeyboardLayout": ".layout",
    "Lexicon": ".lexicon",
    "words_of": ".lexicon",
    "CharModel": ".model",
    "CharModelConfig": ".model",
    "CharModelRuntime": ".model",
    "KeyboardModel": ".model",
    "TapNoise": ".noise",
    "TapSimulator": ".noise",
    "CharModelScorer": ".scorers",
    "MixedScorer": ".scorers",
    "UnigramScorer": ".scorers",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "train_char_model": ".training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
