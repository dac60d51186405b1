"""The one spec grammar: parsing, canonical text, coercion against declared types, errors with positions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from crossedge.core.specs import (
    Spec,
    SpecError,
    auto_value,
    bind,
    build,
    format_spec,
    parse_chain,
    parse_spec,
    split_alternatives,
)


class Copyish:
    name = "copy"

    def __init__(
        self,
        max_copy: int = 16,
        min_match: int = 2,
        occurrence: Literal["earliest", "latest"] = "earliest",
        realign: bool = False,
    ):
        self.max_copy, self.min_match, self.occurrence, self.realign = max_copy, min_match, occurrence, realign


class DraftModelish:
    def __init__(self, model: str, threshold: float | None = None):
        self.model, self.threshold = model, threshold


@dataclass
class Configish:
    bits: int = 8
    bit_choices: list[int] = field(default_factory=lambda: [4, 8])
    skip: list[str] = field(default_factory=list)
    path: Path | None = None


def test_plain_name_and_options():
    spec = parse_spec("gptq:bits=4,group_size=128,act_order=true", kind="quantizer")
    assert spec.name == "gptq"
    assert dict(spec.options) == {"bits": "4", "group_size": "128", "act_order": "true"}
    assert parse_spec("rtn").options == {}


def test_colon_also_separates_options_and_dashes_become_underscores():
    assert dict(parse_spec("copy:max-copy=8:min_match=3").options) == {"max_copy": "8", "min_match": "3"}


def test_chain_with_options_continued_after_commas_and_a_policy():
    chain = parse_chain(
        "copy:max_copy=8,min_match=3,history,draft-model:model=tiny@cost-aware:max_k=12", kind="drafter"
    )
    assert [s.name for s in chain.specs] == ["copy", "history", "draft-model"]
    assert dict(chain.specs[0].options) == {"max_copy": "8", "min_match": "3"}
    assert dict(chain.specs[2].options) == {"model": "tiny"}
    assert chain.policy is not None and chain.policy.name == "cost-aware"
    assert dict(chain.policy.options) == {"max_k": "12"}
    assert str(chain) == "copy:max_copy=8,min_match=3,history,draft-model:model=tiny@cost-aware:max_k=12"


def test_lists_and_quotes():
    spec = parse_spec('rtn:skip=*.mlp.down_proj+*.0.*,note="a, b: c=d"')
    assert spec.options["skip"] == ["*.mlp.down_proj", "*.0.*"]
    assert spec.options["note"] == "a, b: c=d"
    assert parse_spec(str(spec)) == spec  # the canonical text parses back to the same spec


def test_alternatives_split_outside_quotes():
    assert split_alternatives('copy;copy,history@heuristic;draft-model:model="a;b"') == [
        "copy",
        "copy,history@heuristic",
        'draft-model:model="a;b"',
    ]


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("copy:max_copy", 14, "needs a value"),
        ("copy:=3", 6, "option name"),
        ("copy:a=1,a=2", 10, "given twice"),
        ('copy:a="open', 8, "unterminated quote"),
        ("copy:a=b=c", 9, "quote values"),
        ("copy:a=", 8, "empty value"),
        ("co py", 4, "expected ':'"),
    ],
)
def test_syntax_errors_name_the_character(text, position, words):
    with pytest.raises(SpecError) as info:
        parse_spec(text, kind="drafter")
    assert info.value.position + 1 == position
    assert words in str(info.value)
    assert f"character {position}" in str(info.value)
    assert info.value.caret().splitlines()[1].index("^") == position - 1


def test_one_spec_where_one_is_expected():
    with pytest.raises(SpecError, match="one quantizer expected"):
        parse_spec("rtn,gptq", kind="quantizer")
    with pytest.raises(SpecError, match="';' separates alternatives"):
        parse_chain("copy;history", kind="drafter")
    with pytest.raises(SpecError, match="empty drafter spec"):
        parse_chain("  ", kind="drafter")
    with pytest.raises(SpecError, match="empty alternative"):
        split_alternatives("copy;;history")


def test_bind_coerces_to_declared_types():
    kwargs = bind("copy:max_copy=8,occurrence=latest,realign=yes", Copyish, kind="drafter")
    assert kwargs == {"max_copy": 8, "occurrence": "latest", "realign": True}
    assert bind("c:bits=4,bit_choices=2+4+8,skip=*.0.*", Configish) == {
        "bits": 4,
        "bit_choices": [2, 4, 8],
        "skip": ["*.0.*"],
    }
    assert bind("c:path=none", Configish) == {"path": None}
    assert bind("c:path=./x", Configish) == {"path": Path("./x")}
    assert bind("d:model=tiny,threshold=0.5", DraftModelish) == {"model": "tiny", "threshold": 0.5}


def test_bind_reports_bad_values_at_the_value():
    with pytest.raises(SpecError) as info:
        bind("copy:max_copy=abc", Copyish, kind="drafter")
    assert "option max_copy takes an integer, got 'abc'" in str(info.value)
    assert info.value.position == len("copy:max_copy=")
    with pytest.raises(SpecError, match="takes one of 'earliest', 'latest'"):
        bind("copy:occurrence=middle", Copyish, kind="drafter")
    with pytest.raises(SpecError, match="takes true or false"):
        bind("copy:realign=maybe", Copyish, kind="drafter")


def test_bind_refuses_unknown_keys_listing_the_valid_ones():
    with pytest.raises(SpecError) as info:
        bind("copy:max_cpy=3", Copyish, kind="drafter")
    message = str(info.value)
    assert "has no option 'max_cpy'" in message and "did you mean 'max_copy'?" in message
    assert "max_copy, min_match, occurrence, realign" in message
    assert info.value.position == len("copy:")


def test_bind_requires_options_without_defaults():
    with pytest.raises(SpecError, match="needs model=...: write draft-model:model=..."):
        bind("draft-model", DraftModelish, kind="drafter")


def test_python_values_are_checked_by_the_same_coercion():
    assert bind(Spec("copy", {"max_copy": 4, "realign": False}), Copyish) == {"max_copy": 4, "realign": False}
    with pytest.raises(SpecError, match="takes an integer"):
        bind(Spec("copy", {"max_copy": 2.5}), Copyish)
    with pytest.raises(SpecError, match="takes an integer"):
        bind(Spec("copy", {"max_copy": True}), Copyish)


def test_build_passes_supplied_arguments_users_cannot_set():
    class NeedsTarget:
        def __init__(self, target, k: int = 1):
            self.target, self.k = target, k

    part = build("x:k=3", NeedsTarget, target="T")
    assert (part.target, part.k) == ("T", 3)
    with pytest.raises(SpecError, match="has no option 'target'"):
        build("x:target=evil", NeedsTarget, target="T")


def test_build_turns_factory_value_errors_into_spec_errors():
    class Picky:
        def __init__(self, k: int = 1):
            if k < 1:
                raise ValueError("k must be at least 1")

    with pytest.raises(SpecError, match="k must be at least 1"):
        build("picky:k=0", Picky, kind="policy")


def test_auto_value_and_format():
    assert auto_value("3") == 3 and auto_value("0.5") == 0.5 and auto_value("true") is True
    assert auto_value("none") is None and auto_value("x") == "x" and auto_value(["1", "a"]) == [1, "a"]
    assert format_spec("rtn", {"bits": 4, "skip": ["a", "b"], "keep": False, "p": "x y"}) == (
        'rtn:bits=4,skip=a+b,keep=false,p="x y"'
    )
