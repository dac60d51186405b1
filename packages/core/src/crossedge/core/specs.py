"""The one spec grammar: how every command and the Python API name a configured part.

Drafters, draft-length policies, quantizers, backends and algorithms are all written the
same way (docs/specs.md has the full grammar)::

    name                        copy
    name:key=value,key=value    gptq:bits=4,group_size=128      (':' also separates options)
    chain of specs              copy,history:max_copy=8         (a segment with '=' continues the options)
    chain @ policy              copy,history@cost-aware:max_k=8
    alternatives                copy;copy,history@heuristic      (';' separates whole chains)
    lists                       mixed:bit_choices=4+8
    quoted values               draft-model:model="./my model"  (to hold , : = @ ; + or spaces)

Parsing yields strings; :func:`bind` coerces each value to the annotated type of the
factory's parameter (a class's ``__init__`` or a dataclass's fields), so one coercion serves
every kind. Every error is a :class:`SpecError` naming the character it is about.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CrossedgeError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
#: Characters that end a bare value; a value holding one must be quoted.
SEPARATORS = ",:=@;+"
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NONE_WORDS = ("none", "null")


class SpecError(CrossedgeError, ValueError):
    """A spec that does not parse or does not fit its part; ``position`` is the 0-based character."""

    def __init__(self, kind: str, text: str, position: int | None, problem: str):
        self.kind, self.text, self.position, self.problem = kind, text, position, problem
        where = f", character {position + 1}" if position is not None and text else ""
        shown = f" {text!r}" if text else ""
        super().__init__(f"{kind} spec{shown}{where}: {problem}")

    def caret(self) -> str:
        """Two lines: the spec and a caret under the offending character."""
        if self.position is None:
            return self.text
        return f"{self.text}\n{' ' * self.position}^"


@dataclass(frozen=True)
class Spec:
    """One named part with its options, as written (strings) or as given from Python (any values)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The text the spec was parsed from (the whole string it stood in) and where it starts there.
    text: str = field(default="", compare=False)
    start: int = field(default=0, compare=False)
    #: Option key -> (position of the key, position of the value) in ``text``.
    positions: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)
    kind: str = field(default="part", compare=False, repr=False)

    def __str__(self) -> str:
        return format_spec(self.name, self.options)

    def error(self, problem: str, key: str | None = None, *, at_value: bool = False) -> SpecError:
        """A :class:`SpecError` pointing at this spec's name, or at one option's key or value."""
        position = self.start
        if key is not None and key in self.positions:
            position = self.positions[key][1 if at_value else 0]
        return SpecError(self.kind, self.text, position if self.text else None, problem)


@dataclass(frozen=True)
class Chain:
    """Specs applied in order (drafters tried one after another), with an optional ``@policy``."""

    specs: tuple[Spec, ...]
    policy: Spec | None = None
    text: str = ""

    def __str__(self) -> str:
        body = ",".join(str(s) for s in self.specs)
        return body + (f"@{self.policy}" if self.policy is not None else "")


