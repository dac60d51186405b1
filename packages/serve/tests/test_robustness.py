"""Clients that leave, crowd, or misbehave: the server frees the model, keeps answers apart, and stays up.

Every wait is bounded (a timeout on each request, a deadline on each poll); what is asserted
is counted (generations, tokens, statuses), never how fast something ran.
"""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import scrape, start_server

LONG = 480  # as much as the 512-token window leaves: about a second of decoding, if it ran to the end
GENERATIONS = "crossedge_serve_generations_total"
CANCELLED = GENERATIONS + '{finish="cancelled"}'


def body(prompt="the dog ran", **fields):
    return {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "temperature": 0, **fields}


def wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def healthy(server):
    """A normal request still gets a normal answer."""
    response = httpx.post(server.url + "/v1/chat/completions", json=body(max_tokens=4), timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


# ------------------------------------------------------------------ disconnects


def stream(client, url, **fields):
    return client.stream("POST", url + "/v1/chat/completions", json=body(max_tokens=LONG, stream=True, **fields))


def test_a_client_that_leaves_mid_stream_frees_the_model_at_once(server):
    before = scrape(server.url)
    with httpx.Client(timeout=60) as client, stream(client, server.url) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            chunks += '"content"' in line and '"content": ""' not in line
            if chunks >= 3:
                break  # leaving the block closes the connection with the answer unread
    wait_for(lambda: scrape(server.url).get(CANCELLED, 0) == before.get(CANCELLED, 0) + 1, "the cancelled generation")
    after = scrape(server.url)
    decoded = after["crossedge_serve_completion_tokens_total"] - before["crossedge_serve_completion_tokens_total"]
    assert 3 <= decoded < LONG / 2  # the worker stopped soon after the client left, not at the end
    assert after["crossedge_serve_requests_running"] == 0 and after["crossedge_serve_queue_depth"] == 0
    healthy(server)


def test_a_queued_request_whose_client_left_is_never_decoded(server):
    before = scrape(server.url)
    # The first request holds the model; the second waits behind it, and its client leaves.
    with httpx.Client(timeout=60) as client, stream(client, server.url) as first:
        next(first.iter_lines())
        with httpx.Client(timeout=60) as other, stream(other, server.url) as queued:
            assert queued.status_code == 200
            next(queued.iter_lines())  # its first event (the role) comes while it waits in the queue
    wait_for(lambda: scrape(server.url).get(CANCELLED, 0) == before.get(CANCELLED, 0) + 2, "both cancelled")
    after = scrape(server.url)
    decoded = after["crossedge_serve_completion_tokens_total"] - before["crossedge_serve_completion_tokens_total"]
    assert decoded < LONG  # neither ran to its end
    healthy(server)


# ------------------------------------------------------------------------- load


def test_eight_concurrent_clients_get_exactly_their_own_answers(server):
    prompts = ["the cat sat on the mat", "one two three four", "hello there, how are you", "a b c d e f g"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def ask(i):
        prompt = prompts[i % len(prompts)]
        kwargs = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
        if i % 2:
            stream = client.chat.completions.create(**kwargs, temperature=0, stream=True)
            return prompt, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return prompt, client.chat.completions.create(**kwargs, temperature=0).choices[0].message.content

    alone = {prompt: ask(i)[1] for i, prompt in enumerate(prompts)}
    assert len(set(alone.values())) == len(prompts)  # distinct answers, so a mix-up would show
    before = scrape(server.url)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(24), timeout=120))
    assert len(answers) == 24
    assert all(text == alone[prompt] for prompt, text in answers)
    after = scrape(server.url)
    ok = 'crossedge_serve_requests_total{endpoint="/v1/chat/completions",status="200"}'
    assert after[ok] - before[ok] == 24
    assert not [k for k in after if 'status="5' in k]
    assert after["crossedge_serve_queue_depth"] == 0 and after["crossedge_serve_requests_running"] == 0


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"{not json", "not JSON"),
        (b'{"model": "tiny", "prompt": "x"', "not JSON"),
        (b"", "not JSON"),
        (b"[" * 100_000, "nests JSON too deeply"),
        (b"1" * 10_000, "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_malformed_json_is_a_400_and_the_server_stays_up(server, raw, said):
    response = httpx.post(server.url + "/v1/completions", content=raw, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert said in error["message"] and "\n" not in error["message"] and error["type"] == "invalid_request_error"
    healthy(server)


def test_invalid_utf8_is_a_400_that_says_where(server):
    raw = b'{"model": "tiny", "prompt": "caf\xe9 au lait"}'
    response = httpx.post(server.url + "/v1/completions", content=raw, timeout=30)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    where = raw.index(0xE9)
    assert "not valid UTF-8" in message and "0xe9" in message and f"position {where}" in message
    healthy(server)


@pytest.fixture(scope="module")
def strict_server(tiny_folder, server):
    """A server with a small body limit and a short body deadline."""
    running = start_server(tiny_folder, app_options={"max_body_bytes": 4096, "body_timeout": 1.0})
    try:
        yield running
    finally:
        running.stop()


def test_a_body_over_the_limit_is_a_413(strict_server):
    url = strict_server.url + "/v1/chat/completions"
    huge = json.dumps(body(prompt="x" * 64_000)).encode()
    response = httpx.post(url, content=huge, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413
    error = response.json()["error"]
    assert "4096 bytes" in error["message"] and "--max-body-bytes" in error["message"]
    assert error["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for start in range(0, len(huge), 1024):
            yield huge[start : start + 1024]

    response = httpx.post(url, content=chunks(), timeout=30)
    assert response.status_code == 413 and "over 4096 bytes" in response.json()["error"]["message"]
    healthy(strict_server)
    counts = scrape(strict_server.url)
    assert counts['crossedge_serve_requests_total{endpoint="/v1/chat/completions",status="413"}'] == 2


def raw_request(server, payload, declared_length):
    """A socket that has sent the headers of a POST and ``payload``, and reads nothing back."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared_length}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def test_a_client_that_sends_its_body_slowly_gets_a_408_and_others_are_served(strict_server):
    whole = json.dumps(body(max_tokens=4)).encode()
    slow = raw_request(strict_server, whole[:10], len(whole))
    try:
        healthy(strict_server)  # served while the slow body is still missing
        reply = b""
        while b"\r\n\r\n" not in reply:
            got = slow.recv(4096)  # the socket's own timeout bounds this
            assert got, "the server closed the connection without an answer"
            reply += got
        assert reply.startswith(b"HTTP/1.1 408")
        while not reply.endswith(b"}"):
            reply += slow.recv(4096)
        assert "send the whole body at once" in json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    finally:
        slow.close()
    healthy(strict_server)


def test_a_client_that_never_reads_its_stream_does_not_hold_up_others(server):
    before = scrape(server.url)
    whole = json.dumps(body(max_tokens=LONG, stream=True)).encode()
    deaf = raw_request(server, whole, len(whole))
    try:
        healthy(server)  # waits its turn behind the deaf client's answer, then gets its own
        after = scrape(server.url)
        finished = sum(after.get(k, 0) - before.get(k, 0) for k in after if k.startswith(GENERATIONS))
        assert finished >= 2  # both generations ended; the deaf one did not block the worker
    finally:
        deaf.close()
