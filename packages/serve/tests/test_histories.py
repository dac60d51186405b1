"""One history drafter per user: one user's text never shapes another user's drafts."""

import httpx
import pytest
from conftest import scrape, start_server

from crossedge.specdec.drafters import HistoryDrafter

PROMPT = "the cat sat on the mat, the cat sat on the"
OTHER = "one two three four five six"
# `history` alone (no `copy`) and a constant draft length: every accepted draft comes from a history.
OPTIONS = {"drafter": "history", "policy": "constant:k=4"}


def ask(server, prompt, *, user=None, key=None):
    """(text, completion tokens, prompt tokens, target forwards) of one greedy chat request."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 0}
    if user is not None:
        body["user"] = user
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    before = scrape(server.url)["crossedge_serve_target_forwards_total"]
    response = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    forwards = scrape(server.url)["crossedge_serve_target_forwards_total"] - before
    answer = response.json()
    usage = answer["usage"]
    return answer["choices"][0]["message"]["content"], usage["completion_tokens"], usage["prompt_tokens"], forwards


@pytest.fixture(scope="module", params=[1, 2], ids=["one-at-a-time", "batched"])
def history_server(tiny_folder, server, request):  # `server` sets up the cache folder
    running = start_server(tiny_folder, max_batch=request.param, **OPTIONS)
    try:
        yield running
    finally:
        running.stop()


def history_tokens(server, user):
    (drafter,) = server.app.state.served.histories.drafters(user).values()
    assert isinstance(drafter, HistoryDrafter)
    return list(drafter.index.tokens)


def test_a_users_repeated_text_helps_that_user_only(history_server):
    text, tokens, _, forwards = ask(history_server, PROMPT, user="alice")
    assert tokens > 4 and forwards == tokens  # nothing to draft from: one forward per token
    again, tokens_again, _, forwards_again = ask(history_server, PROMPT, user="alice")
    assert again == text and forwards_again < tokens_again  # her own history drafted and was accepted
    # Bob asks the very same thing: Alice's history must not draft for him.
    bob, bob_tokens, _, bob_forwards = ask(history_server, PROMPT, user="bob")
    assert bob == text and bob_forwards == bob_tokens
    # Requests naming no user share one anonymous pool, apart from both.
    _, anon_tokens, _, anon_forwards = ask(history_server, PROMPT)
    assert anon_forwards == anon_tokens


def test_a_users_history_holds_only_that_users_text(history_server):
    _, completion, prompt, _ = ask(history_server, OTHER, user="carol")
    carol = history_tokens(history_server, "user:carol")
    assert HistoryDrafter.SEPARATOR not in carol and len(carol) == prompt + completion  # her one run, nothing else
    ask(history_server, OTHER, user="carol")
    assert history_tokens(history_server, "user:carol").count(HistoryDrafter.SEPARATOR) == 1
    assert history_server.app.state.served.histories.drafters("user:dave") == {}


def test_with_api_keys_each_key_has_its_own_history(tiny_folder, server):
    running = start_server(tiny_folder, api_key=["key-a", "key-b"], **OPTIONS)
    try:
        _, tokens, _, forwards = ask(running, PROMPT, key="key-a")
        assert forwards == tokens
        _, tokens, _, forwards = ask(running, PROMPT, key="key-a")
        assert forwards < tokens
        _, tokens, _, forwards = ask(running, PROMPT, key="key-b", user="alice")
        assert forwards == tokens
        users = running.app.state.served.histories.users()
        assert len(users) == 2 and all(u.startswith("key:") for u in users)
        assert users[1].endswith("/user:alice") and not any("key-a" in u or "key-b" in u for u in users)
    finally:
        running.stop()


def test_histories_are_capped_by_users_and_tokens(tiny_folder, server):
    running = start_server(tiny_folder, history_users=2, history_tokens=40, **OPTIONS)
    try:
        histories = running.app.state.served.histories
        for user in ("u1", "u2", "u3"):
            ask(running, PROMPT, user=user)
        assert histories.users() == ["user:u2", "user:u3"] and histories.evicted == 1
        ask(running, OTHER, user="u2")  # served last: u3 is now the least recent
        ask(running, OTHER, user="u4")
        assert histories.users() == ["user:u2", "user:u4"]
        for drafter in histories.drafters("user:u2").values():
            assert drafter.max_tokens == 40 and len(drafter.index) <= 40
    finally:
        running.stop()