class _Parser:
    def __init__(self, text: str, kind: str):
        self.text, self.kind, self.pos = text, kind, 0

    def fail(self, problem: str, position: int | None = None) -> SpecError:
        return SpecError(self.kind, self.text, self.pos if position is None else position, problem)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip_spaces()
        found = pattern.match(self.text, self.pos)
        if found is None:
            got = self.peek()
            raise self.fail(f"expected {what}, found {got!r}" if got else f"expected {what}, found the end")
        self.pos = found.end()
        return found.group()

    def item(self) -> str:
        self.skip_spaces()
        if self.peek() == '"':
            start = self.pos
            self.pos += 1
            chars = []
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                chars.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                raise self.fail("unterminated quote: close it with '\"'", start)
            self.pos += 1
            return "".join(chars)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in SEPARATORS:
            self.pos += 1
        value = self.text[start : self.pos].strip()
        if not value:
            raise self.fail('empty value: write key=value, or quote an empty string as ""', start)
        if self.peek() == "=":
            raise self.fail(f"'=' inside the value {value!r}: quote values that hold '=' (key=\"a=b\")")
        return value

    def value(self) -> str | list[str]:
        items = [self.item()]
        while self.peek() == "+":
            self.pos += 1
            items.append(self.item())
        return items[0] if len(items) == 1 else items

    def option_follows_comma(self) -> bool:
        """At a ',': does an option (``key=``) follow it, or the next spec's name?"""
        at = self.pos + 1
        while at < len(self.text) and self.text[at].isspace():
            at += 1
        found = KEY_RE.match(self.text, at)
        return found is not None and self.text[found.end() :].lstrip().startswith("=")

    def spec(self) -> Spec:
        self.skip_spaces()
        start = self.pos
        name = self.match(NAME_RE, f"a {self.kind} name")
        options: dict[str, Any] = {}
        positions: dict[str, tuple[int, int]] = {}
        self.skip_spaces()
        if self.peek() == ":":
            self.pos += 1
            while True:
                self.skip_spaces()
                key_at = self.pos
                key = self.match(KEY_RE, "an option name (key=value)").replace("-", "_")
                self.skip_spaces()
                if self.peek() != "=":
                    raise self.fail(f"option {key!r} needs a value: write {key}=VALUE")
                self.pos += 1
                self.skip_spaces()
                value_at = self.pos
                if key in options:
                    raise self.fail(f"option {key!r} is given twice", key_at)
                options[key] = self.value()
                positions[key] = (key_at, value_at)
                self.skip_spaces()
                if self.peek() == ":" or (self.peek() == "," and self.option_follows_comma()):
                    self.pos += 1
                    continue
                break
        elif self.peek() not in ("", ",", "@", ";"):
            raise self.fail(f"expected ':' before options or ',' before the next {self.kind}, found {self.peek()!r}")
        return Spec(name, options, self.text, start, positions, self.kind)

    def chain(self, policy_kind: str) -> Chain:
        specs = [self.spec()]
        self.skip_spaces()
        while self.peek() == ",":
            self.pos += 1
            specs.append(self.spec())
            self.skip_spaces()
        policy = None
        if self.peek() == "@":
            self.pos += 1
            kind, self.kind = self.kind, policy_kind
            policy = self.spec()
            self.kind = kind
            self.skip_spaces()
        return Chain(tuple(specs), policy, self.text)

    def end(self) -> None:
        self.skip_spaces()
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.peek()!r}")


def _check_text(text: Any, kind: str) -> str:
    if not isinstance(text, str):
        raise SpecError(kind, "", None, f"expected text, got {type(text).__name__} {text!r}")
    if not text.strip():
        raise SpecError(kind, text, None, f"empty {kind} spec: write a name such as NAME or NAME:key=value")
    return text


def parse_spec(text: str | Spec, *, kind: str = "part") -> Spec:
    """Parse exactly one ``name[:key=value,...]``; a :class:`Spec` passes through."""
    if isinstance(text, Spec):
        return text
    parser = _Parser(_check_text(text, kind), kind)
    spec = parser.spec()
    parser.skip_spaces()
    if parser.peek() in (",", "@", ";"):
        raise parser.fail(f"one {kind} expected here; {parser.peek()!r} starts another")
    parser.end()
    return spec


def parse_chain(text: str | Chain, *, kind: str = "part", policy_kind: str = "policy") -> Chain:
    """Parse ``spec,spec,...[@policy]`` (one alternative, no ``;``)."""
    if isinstance(text, Chain):
        return text
    parser = _Parser(_check_text(text, kind), kind)
    chain = parser.chain(policy_kind)
    if parser.peek() == ";":
        raise parser.fail("one chain expected here; ';' separates alternatives where a command takes several")
    parser.end()
    return chain


def split_alternatives(text: str, *, kind: str = "part") -> list[str]:
    """Split ``a;b,c@p`` at the ``;`` outside quotes; each piece is checked to parse as a chain."""
    pieces, start, quoted = [], 0, False
    for i, ch in enumerate(_check_text(text, kind)):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append((start, text[start:i]))
            start = i + 1
    pieces.append((start, text[start:]))
    out = []
    for offset, piece in pieces:
        if not piece.strip():
            raise SpecError(kind, text, offset, "empty alternative between ';'")
        try:
            parse_chain(piece, kind=kind)
        except SpecError as exc:
            raise SpecError(kind, text, None if exc.position is None else offset + exc.position, exc.problem) from None
        out.append(piece.strip())
    return out


def format_value(value: Any) -> str:
    """A value as spec text: lists joined with ``+``, quoted where a separator needs it."""
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "none" if value is None else str(value)
    if not text or any(c in SEPARATORS or c.isspace() or c == '"' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_spec(name: str, options: Mapping[str, Any]) -> str:
    """The canonical text of a spec: ``name:key=value,key=value`` (keys in the order given)."""
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in options.items())


# ------------------------------------------------------------------ coercion


def _words(value: str) -> str:
    return value.strip().lower()


def auto_value(value: Any) -> Any:
    """Coerce text without a declared type: booleans, none, integers, floats, else the text."""
    if isinstance(value, (list, tuple)):
        return [auto_value(v) for v in value]
    if not isinstance(value, str):
        return value
    word = _words(value)
    if word in ("true", "false"):
        return word == "true"
    if word in NONE_WORDS:
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text", Path: "a path"}


