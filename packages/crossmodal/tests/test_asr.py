"""ASR corpus recipe: tokenizer round trip, seeded texts, splits by text, CER."""

import numpy as np
import pytest

from crossedge.crossmodal import asr


def test_tokenizer_round_trip_and_end():
    tok = asr.CharTokenizer()
    ids = tok.encode("Copy the Code!")
    assert min(ids) >= 3 and max(ids) < tok.vocab_size
    assert tok.decode(ids) == "copy the code"
    assert tok.decode([*ids[:4], asr.EOS, *ids]) == "copy"


def test_texts_are_seeded_distinct_and_from_the_pool():
    a, b = asr.make_texts(30, vocab=20, seed=3), asr.make_texts(30, vocab=20, seed=3)
    assert a == b and len(set(a)) == 30
    pool = set(asr.word_pool(20))
    assert all(1 <= len(t.split()) <= 3 and set(t.split()) <= pool for t in a)
    with pytest.raises(asr.AsrDataError, match="ask for fewer"):
        asr.make_texts(100, vocab=3, max_words=2)


def test_corpus_splits_by_text_without_espeak():
    def fake(text, voice):  # a chirp whose length follows the text: no espeak-ng needed
        t = np.arange(800 * (len(text) + 2)) / 16000
        return (0.3 * np.sin(2 * np.pi * (200 + 20 * voice.pitch) * t)).astype(np.float32)

    corpus = asr.build_corpus(texts=20, per_text=2, test_fraction=0.25, audio_fn=fake)
    train, test = corpus.indices("train"), corpus.indices("test")
    assert len(test) == 10 and len(train) == 30
    assert not {corpus.texts[i] for i in train} & {corpus.texts[i] for i in test}
    assert all(f.shape[1] == asr.STACK * asr.N_MELS for f in corpus.features)
    assert abs(float(corpus.features[0].mean())) < 1e-4


def test_cer():
    assert asr.cer(["abcd"], ["abcd"]) == 0.0
    assert asr.cer(["abcd", "ef"], ["abxd", "e"]) == pytest.approx(2 / 6)
    with pytest.raises(ValueError):
        asr.cer(["a"], [])
