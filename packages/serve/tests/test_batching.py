"""`--max-batch`: concurrent requests decoded together get exactly the answers they get one at a time."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import MAX_TOKENS, scrape, start_server

PROMPTS = (
    "the cat sat on the mat, the cat sat on the",
    "the dog ran",
    "one two three one two three one",
    "hello hello hello hello hello hello hello hello",
)


def _ask(url, prompt, *, stream=False, **options):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    options.setdefault("max_tokens", MAX_TOKENS)
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = client.chat.completions.create(model="tiny", messages=messages, temperature=0, stream=True, **options)
        return "".join(c.choices[0].delta.content or "" for c in chunks)
    return client.chat.completions.create(model="tiny", messages=messages, temperature=0, **options)


@pytest.fixture(scope="module")
def singles(server):
    """Each prompt's answer from the one-at-a-time server, asked alone."""
    return [_ask(server.url, p).choices[0].message.content for p in PROMPTS]


@pytest.fixture(scope="module")
def batched(tiny_folder, server):
    running = start_server(tiny_folder, max_batch=4)
    try:
        yield running
    finally:
        running.stop()


def _concurrently(url):
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        plain = [pool.submit(_ask, url, p) for p in PROMPTS]
        streamed = [pool.submit(_ask, url, p, stream=True) for p in PROMPTS]
        return [f.result().choices[0].message.content for f in plain], [f.result() for f in streamed]


def test_four_concurrent_clients_get_their_single_request_answers(batched, singles):
    assert len(set(singles)) == len(singles) and all(singles)  # distinct answers: a mix-up would show
    before = scrape(batched.url)
    plain, streamed = _concurrently(batched.url)
    assert plain == singles
    assert streamed == singles
    after = scrape(batched.url)
    assert after["crossedge_serve_batch_admitted_total"] - before.get("crossedge_serve_batch_admitted_total", 0) == 8
    # Eight generations took fewer batched forwards than they would one at a time.
    forwards = after["crossedge_serve_batch_forwards_total"] - before.get("crossedge_serve_batch_forwards_total", 0)
    tokens = after["crossedge_serve_completion_tokens_total"] - before["crossedge_serve_completion_tokens_total"]
    assert forwards < tokens
    assert after["crossedge_serve_batch_rows"] == 0 and after["crossedge_serve_requests_running"] == 0


def test_a_stop_sequence_cuts_a_batched_answer_where_it_cuts_a_single_one(batched, server, singles):
    text = singles[0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    alone = _ask(server.url, PROMPTS[0], stop=[stop])
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(_ask, batched.url, PROMPTS[0], stop=[stop]), pool.submit(_ask, batched.url, PROMPTS[1])]
        cut, other = (f.result() for f in answers)
    assert cut.choices[0].message.content == alone.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == alone.usage.completion_tokens
    assert other.choices[0].message.content == singles[1]


def test_a_client_that_leaves_cancels_its_row_only(batched, singles):
    before = scrape(batched.url)
    with ThreadPoolExecutor(2) as pool:
        staying = pool.submit(_ask, batched.url, PROMPTS[0])
        body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 200}
        body["stream"] = True
        with httpx.stream("POST", batched.url + "/v1/chat/completions", json=body, timeout=60) as response:
            next(response.iter_lines())  # the first chunk arrived, then the client goes away
        assert staying.result().choices[0].message.content == singles[0]
    cancelled = 'crossedge_serve_generations_total{finish="cancelled"}'
    for _ in range(100):
        if scrape(batched.url).get(cancelled, 0) > before.get(cancelled, 0):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the abandoned request was never cancelled")


def test_a_memory_budget_throttles_admissions_and_keeps_answers(tiny_folder, singles):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_folder)
    heads = config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * (config.num_key_value_heads or heads) * config.hidden_size // heads * 4
    # Two rows of a prompt plus its answer fit, four do not.
    budget = 2 * (64 + MAX_TOKENS) * per_token
    running = start_server(tiny_folder, max_batch=4, memory_budget=budget)
    try:
        plain, streamed = _concurrently(running.url)
        metrics = scrape(running.url)
    finally:
        running.stop()
    assert plain == singles and streamed == singles
    assert metrics["crossedge_serve_batch_throttled_total"] >= 1
