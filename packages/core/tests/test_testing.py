"""The public test helpers: the byte tokenizer."""

import pytest


def test_byte_tokenizer_permutation_keeps_text_and_changes_ids():
    from crossedge.core.testing import byte_tokenizer

    plain = byte_tokenizer()
    reversed_ids = byte_tokenizer(permutation=list(range(255, -1, -1)))
    text = "héllo, wörld"
    a, b = plain(text).input_ids, reversed_ids(text).input_ids
    assert b == [255 - i for i in a]
    assert reversed_ids.decode(b) == text
    with pytest.raises(ValueError, match="reorder"):
        byte_tokenizer(permutation=[0] * 256)
