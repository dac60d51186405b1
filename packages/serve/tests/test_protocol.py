"""Request checks and stop-sequence helpers, without a server; the command's help stays light."""

import json
import os
import subprocess
import sys

import pytest

from crossedge.serve.protocol import RequestError, first_stop, held_back, parse_request


def chat_body(**fields):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_a_good_request_is_read_with_openai_defaults():
    request = parse_request(chat_body(max_completion_tokens=5, stop="x"), chat=True)
    assert (request.temperature, request.top_p, request.max_tokens, request.stop) == (1.0, 1.0, 5, ("x",))
    parts = chat_body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )
    assert parse_request(parts, chat=True).messages == [{"role": "user", "content": "ab"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body(messages=[]), "messages"),
        (chat_body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
        (chat_body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content"),
        (chat_body(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]), "messages"),
        (chat_body(temperature="hot"), "temperature"),
        (chat_body(temperature=True), "temperature"),
        (chat_body(seed=1.5), "seed"),
        (chat_body(stream="yes"), "stream"),
        (chat_body(stream_options={"include_usage": True}), "stream_options"),
        (chat_body(stop=[""]), "stop"),
        (chat_body(model=""), "model"),
        (chat_body(user=7), "user"),
        (chat_body(prompt="x"), "prompt"),  # a completions field on the chat endpoint
    ],
)
def test_bad_chat_fields_are_named(body, param):
    with pytest.raises(RequestError) as caught:
        parse_request(body, chat=True)
    assert caught.value.param == param and caught.value.status == 400
    assert caught.value.body()["error"]["param"] == param


def test_a_completion_needs_one_string_prompt():
    assert parse_request({"model": "m", "prompt": "abc"}, chat=False).prompt == "abc"
    for prompt in (None, "", ["a", "b"]):
        with pytest.raises(RequestError, match="prompt must be"):
            parse_request({"model": "m", "prompt": prompt}, chat=False)
    with pytest.raises(RequestError, match="must be a JSON object"):
        parse_request([1], chat=False)


def test_streaming_holds_back_what_may_start_a_stop_sequence():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("xyz", "lo!")) == 2
    assert held_back("hello", ()) == 0 and held_back("hello", ("q",)) == 0
    assert first_stop("a. b. c", (" c", ".")) == 1 and first_stop("abc", ("z",)) is None


CHECK = """
import json, sys
from crossedge.core import registered
from crossedge.core.cli import build_cli
from crossedge.serve import plugin
with registered(plugin, name="serve-under-test"):
    try:
        build_cli()(["serve", "--help"])
    except SystemExit as exc:
        code = exc.code
heavy = sorted(m for m in ("torch", "transformers", "fastapi", "uvicorn") if m in sys.modules)
print("\\n" + json.dumps({"code": code, "heavy": heavy}))
"""


def test_the_command_help_imports_no_torch_and_no_web_stack():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=dict(os.environ))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}, done.stderr
    assert "--api-key" in done.stdout and "127.0.0.1" in done.stdout


def test_the_user_field_is_kept_for_the_history():
    assert parse_request(chat_body(user="alice"), chat=True).user == "alice"
    assert parse_request(chat_body(user=""), chat=True).user is None
