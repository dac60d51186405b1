"""The real openai client against the real server: answers, streaming, errors, metrics."""

import json

import httpx
import openai
import pytest
from click.testing import CliRunner
from conftest import API_KEY, MAX_TOKENS, start_server

from crossedge.core.cli import build_cli

PROMPT = "the cat sat on the mat, the cat sat on the"


def specdec_generate(folder, prompt, max_new_tokens):
    """Text and tokens of `crossedge specdec generate` at temperature 0, its defaults otherwise."""
    from transformers import AutoTokenizer

    args = ["specdec", "generate", "--model", folder, "--max-new-tokens", str(max_new_tokens), "--json", prompt]
    result = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout[result.stdout.index("{") :])["tokens"]
    return AutoTokenizer.from_pretrained(folder).decode(tokens, skip_special_tokens=True), tokens


@pytest.fixture(scope="module")
def reference(tiny_folder, server):
    return specdec_generate(tiny_folder, PROMPT, MAX_TOKENS)


def chat(client, **options):
    options.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], **options)


def test_non_streaming_chat_is_the_text_of_specdec_generate(client, reference):
    text, tokens = reference
    assert text  # an empty answer would make the comparison vacuous
    answer = chat(client, temperature=0)
    assert answer.choices[0].message.content == text
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage.completion_tokens == len(tokens)
    assert answer.choices[0].finish_reason == ("length" if len(tokens) == MAX_TOKENS else "stop")


def test_streaming_chat_chunks_add_up_to_the_same_text(client, reference):
    chunks = list(chat(client, temperature=0, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # really streamed, not one block
    assert "".join(pieces) == reference[0]
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_a_stream_ends_with_done_and_can_report_usage(server):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 0


def test_text_completions_stream_and_not(client, tiny_folder):
    from transformers import AutoTokenizer

    from crossedge.core import load_model
    from crossedge.specdec import SpeculativeDecoder

    loaded = load_model(tiny_folder)
    ids = AutoTokenizer.from_pretrained(tiny_folder)(PROMPT, return_tensors="pt").input_ids
    tokens = SpeculativeDecoder(loaded.model, None).generate(ids, 12).tokens
    expected = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert answer.choices[0].text == expected and answer.object == "text_completion"
    streamed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_a_stop_sequence_ends_the_answer_before_it(client, reference):
    text = reference[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip("\ufffd") == stop and len(stop) == 2
    expected = text[: text.index(stop)]
    answer = chat(client, temperature=0, stop=[stop])
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, temperature=0, stop=stop, stream=True))
    assert streamed == expected


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "model": "tiny"}


def test_metrics_count_requests_and_tokens(client, server):
    def scrape():
        text = httpx.get(server.url + "/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"}

    before = scrape()
    chat(client, temperature=0, max_tokens=5)
    after = scrape()
    requests = 'crossedge_serve_requests_total{endpoint="/v1/chat/completions",status="200"}'
    assert after[requests] == before.get(requests, 0) + 1
    assert after["crossedge_serve_completion_tokens_total"] - before["crossedge_serve_completion_tokens_total"] >= 1
    assert after["crossedge_serve_tokens_per_second"] > 0
    assert after["crossedge_serve_mean_accepted_length"] >= 1
    assert after["crossedge_serve_queue_depth"] == 0
    assert httpx.get(server.url + "/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")


def bad_request(call):
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value.status_code, caught.value.body


def test_an_unknown_parameter_is_a_400_naming_it(client):
    status, body = bad_request(lambda: chat(client, extra_body={"best_of": 3}))
    assert status == 400 and body["param"] == "best_of" and "best_of" in body["message"]
    assert body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
    ],
)
def test_out_of_range_parameters_are_400s_naming_the_field(client, options, param):
    status, body = bad_request(lambda: chat(client, **options))
    assert status == 400 and body["param"] == param and param in body["message"]


def test_max_tokens_beyond_the_window_is_a_400_saying_the_limit(client):
    status, body = bad_request(lambda: chat(client, max_tokens=10_000))
    assert status == 400 and body["param"] == "max_tokens" and body["code"] == "context_length_exceeded"
    assert "context window is 512 tokens" in body["message"] and "at most" in body["message"]


def test_a_prompt_longer_than_the_window_is_a_400_saying_the_limit(client):
    status, body = bad_request(lambda: client.completions.create(model="tiny", prompt="x" * 600, max_tokens=1))
    assert status == 400 and body["param"] == "prompt"
    assert "600 tokens" in body["message"] and "at most 511" in body["message"]


def test_another_model_name_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["param"] == "model" and "'tiny'" in caught.value.body["message"]


def test_a_seed_makes_a_sampled_answer_repeat(tiny_folder):
    # A constant draft length: adaptive policies change where the random numbers are drawn from one request to the next.
    running = start_server(tiny_folder, drafter="copy", policy="constant:k=4")
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def sample(seed, temperature=1.5):
            return chat(client, temperature=temperature, seed=seed).choices[0].message.content

        first = sample(7)
        assert sample(7) == first
        assert sample(8) != first
        assert sample(None, temperature=0) != first  # really sampled, not greedy
    finally:
        running.stop()


def test_an_api_key_is_required_when_set(tiny_folder):
    running = start_server(tiny_folder, api_key=API_KEY)
    try:
        url = running.url + "/v1"
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        # The openai client refuses to send no key at all, so the missing key goes through httpx.
        missing = httpx.post(url + "/chat/completions", json={"model": "tiny", "messages": []})
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
        assert [m.id for m in openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0).models.list()] == ["tiny"]
        assert httpx.get(running.url + "/health").status_code == 200  # health stays open for probes
    finally:
        running.stop()


def test_the_command_binds_127_0_0_1_unless_told(monkeypatch, tiny_folder):
    import crossedge.serve.server as server_module

    calls = []
    monkeypatch.setattr(server_module, "run_server", lambda model, **options: calls.append((model, options)))
    runner = CliRunner()
    assert runner.invoke(build_cli(), ["serve", "--model", tiny_folder]).exit_code == 0
    assert (
        runner.invoke(build_cli(), ["serve", "--model", tiny_folder, "--host", "0.0.0.0", "--port", "9"]).exit_code == 0
    )
    assert calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 8000
    assert calls[1][1]["host"] == "0.0.0.0" and calls[1][1]["port"] == 9
    assert calls[0][1]["drafter"] == "copy" and calls[0][1]["api_key"] is None


def test_a_body_that_is_not_json_is_a_400(server):
    response = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "not JSON" in response.json()["error"]["message"]


def test_concurrent_requests_are_queued_and_each_gets_its_own_answer(client, reference):
    from concurrent.futures import ThreadPoolExecutor

    short = "the dog ran"
    with ThreadPoolExecutor(4) as pool:
        long_answers = [pool.submit(chat, client, temperature=0) for _ in range(2)]
        short_answers = [
            pool.submit(
                client.chat.completions.create,
                model="tiny",
                messages=[{"role": "user", "content": short}],
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
            for _ in range(2)
        ]
        texts = [f.result().choices[0].message.content for f in long_answers]
        others = [f.result().choices[0].message.content for f in short_answers]
    assert texts == [reference[0]] * 2
    assert others[0] == others[1] != reference[0]