def _describe(annotation: Any) -> str:
    if annotation in _TYPE_WORDS:
        return _TYPE_WORDS[annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset) or origin in (typing.Sequence, Iterable):
        args = typing.get_args(annotation)
        return "a list (a+b+c)" + (f" of {_describe(args[0])}" if args else "")
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation) if a is not type(None))
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (spec text or a Python value) to ``annotation``; raises ValueError saying what it takes."""
    if annotation in (inspect.Parameter.empty, Any, None) or isinstance(annotation, str):
        return auto_value(value)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if (value is None or (isinstance(value, str) and _words(value) in NONE_WORDS)) and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueError:
                continue
        raise ValueError(f"takes {_describe(annotation)}, got {value!r}")
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise ValueError(f"takes {_describe(annotation)}, got {value!r}")
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence or annotation in (list, tuple):
        items = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        item_type = args[0] if args else Any
        out = [coerce(v, item_type) for v in items]
        return tuple(out) if origin is tuple or annotation is tuple else out
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and _words(value) in TRUE_WORDS + FALSE_WORDS:
            return _words(value) in TRUE_WORDS
        raise ValueError(f"takes true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"takes an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"takes a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"takes text, got {value!r}")
    if annotation is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ValueError(f"takes a path, got {value!r}")
    # Any other declared class: accept its instances as they are, and text as text.
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    return auto_value(value)


@dataclass(frozen=True)
class Parameter:
    """One option a factory takes: its name, declared type and default (``REQUIRED`` when none)."""

    name: str
    annotation: Any
    default: Any


REQUIRED = inspect.Parameter.empty


def parameters(factory: Callable[..., Any], exclude: Iterable[str] = ()) -> tuple[dict[str, Parameter], bool]:
    """The options of a class (its ``__init__``) or dataclass (its init fields), and whether it takes ``**kwargs``."""
    skip = set(exclude)
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: coerce those values without a type
        hints = {}
    found: dict[str, Parameter] = {}
    if dataclasses.is_dataclass(factory):
        for f in dataclasses.fields(factory):
            if not f.init or f.name in skip or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = REQUIRED
            found[f.name] = Parameter(f.name, hints.get(f.name, f.type), default)
        return found, False
    var_keyword = False
    for p in inspect.signature(factory).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY) or p.name in skip:
            continue
        found[p.name] = Parameter(p.name, hints.get(p.name, p.annotation), p.default)
    return found, var_keyword


def bind(
    spec: Spec | str, factory: Callable[..., Any], *, kind: str | None = None, exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """The keyword arguments ``spec``'s options give ``factory``, each coerced to its declared type.

    Unknown keys are refused with the valid ones listed (a factory taking ``**kwargs`` gets
    them with automatic coercion); a required option that is missing is refused too.
    ``exclude`` names parameters that crossedge supplies itself and users may not set.
    """
    spec = parse_spec(spec, kind=kind or "part") if isinstance(spec, str) else spec
    params, var_keyword = parameters(factory, exclude)
    label = kind or spec.kind
    kwargs: dict[str, Any] = {}
    for raw_key, value in spec.options.items():
        key = raw_key.replace("-", "_")
        if key not in params:
            if var_keyword and key not in set(exclude):
                kwargs[key] = auto_value(value)
                continue
            valid = sorted(params)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            listed = ", ".join(valid) if valid else "none"
            raise spec.error(f"{label} {spec.name!r} has no option {key!r}; {hint}its options: {listed}", raw_key)
        try:
            kwargs[key] = coerce(value, params[key].annotation)
        except ValueError as exc:
            raise spec.error(f"option {key} {exc}", raw_key, at_value=True) from None
    missing = [p.name for p in params.values() if p.default is REQUIRED and p.name not in kwargs]
    if missing:
        needed = ",".join(f"{m}=..." for m in missing)
        raise spec.error(f"{label} {spec.name!r} needs {needed}: write {spec.name}:{needed}")
    return kwargs


def build(spec: Spec | str, factory: Callable[..., Any], *, kind: str | None = None, **supplied: Any) -> Any:
    """``factory(**bind(spec, factory), **supplied)``: the part a spec describes.

    ``supplied`` are the arguments crossedge itself passes (never settable from the spec).
    A ``TypeError`` or ``ValueError`` the factory raises about its values becomes a
    :class:`SpecError` pointing at the spec's name.
    """
    spec = parse_spec(spec, kind=kind or "part") if isinstance(spec, str) else spec
    kwargs = bind(spec, factory, kind=kind, exclude=supplied)
    try:
        return factory(**kwargs, **supplied)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CrossedgeError):
            raise
        raise spec.error(f"{kind or spec.kind} {spec.name!r}: {exc}") from exc
